"""Text as the detectors read it: the ways real tickets write the same characters made one, with a map back to the
original (a placeholder replaces the whole original span, and the user still sees what they wrote).

What Word, Outlook, GLPI and copy-paste put in identifiers (#45), one character for one:
- every space (the non-breaking and narrow non-breaking ones between digit groups, figure and thin spaces, tabs)
  and every line break: a space (the detectors take up to three spaces between groups: two spaces, a value split
  over two lines, a CR LF);
- every dash (non-breaking hyphen, en and em dash, minus): `-`;
- full-width and other compatibility forms of ASCII characters (`０６`, `＠`): their ASCII (NFKC); digits of other
  scripts: their value.
And, changing the length (rare: only then is the text edited and the map given breakpoints):
- zero-width characters and soft hyphens (invisible, inside a value): gone;
- `(at)`, `[at]`, `{at}` and spaces around `@` in an address: `@`; `(dot)`, `[dot]`: `.`.
Labels glued to a value (`NIR185…`, `Tél.06…`) are the detectors' (detect.py's lookbehinds).

The one-for-one part is str.translate (its table filled as characters are met): at C speed, it costs a few µs per
KB; a regular expression scanning every text for runs of spaces cost 100-200 µs per KB (measured, 2026-12-08).
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass

_DASHES = frozenset("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d")
_INVISIBLE = frozenset("\u00ad\u180e\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff")
_REMOVED = "\x00"  # what the translation makes of an invisible character, for the edits to remove
_BRACKETED = re.compile(r"[(\[{] *(?i:at|arobase|dot|point) *[)\]}]")
_EDITS = re.compile(
    r"(?P<at> *[(\[{] *(?:at|arobase) *[)\]}] *| +@ *| *@ +)"
    r"|(?P<dot> *[(\[{] *(?:dot|point) *[)\]}] *)"
    rf"|(?P<invisible>{_REMOVED}+)",
    re.IGNORECASE,
)
_WRITTEN = {"at": "@", "dot": ".", "invisible": ""}


class _OneToOne(dict[int, int]):
    """str.translate's table: each character's one-character form, computed when first met."""

    def __missing__(self, code: int) -> int:
        self[code] = ord(_one_for_one(chr(code)))
        return self[code]


def _one_for_one(character: str) -> str:
    if character in _INVISIBLE:
        return _REMOVED
    if character.isspace():
        return " "
    if character in _DASHES:
        return "-"
    if character.isdigit() and unicodedata.digit(character, None) is not None:
        return str(unicodedata.digit(character))
    compatible = unicodedata.normalize("NFKC", character)
    return compatible if len(compatible) == 1 and compatible.isascii() and compatible.isprintable() else character


_TABLE = _OneToOne({code: code for code in range(32, 127)})


@dataclass(frozen=True, slots=True)
class Normalised:
    text: str
    # Breakpoints of the map back: from text position at[i] on, original = to[i] + (position - at[i]).
    at: list[int]
    to: list[int]

    def original(self, position: int) -> int:
        i = bisect.bisect_right(self.at, position) - 1
        return self.to[i] + (position - self.at[i])

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        return self.original(start), self.original(end)


def normalise(text: str) -> Normalised:
    translated = text.translate(_TABLE)
    at, to = [0], [0]
    spaced_at = "@" in translated and (" @" in translated or "@ " in translated)
    if _REMOVED not in translated and not spaced_at and not _BRACKETED.search(translated):
        return Normalised(translated, at, to)
    pieces: list[str] = []
    last = shift = 0
    for match in _EDITS.finditer(translated):
        start, end = match.span()
        written = _WRITTEN[match.lastgroup or ""]
        pieces += [translated[last:start], written]
        here = start + shift
        at += [here, here + len(written)] if written else [here]
        to += [start, end] if written else [end]
        shift += len(written) - (end - start)
        last = end
    pieces.append(translated[last:])
    return Normalised("".join(pieces), at, to)
