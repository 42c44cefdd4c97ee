"""What a file's `content` holds, and its text: pure functions, run in the extraction worker processes.

A file arrives as a data URL (`data:<type>;base64,<payload>`), as bare base64 (the newer frontend sends the part
of `readAsDataURL` after the comma), or as text already extracted (the spec's own example). Its bytes are
judged by what they are, not by what the name says: a PDF is a PDF even if named `.txt`, an image or an
executable renamed `.txt` is refused.
"""

from __future__ import annotations

import base64
import binascii
import gc
import io
import os
import re
import threading
import unicodedata
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote_to_bytes

import filetype

from services.chat.errors import FileFault

Kind = Literal["pdf", "text"]

_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<base64>;base64)?,", re.I
)
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
# Text may hold tabs, line breaks and form feeds; other control characters mean binary data.
_TEXT_CONTROLS = {"\t", "\n", "\r", "\f", "\v"}
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# Below this many base64 characters, text read through the cp1252 fallback is more likely a word than a file.
SHORT_BASE64 = 16


class FileProblem(Exception):
    """A file that cannot be used (raised in a worker process, so plain data): its `fault` (a type we do not
    read, too large, unreadable) and `reason`, shown to the user (French)."""

    def __init__(self, fault: FileFault, reason: str) -> None:
        super().__init__(fault, reason)
        self.fault: FileFault = fault
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Extracted:
    kind: Kind
    size: int  # decoded bytes (the characters' UTF-8 size when the content was plain text)
    text: str
    pages: int | None = None


# A worker's young generation is collected every this many allocations, not Python's 700: pypdf keeps most of
# what it allocates while it reads a page, and each collection moved it along for a full one to walk it again.
# A third less CPU on a page of 100,000 drawing operations, the same on a 10 MB text PDF, for about the same
# memory: workers peaked at 95 MB instead of 89 with 1 MB PDFs (100,000: no faster, 120 MB; python -m
# bench.attachments). Garbage cycles are still collected, a little later.
WORKER_GC_YOUNG = 10_000


def prepare_worker(niceness: int) -> None:
    """A worker's initializer: niced (at_least_niced), its garbage collector sized for pypdf."""
    at_least_niced(niceness)
    gc.set_threshold(WORKER_GC_YOUNG, *gc.get_threshold()[1:])


def at_least_niced(niceness: int) -> None:
    """The calling thread (a worker's only one) at `niceness` or nicer: a worker born niced is not niced twice."""
    thread = threading.get_native_id()
    if os.getpriority(os.PRIO_PROCESS, thread) < niceness:
        os.setpriority(os.PRIO_PROCESS, thread, niceness)


def unsupported() -> FileProblem:
    return FileProblem("type", "type de fichier non pris en charge")


def unreadable(why: str) -> FileProblem:
    return FileProblem("unreadable", why)


def decode_text(data: bytes) -> str | None:
    """UTF-8 (with or without BOM), UTF-16 with BOM, else cp1252 (Excel's CSV on Windows); None if not text."""
    if data.startswith(_UTF16_BOMS):
        candidates = ["utf-16"]
    elif data.startswith(b"\xef\xbb\xbf"):
        candidates = ["utf-8-sig"]
    else:
        candidates = ["utf-8", "cp1252"]
    for encoding in candidates:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        return text if looks_like_text(text) else None
    return None


def looks_like_text(text: str) -> bool:
    controls = sum(1 for ch in text if ch not in _TEXT_CONTROLS and unicodedata.category(ch) == "Cc")
    return controls == 0 or (controls * 200 < len(text) and "\x00" not in text)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def sniff(data: bytes) -> Kind | None:
    """What the bytes are: a PDF, text, or None (something else: an image, an archive, an executable, noise)."""
    if data.startswith(b"%PDF-"):
        return "pdf"
    # Text first: magic numbers are a few printable letters ("BM", "MZ", "ID3 ", "GIF8", "OggS") that a CSV
    # or a log may start with; a real image or program holds NULs and control bytes, which text does not.
    return "text" if decode_text(data) is not None else None


