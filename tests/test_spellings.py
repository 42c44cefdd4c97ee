"""Identifiers in any spelling (#45): generated, not listed. Hypothesis draws valid identifiers of each kind (NIR with
its key, French IBAN, Luhn cards of the networks in use, French phones, e-mails with accented or internationalised
parts) and writes them the ways tickets do — the separator between groups (spaces of every width, the non-breaking
ones Word, Outlook and GLPI insert, tabs, two spaces, dashes, dots, none), full-width digits, an invisible character
inside, a line break in the middle, a label glued in front, words around — and checks that none reaches the model
(what `Pseudonyms.mask` gives), and that the user gets their text back whole. The same generator draws what must
stay untouched: wrong keys (an IBAN with a wrong key keeps its digits: they are not a card), IP addresses, ticket
numbers, host names.
"""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.chat.privacy.normalise import normalise
from services.chat.privacy.pseudonyms import Pseudonyms
from tests.personal_data import card, iban, nir_digits, wrong_iban, wrong_key_nir

SEPARATORS = [" ", "\u00a0", "\u202f", "\u2007", "\u2009", "\t", "  ", " \u00a0", "-", ".", "\u2011", "\u2013", ""]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]
BEFORE = ["", "Bonjour, ", "Le résident a appelé. ", "Voir ticket :\n", "Cordialement,\n", "(", "« "]
AFTER = ["", ".", " merci", ", rappeler demain.", "\nBonne journée", ")", " »"]
LABELS = {
    "NIR": ["", "NIR ", "NIR", "NIR : ", "n° sécu : ", "N° SS ", "INS "],
    "IBAN": ["", "IBAN ", "IBAN : ", "RIB : "],
    "CARTE": ["", "carte ", "CB : ", "Carte n° "],
    "TEL": ["", "Tél.", "Tél : ", "tel:", "Mob ", "portable : ", "GSM:"],
    "EMAIL": ["", "mail : ", "Courriel : ", "<"],
}


def grouped(value: str, sizes: list[int], separator: str) -> str:
    groups, at = [], 0
    for size in sizes:
        groups.append(value[at : at + size])
        at += size
    if at < len(value):
        groups.append(value[at:])
    return separator.join(group for group in groups if group)


