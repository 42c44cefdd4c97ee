"""The text of a document read from disk: pure functions, run in the extraction worker processes.

PDF and text files go through the attachments' extractors (services/chat/extraction.py); DOCX, XLSX and HTML
through well-kept libraries (python-docx, openpyxl, BeautifulSoup). Raises FileProblem like the attachments.
"""

from __future__ import annotations

import io
import re
import zipfile

from services.chat.extraction import FileProblem, decode_text, pdf_text, sniff, unreadable, unsupported

SUFFIXES = frozenset({".pdf", ".txt", ".md", ".csv", ".json", ".log", ".docx", ".xlsx", ".html", ".htm"})
_BLANK_LINES = re.compile(r"\n\s*\n+")


def document_text(data: bytes, suffix: str, *, max_pages: int) -> str:
    """The worker's entry point: the document's text, by its suffix for office formats and HTML."""
    if suffix == ".docx":
        text = docx_text(data)
    elif suffix == ".xlsx":
        text = xlsx_text(data)
    elif suffix in (".html", ".htm"):
        text = html_text(data)
    else:
        kind = sniff(data)
        if kind == "pdf":
            text = pdf_text(data, max_pages=max_pages)[0]
        elif kind == "text":
            text = decode_text(data) or ""
        else:
            raise unsupported()
    if not text.strip():
        raise unreadable("document sans texte")
    return text


def docx_text(data: bytes) -> str:
    """Paragraphs, then each table row as `cell | cell`."""
    import docx

    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise unreadable("DOCX corrompu") from exc
    parts = [paragraph.text for paragraph in document.paragraphs if paragraph.text.strip()]
    for table in document.tables:
        for row in table.rows:
            cells = [cell.text.strip() for cell in row.cells]
            if any(cells):
                parts.append(" | ".join(cells))
    return "\n".join(parts)


def xlsx_text(data: bytes) -> str:
    """Each sheet under its name, each non-empty row as `value | value` (computed values, not formulas)."""
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise unreadable("XLSX corrompu") from exc
    parts: list[str] = []
    try:
        for sheet in workbook.worksheets:
            parts.append(f"## Feuille : {sheet.title}")
            for row in sheet.iter_rows(values_only=True):
                cells = ["" if value is None else str(value) for value in row]
                if any(cell.strip() for cell in cells):
                    parts.append(" | ".join(cells).rstrip(" |"))
    finally:
        workbook.close()
    return "\n".join(parts)


def html_text(data: bytes) -> str:
    """The visible text: scripts, styles and templates dropped (their content is not prose)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "html.parser")
    for element in soup(["script", "style", "noscript", "template", "head"]):
        element.decompose()
    return _BLANK_LINES.sub("\n\n", soup.get_text("\n")).strip()


__all__ = ["SUFFIXES", "FileProblem", "document_text"]
