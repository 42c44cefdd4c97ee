"""Real files built in the tests: PDFs with a text layer (written by hand, a few objects), PDFs without one,
encrypted or broken PDFs, and text in the encodings users' tools produce."""

from __future__ import annotations

import base64
import io


def _escape(line: str) -> str:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def text_pdf(pages: list[str], *, repeat_ops: int = 1) -> bytes:
    """A PDF whose pages show the given text (Helvetica, WinAnsi), one object per page and per content stream.

    `repeat_ops` repeats each page's drawing operations: a way to make extraction slow on purpose.
    """
    count = len(pages)
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{' '.join(f'{4 + 2 * i} 0 R' for i in range(count))}] /Count {count} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    }
    for index, text in enumerate(pages):
        shows = " ".join(f"({_escape(line)}) Tj T*" for line in text.split("\n"))
        stream = (f"BT /F1 11 Tf 50 750 Td 14 TL {shows} ET\n" * repeat_ops).encode("cp1252")
        objects[4 + 2 * index] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >>"
            f" /Contents {5 + 2 * index} 0 R >>"
        ).encode()
        objects[5 + 2 * index] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    return _assemble(objects)


def flate_pdf(content: bytes, *, page_count: int = 1) -> bytes:
    """One page whose content stream is `content`, deflated: 300 MB of spaces weigh 290 KB (a deflate bomb).
    `page_count` is what the page tree claims, whatever it holds."""
    import zlib

    stream = zlib.compress(content, 9)
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [4 0 R] /Count %d >>" % page_count,
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        4: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >>"
        b" /Contents 5 0 R >>",
        5: b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
    }
    return _assemble(objects)


def slow_pdf(path_ops: int = 200_000) -> bytes:
    """One page: a word, then `path_ops` line drawings that pypdf parses one by one (about 2 s per 100,000 here)
    and that add no text: slow to read, a few characters to return."""
    content = b"BT /F1 11 Tf 50 750 Td (Lent) Tj ET\n" + b"0 0 m 10 10 l S\n" * path_ops
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        4: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >>"
        b" /Contents 5 0 R >>",
        5: b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    }
    return _assemble(objects)


def _assemble(objects: dict[int, bytes]) -> bytes:
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = out.tell()
        out.write(b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n")
    xref = out.tell()
    total = len(objects) + 1
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % total)
    for number in range(1, total):
        out.write(b"%010d 00000 n \n" % offsets[number])
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (total, xref))
    return out.getvalue()


def scanned_pdf(pages: int = 2) -> bytes:
    """Pages without a text layer, as a scanner makes them (here: blank pages)."""
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=612, height=792)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def encrypted_pdf(text: str = "Secret") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(text_pdf([text]))))
    writer.encrypt("mot-de-passe", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{b64(data)}"


# A PNG header and an ELF header: enough for anyone (and for content sniffing) to know what they are.
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde" + bytes(64)
ELF = b"\x7fELF\x02\x01\x01\x00" + bytes(8) + b"\x02\x00\x3e\x00\x01\x00\x00\x00" + bytes(200)
