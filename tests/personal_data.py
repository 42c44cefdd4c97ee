"""A labelled French corpus of personal identifiers, generated (seeded): valid values in every usual spelling, the
same shapes with a wrong checksum, and what technicians write that looks like them (IP addresses, host names,
ticket numbers, serials, IMEIs, SIRETs, MAC addresses, amounts, dates), inside tickets in WIBOT's style.

Used by tests/test_privacy.py (thresholds) and bench/privacy.py (precision and recall per kind, overhead).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

NIR, IBAN, CARD, PHONE, EMAIL, NAME = "NIR", "IBAN", "CARTE", "TEL", "EMAIL", "NOM"


@dataclass
class Sample:
    text: str
    labels: list[tuple[str, int, int]] = field(default_factory=list)  # kind, start, end of each identifier


def nir_digits(rng: random.Random) -> tuple[str, str]:
    """(13 characters, 2-digit key) of a NIR; Corsica and overseas included."""
    sex = rng.choice("12121278")
    year, month = f"{rng.randrange(100):02d}", f"{rng.choice([*range(1, 13), 20, 30, 50, 99]):02d}"
    place = rng.choice(
        [f"{rng.randrange(1, 96):02d}{rng.randrange(1, 1000):03d}"] * 4
        + [f"2{rng.choice('AB')}{rng.randrange(1, 400):03d}", f"97{rng.randrange(1, 7)}{rng.randrange(1, 100):02d}"]
    )
    if place.startswith("20"):
        place = "21" + place[2:]
    body = sex + year + month + place + f"{rng.randrange(1, 1000):03d}"
    key = 97 - int(body.replace("2A", "19").replace("2B", "18")) % 97
    return body, f"{key:02d}"


def nir_spelling(body: str, key: str, rng: random.Random) -> str:
    groups = [body[0], body[1:3], body[3:5], body[5:7], body[7:10], body[10:13], key]
    if body[5:7] == "97":  # overseas: three-digit département, two-digit commune
        groups[3:5] = [body[5:8], body[8:10]]
    separator = rng.choice(["", " ", " ", "."])
    return separator.join(groups)


def iban(rng: random.Random, country: str = "FR") -> str:
    length = {"FR": 27, "DE": 22, "BE": 16, "ES": 24, "IT": 27}[country]
    if country in ("FR", "IT"):
        bban = "".join(rng.choice("0123456789") for _ in range(length - 4 - 13))
        bban += (
            "".join(rng.choice("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(11)) + f"{rng.randrange(100):02d}"
        )
    else:
        bban = "".join(rng.choice("0123456789") for _ in range(length - 4))
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    return country + f"{98 - int(digits) % 97:02d}" + bban


def grouped(compact: str, sizes: list[int] | None = None, separator: str = " ") -> str:
    parts, at = [], 0
    for size in sizes or [4] * ((len(compact) + 3) // 4):
        parts.append(compact[at : at + size])
        at += size
    return separator.join(part for part in parts if part)


def luhn_completed(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    for check in "0123456789":
        if luhn_ok(body + check):
            return body + check
    raise AssertionError("unreachable")


def luhn_ok(digits: str) -> bool:
    total = 0
    for position, character in enumerate(reversed(digits)):
        digit = int(character) * (2 if position % 2 else 1)
        total += digit - 9 if digit > 9 else digit
    return total % 10 == 0


def card(rng: random.Random) -> str:
    network = rng.choice(["visa", "visa", "mastercard", "mastercard", "amex"])
    if network == "amex":
        number = luhn_completed(rng.choice(["34", "37"]), 15, rng)
        return grouped(number, [4, 6, 5], rng.choice([" ", "", "-"]))
    number = luhn_completed("4" if network == "visa" else f"5{rng.randrange(1, 6)}", 16, rng)
    return grouped(number, separator=rng.choice([" ", " ", "", "-"]))


def phone(rng: random.Random) -> str:
    first = rng.choice("1234567896")
    pairs = [f"{rng.randrange(100):02d}" for _ in range(4)]
    spelling = rng.randrange(11)
    if spelling < 6:
        separator = [" ", ".", "-", "", " ", "/"][spelling]
        return separator.join([f"0{first}", *pairs])
    national = " ".join([first, *pairs])
    return [
        f"+33 {national}", "+33" + first + "".join(pairs), f"+33 (0){national}", f"+33 (0) {national}",
        f"0033 {national}",
    ][spelling - 6]  # fmt: skip


FIRST_NAMES = ["Jean", "Marie", "Pierre", "Françoise", "Michel", "Monique", "André", "Hélène", "Louis", "Jeanne"]
LAST_NAMES = ["Martin", "Bernard", "Dubois", "Lefèvre", "Moreau", "Girard", "Le Gall", "Petit", "Roux", "Faure"]
SITES = ["EHPAD Les Tilleuls", "Clinique Saint-Roch", "Résidence du Parc", "EHPAD La Roseraie", "Foyer Bellevue"]


def email(rng: random.Random) -> str:
    first = rng.choice(["jean", "marie", "p.girard", "f.lefevre", "accueil", "direction"])
    domain = rng.choice(["ehpad-tilleuls.fr", "gmail.com", "orange.fr", "clinique-saint-roch.com", "widip.fr"])
    address = f"{first}{rng.choice(['', '.martin', '_dubois', '42'])}@{domain}"
    return address.upper() if rng.random() < 0.1 else address


def person(rng: random.Random) -> str:
    last = rng.choice(LAST_NAMES)
    if rng.random() < 0.3:
        last = last.upper()
    return rng.choice([last, f"{rng.choice(FIRST_NAMES)} {last}"])


# What technicians write that looks like an identifier: never flagged.
LOOKALIKES: list[Callable[[random.Random], str]] = [
    lambda rng: f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
    lambda rng: f"192.168.{rng.randrange(256)}.{rng.randrange(1, 255)}",
    lambda rng: f"srv-glpi-{rng.randrange(1, 20):02d}.widip.local",
    lambda rng: f"root@srv-db{rng.randrange(1, 9):02d}.widip.local",
    lambda rng: f"ticket #{rng.randrange(2_000_000, 2_999_999)}",
    lambda rng: f"GLPI {rng.randrange(10**9, 10**10)}",
    lambda rng: ":".join(f"{rng.randrange(256):02X}" for _ in range(6)),
    lambda rng: luhn_completed("35", 15, rng),  # an IMEI
    lambda rng: "362 521 879 " + f"{rng.randrange(100000):05d}",  # a SIRET
    lambda rng: luhn_completed(rng.choice(["30", "36", "38"]), 14, rng),  # a compact SIRET passing Luhn
    lambda rng: f"{rng.randrange(1, 10)} {rng.randrange(100, 1000)},{rng.randrange(100):02d} €",
    lambda rng: f"{rng.randrange(1, 29):02d}/{rng.randrange(1, 13):02d}/20{rng.randrange(20, 27)}",
    lambda rng: f"v{rng.randrange(1, 5)}.{rng.randrange(20)}.{rng.randrange(20)}",
    lambda rng: f"SN {rng.randrange(10**11, 10**12)}",
    lambda rng: f"port {rng.randrange(1, 48)} du switch {rng.randrange(1, 9)}",
]


def wrong_key_nir(rng: random.Random) -> str:
    body, key = nir_digits(rng)
    return nir_spelling(body, f"{(int(key) % 97) + 1:02d}", rng)


def wrong_iban(rng: random.Random) -> str:
    value = iban(rng)
    return grouped(value[:2] + f"{(int(value[2:4]) + 1) % 100:02d}" + value[4:])


def wrong_card(rng: random.Random) -> str:
    number = luhn_completed("4", 16, rng)
    return grouped(number[:-1] + str((int(number[-1]) + 1) % 10))


LOOKALIKES += [wrong_key_nir, wrong_iban, wrong_card]


def iban_spelled(rng: random.Random) -> str:
    value = iban(rng, rng.choice(["FR"] * 4 + ["DE", "BE", "ES", "IT"]))
    return rng.choice([value, grouped(value), grouped(value), grouped(value).lower()])


GENERATORS: dict[str, Callable[[random.Random], str]] = {
    NIR: lambda rng: nir_spelling(*nir_digits(rng), rng),
    IBAN: lambda rng: iban_spelled(rng),
    CARD: card,
    PHONE: phone,
    EMAIL: email,
    NAME: person,
}

TEMPLATES = [
    "Ticket {lookalike} – {site} : {civility} {NOM} (chambre {room}) n'arrive plus à se connecter. Rappeler au {TEL}.",
    "Bonjour, le résident {NOM} a un NIR {NIR} mal saisi dans le logiciel de soins, voir {lookalike}.",
    "Remboursement à faire sur l'IBAN {IBAN} (facture {lookalike}), contact : {EMAIL}.",
    "Le patient {NOM} a payé avec la carte {CARTE} ; l'équipement {lookalike} est à réinitialiser.",
    "Peux-tu résumer ce ticket ? Demandeur {EMAIL}, tél. {TEL}, poste {lookalike}.",
    "Mise à jour de la fiche : N° sécu {NIR}, téléphone {TEL}, mail {EMAIL}, IBAN : {IBAN}.",
    "Incident réseau sur {lookalike} depuis {lookalike}, aucun impact sur {site}.",
    "{civility} {NOM} signale un débit de sa carte {CARTE} non reconnu ; son numéro : {TEL}.",
    "Chambre {room} : {NOM} ne reçoit plus les appels, ligne {TEL}, routeur {lookalike}.",
    # Names without a civility or care word before them (not seen), and capitals after one that are no name.
    "{NOM} a rappelé ce matin au sujet de {lookalike}.",
    "Chambre {room} : TV et Wi-Fi HS depuis {lookalike}.",
    "Mme La Directrice demande un accès VPN pour {site}.",
]


def corpus(size: int = 2000, *, seed: int = 20261205) -> list[Sample]:
    rng = random.Random(seed)
    return [_sample(rng.choice(TEMPLATES), rng) for _ in range(size)]


def _sample(template: str, rng: random.Random) -> Sample:
    sample = Sample("")
    for piece in _pieces(template):
        if piece.startswith("{") and piece.endswith("}"):
            name = piece[1:-1]
            if name in GENERATORS:
                value = GENERATORS[name](rng)
                sample.labels.append((name, len(sample.text), len(sample.text) + len(value)))
                sample.text += value
            elif name == "lookalike":
                sample.text += rng.choice(LOOKALIKES)(rng)
            elif name == "site":
                sample.text += rng.choice(SITES)
            elif name == "civility":
                sample.text += rng.choice(["M.", "Mme", "Madame", "Monsieur", "Dr", "la résidente", "le patient"])
            elif name == "room":
                sample.text += str(rng.randrange(1, 120))
        else:
            sample.text += piece
    return sample


def _pieces(template: str) -> list[str]:
    pieces, at = [], 0
    while (start := template.find("{", at)) >= 0:
        end = template.index("}", start) + 1
        pieces += [template[at:start], template[start:end]]
        at = end
    return [*pieces, template[at:]]


@dataclass
class Score:
    found: int = 0  # labelled identifiers found, kind and span exact
    missed: int = 0
    false: int = 0  # flagged where nothing of that kind is

    @property
    def recall(self) -> float:
        return self.found / ((self.found + self.missed) or 1)

    @property
    def precision(self) -> float:
        return self.found / ((self.found + self.false) or 1)


def score(samples: list[Sample], detect: Callable[[str], list[tuple[str, int, int]]]) -> dict[str, Score]:
    scores = {kind: Score() for kind in GENERATORS}
    for sample in samples:
        flagged = set(detect(sample.text))
        for label in sample.labels:
            if label in flagged:
                scores[label[0]].found += 1
            else:
                scores[label[0]].missed += 1
        for item in flagged - set(sample.labels):
            scores[item[0]].false += 1
    return scores
