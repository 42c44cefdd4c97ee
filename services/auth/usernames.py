"""Rules for new usernames, and showing any username safely on a terminal.

A username is shown to admins (the API, the CLI, logs): it must not be able to impersonate another one or to
drive a terminal. New usernames are NFKC-normalised, 2 to 64 characters, made of Latin letters (accents
included), digits and `. _ - @`, starting with a letter or a digit, and unique whatever their case. That refuses
spaces, control characters (CR, LF, ANSI escapes) and letters of other scripts that look Latin (Cyrillic `а`,
Greek `ο`): the confusables that matter here. Existing usernames are not changed.
"""

from __future__ import annotations

import unicodedata

MIN_CHARS, MAX_CHARS = 2, 64
PUNCTUATION = frozenset("._-@")
RULES = (
    f"{MIN_CHARS} à {MAX_CHARS} caractères : lettres latines (accents permis), chiffres et . _ - @,"
    " en commençant par une lettre ou un chiffre"
)


class InvalidUsername(ValueError):
    pass


def _allowed(ch: str) -> bool:
    if ch in PUNCTUATION or (ch.isascii() and ch.isalnum()):
        return True
    return ch.isalpha() and unicodedata.name(ch, "").startswith("LATIN ")


def normalize_username(raw: str) -> str:
    """The username to store, or InvalidUsername (French message stating the rules)."""
    username = unicodedata.normalize("NFKC", raw)
    if not MIN_CHARS <= len(username) <= MAX_CHARS or not all(_allowed(ch) for ch in username):
        raise InvalidUsername(f"Nom d'utilisateur invalide : {RULES}")
    if username[0] in PUNCTUATION:
        raise InvalidUsername(f"Nom d'utilisateur invalide : {RULES}")
    return username


def printable(text: str) -> str:
    """For a terminal: every control or invisible character spelt as an escape, never sent raw."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
