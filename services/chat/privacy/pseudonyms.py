"""Identifiers replaced by placeholders before the model, and put back in its reply.

One `Pseudonyms` per turn: the same value (in any spelling) gets the same placeholder (`[NIR_1]`, `[EMAIL_2]`)
everywhere in what the model is sent. Placeholders are numbered in a fixed order (the memory oldest first, then
the message, the attachments, the passages), and the memory holds what the user wrote and saw: a value keeps its
placeholder turn after turn for as long as the model can see it, and no table keeps a second copy of the values.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Protocol

from services.chat.privacy.detect import KINDS, Found, find_identifiers, replace_found

_PLACEHOLDER = re.compile(r"\[(" + "|".join(KINDS) + r")_(\d{1,4})\]")
# The longest a placeholder can be ("[EMAIL_9999]"): a streamed reply holds back at most this much.
_LONGEST = max(len(kind) for kind in KINDS) + 7
_PARTIAL = re.compile(r"\[(?:[A-Z]{0,5}(?:_\d{0,4})?)?\Z")


class Pseudonyms:
    def __init__(self, *, names: bool = False) -> None:
        self.names = names
        self._placeholders: dict[tuple[str, str], str] = {}  # (kind, key) -> placeholder
        self._originals: dict[str, str] = {}  # placeholder -> the value as first written
        self._per_kind: Counter[str] = Counter()
        self._typed: set[str] = set()  # placeholders written in the texts themselves: never given to a value
        self.masked: Counter[str] = Counter()  # occurrences replaced, per kind (logs and metrics: never values)

    def keep_typed(self, texts: list[str]) -> None:
        """Placeholders someone typed (`[NIR_1]` in a message, a pasted reply, a document) stay as typed: no value
        of this turn gets their number, so the reply's `[NIR_1]` is never filled with another text's value."""
        for text in texts:
            if "[" in text:
                self._typed.update(match.group() for match in _PLACEHOLDER.finditer(text))

    def mask(self, text: str) -> str:
        found = find_identifiers(text, names=self.names)
        return replace_found(text, found, lambda item: self._placeholder(item, text)) if found else text

    def _placeholder(self, item: Found, text: str) -> str:
        self.masked[item.kind] += 1
        placeholder = self._placeholders.get((item.kind, item.key))
        if placeholder is None:
            self._per_kind[item.kind] += 1
            placeholder = f"[{item.kind}_{self._per_kind[item.kind]}]"
            while placeholder in self._typed:
                self._per_kind[item.kind] += 1
                placeholder = f"[{item.kind}_{self._per_kind[item.kind]}]"
            self._placeholders[item.kind, item.key] = placeholder
            self._originals[placeholder] = text[item.start : item.end]
        return placeholder

    def restore(self, text: str) -> str:
        if not self._originals:
            return text
        return _PLACEHOLDER.sub(lambda match: self._originals.get(match.group(), match.group()), text)

    def restoring(self, deltas: Deltas) -> Deltas:
        """`deltas` with placeholders put back, a placeholder split across two deltas included."""
        return _RestoredDeltas(self, deltas) if self._originals else deltas


class Deltas(Protocol):
    async def next_delta(self) -> str | None: ...


class _RestoredDeltas:
    def __init__(self, pseudonyms: Pseudonyms, deltas: Deltas) -> None:
        self._pseudonyms, self._deltas = pseudonyms, deltas
        self._held = ""  # the end of the text so far when it may be the start of a placeholder

    async def next_delta(self) -> str | None:
        while True:
            delta = await self._deltas.next_delta()
            if delta is None:
                held, self._held = self._held, ""
                return self._pseudonyms.restore(held) if held else None
            text = self._held + delta
            cut = _held_back_from(text)
            self._held = text[cut:]
            if cut:
                return self._pseudonyms.restore(text[:cut])


def _held_back_from(text: str) -> int:
    """Where a placeholder may begin that the next delta could complete (len(text) when none may)."""
    start = text.rfind("[", max(0, len(text) - _LONGEST))
    if start >= 0 and _PARTIAL.match(text, start):
        return start
    return len(text)
