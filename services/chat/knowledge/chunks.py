"""Documents cut into overlapping chunks (semantic-text-splitter: at headings, paragraphs, sentences, words)."""

from __future__ import annotations

import functools
from typing import Any


@functools.lru_cache(maxsize=8)
def _splitter(markdown: bool, chars: int, overlap: int) -> Any:
    # Imported here: chunking runs in the extraction worker processes, not in the chat process itself.
    from semantic_text_splitter import MarkdownSplitter, TextSplitter

    kind = MarkdownSplitter if markdown else TextSplitter
    return kind(capacity=chars, overlap=min(overlap, chars - 1), trim=True)


def split(text: str, *, chars: int, overlap: int, markdown: bool = False) -> list[str]:
    """At most `chars` characters each, neighbours sharing up to `overlap`; never an empty chunk."""
    return [chunk for chunk in _splitter(markdown, chars, overlap).chunks(text) if chunk.strip()]