def file_bytes(content: str) -> tuple[bytes, Kind] | None:
    """The file's bytes and kind when `content` encodes them; None when `content` is the text itself."""
    match = _DATA_URL.match(content)
    if match:
        payload = content[match.end() :]
        try:
            data = base64.b64decode(payload, validate=True) if match["base64"] else unquote_to_bytes(payload)
        except (binascii.Error, ValueError):
            raise unreadable("données base64 invalides") from None
        kind = sniff(data)
        if kind is None:
            raise unsupported()
        return data, kind
    compact = content.replace("\r", "").replace("\n", "")  # MIME-style line wrapping
    if len(compact) < 4 or len(compact) % 4 or not _BASE64.match(compact):
        return None
    data = base64.b64decode(compact, validate=True)
    kind = sniff(data)
    if kind == "text" and len(compact) < SHORT_BASE64 and not _is_utf8(data):
        # A short word such as "Test" is valid base64 whose bytes happen to read as cp1252: it is a word.
        return None
    if kind is not None:
        return data, kind
    if filetype.guess(data) is not None:  # a picture or a program, base64-encoded: refused, not shown as text
        raise unsupported()
    return None  # base64-looking letters that decode to nothing: it was text all along


def least_size(content: str) -> int:
    """A lower bound of the bytes `content` holds, without decoding it (the chat checks its limits with it before
    reserving anything): a data URL's base64 payload is 3/4 of its length, bare base64 may be read either as
    its bytes or as its letters (file_bytes decides), anything else is its UTF-8 text."""
    match = _DATA_URL.match(content)
    if match:
        payload = content[match.end() :]
        return len(payload) * 3 // 4 - payload[-2:].count("=") if match["base64"] else len(payload) // 3
    if content.isascii():  # base64 or ASCII text: at least the bytes base64 would decode to (no regex pass)
        return len(content) * 3 // 4 - 2
    return len(content.encode("utf-8", "surrogatepass"))  # not base64: its text


def extract(content: str, *, max_bytes: int, max_pages: int) -> Extracted:
    """The text of one file (the worker's entry point). Raises FileProblem."""
    return _extracted(content, file_bytes(content), max_bytes=max_bytes, max_pages=max_pages)


def extract_unless_pdf(content: str, *, max_bytes: int) -> Extracted | None:
    """extract() of a file that is no PDF (None for a PDF: that is the workers' job)."""
    decoded = file_bytes(content)
    if decoded is not None and decoded[1] == "pdf":
        return None
    return _extracted(content, decoded, max_bytes=max_bytes, max_pages=0)


def _extracted(content: str, decoded: tuple[bytes, Kind] | None, *, max_bytes: int, max_pages: int) -> Extracted:
    if decoded is None:
        size = len(content.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise FileProblem("size", "fichier trop volumineux")
        return Extracted("text", size, content)
    data, kind = decoded
    if len(data) > max_bytes:
        raise FileProblem("size", "fichier trop volumineux")
    if kind == "pdf":
        text, pages = pdf_text(data, max_pages=max_pages)
        return Extracted("pdf", len(data), text, pages)
    decoded_text = decode_text(data)
    assert decoded_text is not None  # sniff() said text
    return Extracted("text", len(data), decoded_text)


def pdf_text(data: bytes, *, max_pages: int) -> tuple[str, int]:
    """Page by page, each under a `[Page n/N]` marker."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):  # an empty user password opens many "protected" PDFs
            raise unreadable("PDF protégé par un mot de passe")
        count = len(reader.pages)
        if count > max_pages:
            raise unreadable(f"{count} pages, {max_pages} au maximum")
        pages = [page.extract_text() or "" for page in reader.pages]
    except FileProblem:
        raise
    except LimitReachedError:  # pypdf's own bounds (a deflate bomb, a huge page tree): not a PdfReadError
        raise unreadable("PDF trop complexe : une limite de sécurité a été atteinte") from None
    except (FileNotDecryptedError, DependencyError):
        raise unreadable("PDF protégé par un mot de passe") from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError):
        raise unreadable("PDF corrompu") from None
    if not any(text.strip() for text in pages):
        raise unreadable("PDF sans texte (document scanné ?)")
    marked = [f"[Page {number}/{count}]\n{text.strip()}" for number, text in enumerate(pages, start=1)]
    return "\n\n".join(marked), count