@st.composite
def identifiers(draw: st.DrawFn) -> tuple[str, str, str]:
    """(kind, compact value, the value as written)."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    kind = draw(st.sampled_from(["NIR", "IBAN", "CARTE", "TEL", "EMAIL"]))
    separator = draw(st.sampled_from(SEPARATORS))
    if kind == "NIR":
        body, key = nir_digits(rng)
        compact = body + key
        written = grouped(compact, [1, 2, 2, 2, 3, 3], separator)
    elif kind == "IBAN":
        compact = iban(rng).replace(" ", "")
        written = grouped(compact, [4] * 6, separator if separator != "" or draw(st.booleans()) else " ")
    elif kind == "CARTE":
        compact = re.sub(r"\D", "", card(rng))
        sizes = [4, 6, 5] if len(compact) == 15 else [4, 4, 4, 4]  # American Express: 4-6-5, as printed
        written = grouped(compact, sizes, separator)
    elif kind == "TEL":
        compact = rng.choice("0") + rng.choice("167") + "".join(rng.choice("0123456789") for _ in range(8))
        if draw(st.booleans()):
            country = "+33" + draw(st.sampled_from([" ", "\u00a0", ""]))
            written = country + grouped(compact[1:], [1, 2, 2, 2, 2], separator)
        else:
            written = grouped(compact, [2, 2, 2, 2, 2], separator)
    else:
        first = draw(st.sampled_from(["élodie", "jean", "marie-hélène", "françois", "o.brien", "zoé"]))
        last = draw(st.sampled_from(["moreau", "dupont", "lefèvre", "n'guyen", "garçon"]))
        domain = draw(st.sampled_from(["widip.fr", "hôpital-exemple.fr", "ehpad-les-tilleuls.fr", "mairie.gouv.fr"]))
        at = draw(st.sampled_from(["@", " @ ", "(at)", "[at]", " (at) "]))
        compact = f"{first}.{last}"
        written = f"{first}.{last}{at}{domain}"
        return kind, compact, written
    if draw(st.booleans()):  # full-width digits (a form's input method, a copy from a PDF)
        written = "".join(chr(0xFF10 + int(c)) if c.isdigit() and draw(st.booleans()) else c for c in written)
    if draw(st.booleans()):  # an invisible character inside the value
        at = draw(st.integers(1, len(written) - 1))
        written = written[:at] + draw(st.sampled_from(INVISIBLE)) + written[at:]
    if draw(st.booleans()):  # split over two lines where a separator was
        spaces = [i for i, c in enumerate(written) if c == " "]
        if spaces:
            at = draw(st.sampled_from(spaces))
            written = written[:at] + "\n" + written[at + 1 :]
    return kind, compact, written


def letters_and_digits_of(text: str) -> str:
    """The text's digits and letters, as one string: a value written in groups, found whatever its separators (a
    Corsican NIR's 2A, an IBAN's letters)."""
    return re.sub(r"[\W_]", "", normalise(text).text).upper()


@settings(max_examples=600, deadline=None, derandomize=True)
@given(identifiers(), st.data())
def test_no_identifier_in_any_spelling_reaches_the_model_and_the_user_gets_it_back(identifier, data):
    kind, compact, written = identifier
    label = data.draw(st.sampled_from(LABELS[kind]))
    text = data.draw(st.sampled_from(BEFORE)) + label + written + data.draw(st.sampled_from(AFTER))
    pseudonyms = Pseudonyms()
    sent = pseudonyms.mask(text)
    if kind == "EMAIL":
        assert compact not in normalise(sent).text.casefold(), (text, sent)
    else:
        assert compact[-9:] not in letters_and_digits_of(sent).upper(), (text, sent)  # not even its last nine digits
    assert f"[{kind}_1]" in sent, (text, sent)
    assert pseudonyms.restore(sent) == text  # the user's own spelling, whole


@st.composite
def look_alikes(draw: st.DrawFn) -> str:
    rng = random.Random(draw(st.integers(0, 2**32)))
    separator = draw(st.sampled_from([" ", "\u00a0", "\u202f", "\t", "-", "."]))
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return ".".join(str(rng.randrange(256)) for _ in range(4))  # an IP address
    if choice == 1:
        return f"ticket {rng.randrange(2020, 2027)}-{rng.randrange(10**6, 10**7)}"
    if choice == 2:
        return f"srv-{draw(st.sampled_from(['glpi', 'ad01', 'backup']))}.widip.local"
    if choice == 3:  # a NIR with a wrong key
        return grouped(wrong_key_nir(rng).replace(" ", ""), [1, 2, 2, 2, 3, 3], separator)
    if choice == 4:  # an IBAN with a wrong key: kept whole, never partly taken for a card
        return grouped(wrong_iban(rng).replace(" ", ""), [4] * 6, separator if separator != "\t" else " ")
    return f"root@srv-{rng.randrange(1, 99):02d}.widip.lan"


@settings(max_examples=300, deadline=None, derandomize=True)
@given(look_alikes(), st.sampled_from(BEFORE), st.sampled_from(AFTER))
def test_what_only_looks_like_an_identifier_is_left_as_written(look_alike, before, after):
    text = before + look_alike + after
    assert Pseudonyms().mask(text) == text


def test_a_placeholder_someone_typed_is_never_filled_with_another_texts_value():
    """#45: `[NIR_1]` typed in a message (a pasted reply, say) was given back filled with the NIR of a knowledge-base
    passage that got the same placeholder. Typed placeholders keep their number to themselves and stay as typed."""
    from services.chat.knowledge.retrieval import Passage
    from services.chat.privacy import masked

    rng = random.Random(45)
    body, key = nir_digits(rng)
    passage = Passage(chunk_id=1, source="procédure.md", content=f"Exemple : NIR {body}{key}.", score=1.0)
    protected = masked(False, [], "Que faire de [NIR_1] et [EMAIL_2] ?", [], [passage])
    assert protected.message == "Que faire de [NIR_1] et [EMAIL_2] ?"
    assert protected.passages[0].content == "Exemple : NIR [NIR_2]."  # the typed number is not given
    reply = "Pour [NIR_1], voir [NIR_2] ; [EMAIL_2] reste tel quel."
    assert protected.pseudonyms.restore(reply) == f"Pour [NIR_1], voir {body}{key} ; [EMAIL_2] reste tel quel."


def test_an_iban_with_a_wrong_key_keeps_its_middle_digits_even_when_they_pass_luhn():
    """#45: `FR96 4016 2863 0437 0611 9796 768` lost its middle 16 digits to a card placeholder (they pass Luhn)."""
    wrong = "Virement vers FR96 4016 2863 0437 0611 9796 768 refusé"
    assert Pseudonyms().mask(wrong) == wrong
    assert Pseudonyms().mask(wrong.replace(" ", "\u00a0")) == wrong.replace(" ", "\u00a0")


