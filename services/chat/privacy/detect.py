"""Personal identifiers in French text: where each is, what kind, and a key that says when two spellings are one
value ("06 12 34 56 78" and "+33612345678" are one phone number).

The checksummed kinds are flagged only when their checksum holds (a NIR's key, an IBAN's mod 97, a card's Luhn
digit): a ticket number, a serial or a wrong key is left alone. Phone numbers and e-mail addresses have no
checksum: their shape decides. Names are an option (PERSONAL_DATA_NAMES): only a name introduced by a civility or
a care word ("Mme Durand", "résident Jean MARTIN", "chambre 12 : Dupont") is seen, and only the name is replaced.
IP addresses, host names and ticket numbers are the technicians' work and never flagged.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from services.chat.privacy.normalise import normalise

NIR, IBAN, CARD, PHONE, EMAIL, NAME = "NIR", "IBAN", "CARTE", "TEL", "EMAIL", "NOM"
NOT_AN_IDENTIFIER = ""  # a span no other kind may take (an IBAN with a wrong key is not a card with words around)
CHECKSUMMED = (NIR, IBAN, CARD)
KINDS = (NIR, IBAN, CARD, PHONE, EMAIL, NAME)


@dataclass(frozen=True, slots=True)
class Found:
    kind: str
    start: int
    end: int
    key: str  # the value normalised: one key, one placeholder


_DIGIT = re.compile(r"\d")
# Between groups: up to three spaces (normalise.py made every space, tab and line break one: two spaces, a value
# split over two lines, CR LF), a dot or a dash.
_SEP = r"(?: {1,3}|[.-])?"
_SEPARATORS = re.compile(r"[ .-]")


def _not_after(preceding: str, consumed: str, labels: tuple[str, ...]) -> str:
    """Lookbehinds, checked once the value's first characters (`consumed`) are read: not after `preceding`, unless
    after one of `labels` glued to the value (`NIR185…`, `Tél.06…`), whatever their case. Reading a character
    first lets the regular expression engine skip ahead to where a value can start; a pattern opening with a
    lookbehind is tried at every position (7x slower, measured)."""
    glued = "".join(f"|(?<=(?i:{re.escape(label)}){consumed})" for label in labels)
    return f"(?:(?<!{preceding}{consumed}){glued})"


_NIR_LABELS = ("nir", "nir:", "nir.", "ins", "ins:", "nss", "n°ss", "sécu", "secu", "sécu:", "secu:")
_NIR_START = "([1278])" + _not_after(r"[\w.]", ".", _NIR_LABELS)
# Sex (1, 2; 7, 8 for provisional numbers), year, month, then département + commune (2A/2B in Corsica;
# three + two digits overseas), order number, key.
_NIR = re.compile(
    _NIR_START + rf"{_SEP}(\d\d){_SEP}(\d\d){_SEP}((?:\d\d|2[ABab]){_SEP}\d{{3}}|\d{{3}}{_SEP}\d\d)"
    rf"{_SEP}(\d{{3}}){_SEP}(\d\d)(?![\w])"
)
_IBAN_START = "[A-Za-z]" + _not_after(r"[\w]", ".", ("iban", "iban:", "rib:"))
_IBAN = re.compile(_IBAN_START + rf"[A-Za-z]\d\d(?:{_SEP}[A-Za-z0-9]{{4}}){{2,7}}(?:{_SEP}[A-Za-z0-9]{{1,3}})?(?![\w])")
_CARD = re.compile(
    r"(?<![\w.,-])(?:\d{4}( {1,3}|[.-]|)\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?|\d{4}( {1,3}|[.-]|)\d{6}\2\d{4,5}"
    r"|\d{13,15})"
    r"(?![\w]|[.,-]\d)"
)
_PHONE_LABELS = ("tel", "tél", "tel.", "tél.", "tel:", "tél:", "mob", "mob.", "mob:", "gsm", "gsm:", "fax", "port")
_PHONE_NOT_AFTER = r"[\w+./-]"
_PHONE_INTERNATIONAL = (
    r"(?:\+" + _not_after(_PHONE_NOT_AFTER, r"\+", _PHONE_LABELS)
    + "|00" + _not_after(_PHONE_NOT_AFTER, "00", _PHONE_LABELS)
    + r") {0,3}33(?: {1,3}|[.-])?(?:\(0\)(?: {1,3}|[.-])?)?"
)  # fmt: skip
_PHONE = re.compile(
    "(?:" + _PHONE_INTERNATIONAL + "|0" + _not_after(_PHONE_NOT_AFTER, "0", _PHONE_LABELS) + ")"
    r"([1-9])((?:(?: {1,3}|[./-])?\d\d){4})(?![\w]|[./-]\d)"
)
_EMAIL = re.compile(
    r"(?<![\w.%+-])[^\W_][\w.%+-]*@[^\W_](?:[\w-]*[^\W_])?"
    r"(?:\.[^\W_](?:[\w-]*[^\W_])?)*\.([^\W\d_]{2,24}|xn--[\w-]{1,59})(?![\w-])"
)
# Internal domains name hosts (root@srv-glpi.widip.local is an SSH target, not a person's address).
_HOST_ONLY_DOMAINS = frozenset({"local", "lan", "internal", "intranet", "localdomain", "localhost", "corp", "home"})

_UPPER, _LOWER = "A-ZÀÂÄÇÉÈÊËÎÏÔÖÙÛÜŸ", "a-zàâäçéèêëîïôöùûüÿœæ"
_NAME_WORD = rf"(?:[{_UPPER}][{_LOWER}]+(?:[-'][{_UPPER}][{_LOWER}]+)?|[{_UPPER}]{{2,}}(?:[-'][{_UPPER}]{{2,}})?)"
_CIVILITY = r"(?:M\.|MM\.|Mme|Mmes|Mlle|Monsieur|Madame|Mademoiselle|Dr\.?|Docteur|Pr\.?|Professeur)"
_CARE = r"(?:[Pp]atiente?|[Rr][ée]sidente?|[Cc]hambre\s*(?:n°|no\.?|n)?\s*\d{1,4}[A-Za-z]?\s*[:,-]?)"
_PARTICLE = r"(?:[Ll]e|[Ll]a|LE|LA|[Dd]e|DE|[Dd]u|DU|[Dd]es|[Vv]an|[Vv]on|[Dd]i|[Dd]a)"
_NAME_PART = rf"(?:{_PARTICLE} )?{_NAME_WORD}"
_NAME = re.compile(rf"(?<![\w])(?:({_CIVILITY})|{_CARE}) +({_NAME_PART}(?: {_NAME_PART})?)(?![\w])")
# After a care word a capital is often a sentence's next word ("le patient Le lendemain" is rare, "résident A"…).
_NOT_NAMES = frozenset(
    "le la les l un une des du de d au aux ce cet cette il elle ils elles on son sa ses leur qui que dont en et ou"
    " mais donc car est a n ne pas".split()
)

_TITLES = frozenset(
    "directrice directeur maire presidente president responsable cadre infirmiere infirmier medecin adjointe adjoint"
    " secretaire comptable gouvernante".split()
)


def find_identifiers(text: str, *, names: bool = False) -> list[Found]:
    """Every identifier in `text`, in order, never two on one character (the checksummed kinds first), read in its
    normalised form (normalise.py: the spaces, dashes, widths and invisible characters of real tickets) and
    located in `text` itself: each span is the whole original spelling."""
    seen = normalise(text)
    read = seen.text
    finders = [*((_nirs, _ibans, _cards, _phones) if _DIGIT.search(read) else ()), *((_emails,) if "@" in read else ())]
    if names:
        finders.append(_names)
    taken: list[Found] = []  # sorted by start, never overlapping
    for finder in finders:
        for found in finder(read):
            at = bisect.bisect_left(taken, found.start, key=lambda item: item.start)
            if (at and taken[at - 1].end > found.start) or (at < len(taken) and taken[at].start < found.end):
                continue
            taken.insert(at, found)
    return [
        Found(found.kind, *seen.original_span(found.start, found.end), found.key)
        for found in taken
        if found.kind != NOT_AN_IDENTIFIER
    ]


def replace_found(text: str, found: list[Found], replacement: Callable[[Found], str]) -> str:
    """`text` with each of `found` (in order, as find_identifiers gives them) replaced."""
    parts, last = [], 0
    for item in found:
        parts += [text[last : item.start], replacement(item)]
        last = item.end
    parts.append(text[last:])
    return "".join(parts)


def _nirs(text: str) -> Iterator[Found]:
    for match in _NIR.finditer(text):
        sex, year, month, place, order, key = match.groups()
        place = _SEPARATORS.sub("", place).upper()
        if not (1 <= int(month) <= 12 or 20 <= int(month) <= 42 or 50 <= int(month) <= 99):
            continue
        digits = sex + year + month + place + order
        number = int(digits.replace("2A", "19").replace("2B", "18"))
        if 97 - number % 97 == int(key):
            yield Found(NIR, match.start(), match.end(), digits + key)


# Lengths by country (ISO 13616 registry) for the countries WIDIP's sites deal with; others: the mod 97 alone.
_IBAN_LENGTHS = {
    "FR": 27, "MC": 27, "DE": 22, "BE": 16, "LU": 20, "CH": 21, "IT": 27, "ES": 24, "PT": 25, "NL": 18,
    "GB": 22, "IE": 22, "AT": 20, "PL": 28, "DK": 18, "SE": 24, "FI": 18, "GR": 27, "LI": 21, "AD": 24,
}  # fmt: skip


def _ibans(text: str) -> Iterator[Found]:
    for match in _IBAN.finditer(text):
        candidate = match.group()
        compact = _SEPARATORS.sub("", candidate).upper()
        length = _IBAN_LENGTHS.get(compact[:2])
        if length is not None and len(compact) > length:  # a word after the IBAN taken as its last group
            end = _position_after(candidate, length)
            if _SEPARATORS.match(candidate[end - 1 : end]) or (
                end < len(candidate) and not _SEPARATORS.match(candidate[end])
            ):
                continue
            candidate, compact = candidate[:end], compact[:length]
        if (length is None or len(compact) == length) and 15 <= len(compact) <= 34 and _mod97(compact) == 1:
            yield Found(IBAN, match.start(), match.start() + len(candidate), compact)
        elif length is not None and len(compact) == length and compact[2:4].isdigit():
            # An IBAN of this country's length with a wrong key: the technician's (wrong) IBAN, kept whole; its
            # middle digits are not a card.
            yield Found(NOT_AN_IDENTIFIER, match.start(), match.start() + len(candidate), compact)


def _position_after(candidate: str, characters: int) -> int:
    """Where the first `characters` non-space characters of `candidate` end."""
    seen = 0
    for position, character in enumerate(candidate):
        seen += not _SEPARATORS.match(character)
        if seen == characters:
            return position + 1
    return len(candidate)


def _mod97(compact: str) -> int:
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97


def _cards(text: str) -> Iterator[Found]:
    for match in _CARD.finditer(text):
        digits = _SEPARATORS.sub("", match.group())
        if _card_network(digits) and _luhn(digits):
            yield Found(CARD, match.start(), match.end(), digits)


def _card_network(digits: str) -> bool:
    """The issuer prefixes of the networks in use in France (Visa, Mastercard, CB co-badged, Amex, Maestro…)."""
    length, first = len(digits), digits[0]
    if first == "4":
        return length in (13, 16, 19)
    if first == "5":
        return 16 <= length <= 19
    if first == "2":
        return length == 16 and 2221 <= int(digits[:4]) <= 2720
    if first == "3":  # American Express and JCB; not Diners' 14 digits (a compact SIRET has as many)
        return (length == 15 and digits[:2] in ("34", "37")) or (length == 16 and digits[:2] == "35")
    return first == "6" and 16 <= length <= 19


def _luhn(digits: str) -> bool:
    total = 0
    for position, character in enumerate(reversed(digits)):
        digit = int(character)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _phones(text: str) -> Iterator[Found]:
    for match in _PHONE.finditer(text):
        first, rest = match.groups()
        yield Found(PHONE, match.start(), match.end(), "0" + first + re.sub(r"[ ./-]", "", rest))


def _emails(text: str) -> Iterator[Found]:
    for match in _EMAIL.finditer(text):
        if match.group(1).lower() not in _HOST_ONLY_DOMAINS:
            yield Found(EMAIL, match.start(), match.end(), match.group().lower())


def _names(text: str) -> Iterator[Found]:
    for match in _NAME.finditer(text):
        civility, name = match.groups()
        if _folded(name.split(" ")[-1]) in _TITLES:  # "Mme La Directrice"
            continue
        if civility is None and (name.lower() in _NOT_NAMES or (name.isupper() and len(name) <= 3)):  # "chambre 3 : TV"
            continue
        yield Found(NAME, match.start(2), match.end(2), _folded(name))


def _folded(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))