async def test_a_cut_files_name_reaches_neither_the_model_nor_the_logs(
    make_client, chat_settings, factory, fake_mistral, capsys
):
    """#45: a long file that is cut (not indexed) was named to the model verbatim in the note saying it was cut, and
    file names appeared in four log events: a NIR in a file name reached the model and the logs."""
    import base64

    from services.chat.app import create_app
    from tests.conftest import bearer

    settings = chat_settings.model_copy(update={"chat_files_max_chars": 200, "kb_index_attachments": False})
    client = await make_client(create_app(settings))
    user_id = await factory.user()
    body, key = nir_digits(random.Random(7))
    name = f"dossier {body[0]} {body[1:3]} {body[3:5]} {body[5:7]} {body[7:10]} {body[10:13]} {key}.txt"
    content = base64.b64encode(("Compte rendu de la nuit. " * 40).encode()).decode()
    payload = {"conversation_id": "8f14e45f-ceea-467f-a0e6-0e4b3f1d6c11", "message": "Résume ce dossier",
               "files": [{"name": name, "content": content}]}  # fmt: skip
    r = await client.post("/webhook/wibot/chat", json=payload, headers=bearer(user_id))
    assert r.status == 200, await r.text()
    sent = fake_mistral.received[-1]["messages"][-1]["content"]
    assert "Contenu tronqué" in sent and "[NIR_1]" in sent, sent[-400:]
    assert (body + key).upper() not in letters_and_digits_of(sent), sent[-400:]
    out = capsys.readouterr().out
    assert body[7:10] + " " + body[10:13] not in out and name not in out


@pytest.mark.parametrize("extension", [".exe", ".docx"])
async def test_a_refused_files_name_is_told_to_its_user_and_never_logged(
    make_client, chat_settings, factory, capsys, extension
):
    """#45: the envelope of a refused file names it (the user's own file); the log line of the refusal says only its
    extension. `.exe` is refused for its type, a `.docx` that is not one as unreadable."""
    import base64

    from services.chat.app import create_app
    from tests.conftest import bearer

    client = await make_client(create_app(chat_settings))
    user_id = await factory.user()
    name = f"Dupont Jeanne 2 48 12 2A 005 123{extension}"
    payload = {"conversation_id": "8f14e45f-ceea-467f-a0e6-0e4b3f1d6c12", "message": "Lis ceci",
               "files": [{"name": name, "content": base64.b64encode(b"MZ not a document").decode()}]}  # fmt: skip
    r = await client.post("/webhook/wibot/chat", json=payload, headers=bearer(user_id))
    body = await r.json()
    assert r.status in (415, 422) and name in body["error"], body
    out = capsys.readouterr().out
    refusals = [line for line in out.splitlines() if '"request_failed"' in line]
    assert refusals and f"<fichier {extension}>" in refusals[0], out[-2000:]
    assert "Dupont" not in out and "2A 005" not in out
