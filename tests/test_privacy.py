"""Identifiers pseudonymised before the model (#30): the detectors, on known values and the generated corpus; the
placeholders, put back whole and streamed; and the chat workflow end to end against the fake model server, which
must never receive a valid NIR, IBAN, card number, phone number or e-mail address from any of the four sources."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from pathlib import Path

import pytest

from services.chat.app import create_app
from services.chat.privacy import Pseudonyms
from services.chat.privacy.detect import CARD, EMAIL, IBAN, NAME, NIR, PHONE, find_identifiers
from services.chat.resources import CHAT as RESOURCES
from shared import AppKeys
from tests import personal_data
from tests.conftest import bearer
from tests.documents import b64

CHAT = "/webhook/wibot/chat"
INGEST = "/webhook/wibot/rag/ingest"

RNG = random.Random(30)
NIR_BODY = "2581021351225"
NIR_KEY = f"{97 - int(NIR_BODY) % 97:02d}"
NIR_CORSICA = "1850" + "52A" + "006084"  # 2A counts as 19 in the key
NIR_CORSICA_KEY = f"{97 - int(NIR_CORSICA.replace('2A', '19')) % 97:02d}"
IBAN_FR = personal_data.iban(RNG)
VISA = personal_data.luhn_completed("4970", 16, RNG)
PHONE_MOBILE = "0612345678"


def kinds_at(text: str, **options: bool) -> list[tuple[str, str]]:
    return [(found.kind, text[found.start : found.end]) for found in find_identifiers(text, **options)]


# --- detectors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        NIR_BODY + NIR_KEY,
        " ".join([NIR_BODY[0], NIR_BODY[1:3], NIR_BODY[3:5], NIR_BODY[5:7], NIR_BODY[7:10], NIR_BODY[10:], NIR_KEY]),
        ".".join([NIR_BODY[0], NIR_BODY[1:3], NIR_BODY[3:5], NIR_BODY[5:7], NIR_BODY[7:10], NIR_BODY[10:], NIR_KEY]),
        NIR_CORSICA + NIR_CORSICA_KEY,
        f"1 85 05 2A 006 084 {NIR_CORSICA_KEY}",
        f"1 85 05 2a 006 084 {NIR_CORSICA_KEY}",
    ],
)
def test_a_nir_is_found_in_every_spelling(spelling):
    assert kinds_at(f"NIR du résident : {spelling}, merci.") == [(NIR, spelling)]


def test_a_nir_with_a_wrong_key_or_impossible_month_is_left_alone():
    wrong = f"{(int(NIR_KEY) % 97) + 1:02d}"
    assert kinds_at(f"NIR {NIR_BODY}{wrong}") == []
    body = NIR_BODY[:3] + "15" + NIR_BODY[5:]  # month 15 does not exist
    assert kinds_at(f"NIR {body}{97 - int(body) % 97:02d}") == []


def test_iban_card_phone_and_email_in_their_usual_spellings():
    grouped = personal_data.grouped(IBAN_FR)
    assert kinds_at(f"IBAN : {grouped} merci") == [(IBAN, grouped)]
    assert kinds_at(f"IBAN {IBAN_FR}.") == [(IBAN, IBAN_FR)]
    assert kinds_at(f"{grouped} ABCD") == [(IBAN, grouped)]  # a word after it is not its last group
    card_spaced = personal_data.grouped(VISA)
    assert kinds_at(f"carte {card_spaced} exp 12/27") == [(CARD, card_spaced)]
    assert kinds_at(f"carte {VISA}") == [(CARD, VISA)]
    for spelling in ["06 12 34 56 78", "06.12.34.56.78", "06-12-34-56-78", "0612345678", "+33 6 12 34 56 78",
                     "+33612345678", "+33 (0)6 12 34 56 78", "0033 6 12 34 56 78", "06/12/34/56/78"]:  # fmt: skip
        assert kinds_at(f"Rappeler au {spelling}.") == [(PHONE, spelling)], spelling
    assert kinds_at("écrire à f.lefevre@ehpad-tilleuls.fr.") == [(EMAIL, "f.lefevre@ehpad-tilleuls.fr")]


def test_checksums_decide_for_iban_and_cards():
    bad_iban = IBAN_FR[:2] + f"{(int(IBAN_FR[2:4]) + 1) % 100:02d}" + IBAN_FR[4:]
    bad_card = VISA[:-1] + str((int(VISA[-1]) + 1) % 10)
    assert kinds_at(f"{bad_iban} {personal_data.grouped(bad_card)}") == []


@pytest.mark.parametrize(
    "text",
    [
        "Le switch 10.12.4.254 ne répond plus, ping 192.168.1.1 OK",
        "ssh root@srv-glpi-01.widip.local puis admin@fw.widip.lan",
        "ticket #2024123456, GLPI 1234567, port 12 du switch 3",
        "IMEI 356938035643809, SIRET 362 521 879 00034, SIRET 36252187900034",
        "MAC 00:1A:2B:3C:4D:5E, version v2.4.1, montant 1 234,56 €, le 12/05/2025",
    ],
)
def test_the_technicians_work_is_never_touched(text):
    assert kinds_at(text) == []
    assert kinds_at(text, names=True) == []


def test_names_only_as_an_option_and_only_after_a_civility_or_a_care_word():
    text = "Mme Durand et le patient Jean LE GALL, chambre 12 : Moreau ; Mme La Directrice ; Martin a appelé"
    assert kinds_at(text) == []
    assert kinds_at(text, names=True) == [(NAME, "Durand"), (NAME, "Jean LE GALL"), (NAME, "Moreau")]


def test_the_generated_corpus_meets_the_targets_on_every_kind_but_names():
    samples = personal_data.corpus(1500)
    scores = personal_data.score(
        samples, lambda text: [(f.kind, f.start, f.end) for f in find_identifiers(text, names=False)]
    )
    for kind in (NIR, IBAN, CARD, PHONE, EMAIL):
        assert scores[kind].found > 100, kind  # the corpus holds each kind
        assert scores[kind].recall >= 0.99 and scores[kind].precision >= 0.99, (kind, scores[kind])
    assert scores[NAME].found == 0  # the option is off


# --- placeholders -----------------------------------------------------------------------------------------------


def test_one_value_one_placeholder_whatever_its_spelling_and_put_back_as_first_written():
    pseudonyms = Pseudonyms()
    first = pseudonyms.mask("Appelle le 06 12 34 56 78 ou écris à Marie.Dubois@orange.fr")
    second = pseudonyms.mask("Le +33612345678 ne répond pas ; jean@gmail.com non plus ; marie.dubois@orange.fr ?")
    assert first == "Appelle le [TEL_1] ou écris à [EMAIL_1]"
    assert second == "Le [TEL_1] ne répond pas ; [EMAIL_2] non plus ; [EMAIL_1] ?"
    assert pseudonyms.restore("J'appelle [TEL_1] et j'écris à [EMAIL_2] ; [EMAIL_9] inconnu") == (
        "J'appelle 06 12 34 56 78 et j'écris à jean@gmail.com ; [EMAIL_9] inconnu"
    )
    assert dict(pseudonyms.masked) == {PHONE: 2, EMAIL: 3}


class Chunks:
    def __init__(self, parts: list[str]) -> None:
        self.parts = list(parts)

    async def next_delta(self) -> str | None:
        return self.parts.pop(0) if self.parts else None


async def read_all(deltas) -> list[str]:
    out = []
    while (delta := await deltas.next_delta()) is not None:
        out.append(delta)
    return out


async def test_a_streamed_reply_has_its_placeholders_put_back_wherever_the_chunks_split_them():
    pseudonyms = Pseudonyms()
    pseudonyms.mask(f"NIR {NIR_BODY}{NIR_KEY} et 06 12 34 56 78")
    reply = "Le NIR [NIR_1] (tél. [TEL_1]) ; [NIR_2] et [TEL inconnus ; fin ["
    expected = pseudonyms.restore(reply)
    assert f"{NIR_BODY}{NIR_KEY}" in expected and "06 12 34 56 78" in expected
    for size in range(1, 9):
        parts = [reply[i : i + size] for i in range(0, len(reply), size)]
        got = await read_all(pseudonyms.restoring(Chunks(parts)))
        assert "".join(got) == expected, size
        assert all(got), "no empty delta is sent"
        assert not any("[NIR_1]" in part or "[TEL_1]" in part for part in got)


# --- the chat workflow ----------------------------------------------------------------------------------------

NIR_SPELLED = " ".join([NIR_BODY[0], NIR_BODY[1:3], NIR_BODY[3:5], NIR_BODY[5:7], NIR_BODY[7:10], NIR_BODY[10:]])
NIR_SPELLED += f" {NIR_KEY}"
# Each source carries its own values; the memory and the message share the phone number.
MEMORY_TEXT = f"Le résident a le NIR {NIR_SPELLED}, sa fille répond au 06 12 34 56 78."
MESSAGE = "Rédige un mail pour la famille (tél. +33 6 12 34 56 78, paul.girard@orange.fr) sur la facture."
FILE_TEXT = f"Facture : régler sur l'IBAN {personal_data.grouped(IBAN_FR)} ; carte {personal_data.grouped(VISA)}.\n"
KB_TEXT = (
    "# Procédure remboursement des familles\n\nLe remboursement des familles passe par la comptabilité :"
    " compta.tilleuls@ehpad-tilleuls.fr, téléphone 01 45 67 89 12. La facture est jointe au mail.\n"
)
# Every value, in every form it could reach the model in.
VALUES = [NIR_SPELLED, NIR_BODY + NIR_KEY, "06 12 34 56 78", "0612345678", "+33 6 12 34 56 78", "612345678",
          "paul.girard@orange.fr", IBAN_FR, personal_data.grouped(IBAN_FR), VISA, personal_data.grouped(VISA),
          "compta.tilleuls@ehpad-tilleuls.fr", "01 45 67 89 12", "0145678912"]  # fmt: skip


@pytest.fixture
def kb_root(tmp_path: Path) -> Path:
    root = tmp_path / "kb"
    root.mkdir()
    (root / "remboursement-familles.md").write_text(KB_TEXT, encoding="utf-8")
    return root


@pytest.fixture
def privacy_settings(chat_settings, kb_root):
    return chat_settings.model_copy(update={"kb_root": kb_root})


async def start(make_client, settings, **overrides):
    return await make_client(create_app(settings.model_copy(update=overrides)))


async def ingest(client, admin_id: int) -> None:
    r = await client.post(INGEST, json={}, headers=bearer(admin_id, "chef", "admin"))
    assert r.status == 200, await r.text()
    await asyncio.wait_for(client.app[RESOURCES].knowledge.follower.caught_up(client.app[AppKeys.DB]), 10)


async def a_conversation_with_memory(factory, user_id: int) -> uuid.UUID:
    cid = await factory.conversation(user_id)
    await factory.message(cid, user_id, "user", MEMORY_TEXT, created_at="2026-12-01T10:00:00Z")
    await factory.message(cid, user_id, "assistant", "C'est noté.", created_at="2026-12-01T10:00:01Z")
    return cid


def everything_the_model_server_received(fake_mistral) -> str:
    return json.dumps([*fake_mistral.received, *fake_mistral.embedded], ensure_ascii=False)


def chat_body(cid: uuid.UUID, **extra) -> dict:
    files = [{"name": "facture.txt", "content": b64(FILE_TEXT.encode())}]
    return {"conversation_id": str(cid), "message": MESSAGE, "files": files, **extra}


async def test_no_identifier_from_any_of_the_four_sources_reaches_the_model_and_the_user_sees_theirs(
    make_client, privacy_settings, db, factory, fake_mistral
):
    client = await start(make_client, privacy_settings)
    admin_id = await factory.user("chef", role="admin")
    user_id = await factory.user("khora")
    await ingest(client, admin_id)
    cid = await a_conversation_with_memory(factory, user_id)
    fake_mistral.reply = "Mail pour [EMAIL_1] (copie [EMAIL_2]), NIR [NIR_1], tél. [TEL_1], IBAN [IBAN_1]."

    r = await client.post(CHAT, json=chat_body(cid), headers=bearer(user_id))
    body = await r.json()
    assert r.status == 200, body

    sent = fake_mistral.received[-1]["messages"]
    prompt = "\n".join(message["content"] for message in sent)
    assert "remboursement des familles" in sent[0]["content"]  # the passage was retrieved…
    assert "[EMAIL_" in sent[0]["content"] and "[TEL_" in sent[0]["content"]  # …with its identifiers replaced
    assert "[NIR_1]" in sent[1]["content"] and "[TEL_1]" in sent[1]["content"]  # the memory
    assert "(tél. [TEL_1], [EMAIL_1])" in sent[-1]["content"]  # same phone as the memory, same placeholder
    assert "[IBAN_1]" in sent[-1]["content"] and "[CARTE_1]" in sent[-1]["content"]  # the attachment
    assert "marqueurs comme [NIR_1]" in sent[0]["content"]
    leaked = [value for value in VALUES if value in everything_the_model_server_received(fake_mistral)]
    assert leaked == [] and "[NIR_1]" in prompt
    assert fake_mistral.embedded, "the document and the question were embedded"

    assert body["response"] == (
        f"Mail pour paul.girard@orange.fr (copie compta.tilleuls@ehpad-tilleuls.fr), NIR {NIR_SPELLED},"
        f" tél. 06 12 34 56 78, IBAN {personal_data.grouped(IBAN_FR)}."
    )
    stored = await db.fetch("SELECT role, content FROM messages WHERE conversation_id = $1 ORDER BY message_id", cid)
    assert [row["content"] for row in stored[-2:]] == [MESSAGE, body["response"]]  # what the user wrote and saw


async def test_a_streamed_reply_is_put_back_whatever_the_chunk_size(
    make_client, chat_settings, db, factory, fake_mistral
):
    client = await start(make_client, chat_settings)
    user_id = await factory.user("khora")
    cid = await a_conversation_with_memory(factory, user_id)
    fake_mistral.reply = "NIR [NIR_1] ; tél. [TEL_1] ; mail [EMAIL_1]."
    fake_mistral.chunk_chars = 3  # every placeholder split across chunks
    r = await client.post(CHAT, json=chat_body(cid, stream=True), headers=bearer(user_id))
    text = await r.text()
    assert r.status == 200
    deltas = [json.loads(line[6:])["content"] for line in text.splitlines() if line.startswith('data: {"content"')]
    expected = f"NIR {NIR_SPELLED} ; tél. 06 12 34 56 78 ; mail paul.girard@orange.fr."
    assert "".join(deltas) == expected and len(deltas) > 3
    assert not any("[" in delta for delta in deltas)
    assert (
        await db.fetchval("SELECT content FROM messages WHERE role = 'assistant' ORDER BY message_id DESC") == expected
    )
    assert [value for value in VALUES if value in everything_the_model_server_received(fake_mistral)] == []


async def test_block_mode_refuses_before_anything_costs(make_client, chat_settings, db, factory, fake_mistral):
    client = await start(make_client, chat_settings, personal_data="block")
    user_id = await factory.user("khora")
    cid = uuid.uuid4()
    r = await client.post(CHAT, json={"conversation_id": str(cid), "message": MESSAGE}, headers=bearer(user_id))
    body = await r.json()
    assert r.status == 422 and body["code"] == "PERSONAL_DATA"
    assert body["error"].startswith("Données personnelles détectées (numéro de téléphone, adresse e-mail)")
    # In a file: refused once read, the reservation given back.
    files = [{"name": "facture.txt", "content": b64(FILE_TEXT.encode())}]
    r = await client.post(
        CHAT, json={"conversation_id": str(cid), "message": "Résume", "files": files}, headers=bearer(user_id)
    )
    body = await r.json()
    assert r.status == 422 and "IBAN, numéro de carte bancaire" in body["error"]
    assert not fake_mistral.received and not fake_mistral.embedded
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT coalesce(sum(used_tokens), 0) FROM user_token_usage") == 0
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 0
    # A message without identifiers goes through; its memory would be pseudonymised, never refused.
    r = await client.post(CHAT, json={"conversation_id": str(cid), "message": "Bonjour"}, headers=bearer(user_id))
    assert r.status == 200


async def test_off_sends_the_values_as_they_are(make_client, chat_settings, db, factory, fake_mistral):
    client = await start(make_client, chat_settings, personal_data="off")
    user_id = await factory.user("khora")
    r = await client.post(
        CHAT, json={"conversation_id": str(uuid.uuid4()), "message": MESSAGE}, headers=bearer(user_id)
    )
    assert r.status == 200
    assert "paul.girard@orange.fr" in fake_mistral.received[-1]["messages"][-1]["content"]
    assert "marqueurs" not in fake_mistral.received[-1]["messages"][0]["content"]


async def test_no_value_in_the_logs_only_counts(capsys):
    from services.chat.privacy import pseudonymise
    from tests.conftest import make_settings

    async def nowhere(*args):
        raise AssertionError("a short text is pseudonymised in place")

    protected = await pseudonymise(make_settings("postgresql://unused"), [], MESSAGE, [], [], offload=nowhere)
    assert protected.message.count("[") == 2
    logged = capsys.readouterr()
    assert "personal_data_pseudonymised" in logged.out + logged.err
    assert "paul.girard" not in logged.out + logged.err and "12 34" not in logged.out + logged.err


async def test_a_large_text_is_pseudonymised_in_a_worker_process_with_the_same_placeholders(capsys):
    """Not in a thread: the detectors hold the GIL, and the event loop would wait for them."""
    from services.chat import privacy
    from services.chat.attachments import Extractor, ReadFile
    from tests.conftest import make_settings

    extractor = Extractor(workers=1, timeout_s=30)
    big = "ligne de journal sans rien\n" * 2000 + "Rappeler le 06 12 34 56 78"
    read = ReadFile(name="journal.txt", type="text/plain", size=len(big), text=big, pages=None, chars=len(big))
    settings = make_settings("postgresql://unused")
    try:
        protected = await privacy.pseudonymise(
            settings, [], "Appelle le 0612345678", [read], [], offload=extractor.call
        )
        assert extractor.submitted == 1  # the large one went to the worker process
        small = await privacy.pseudonymise(settings, [], "Appelle le 0612345678", [], [], offload=extractor.call)
        assert extractor.submitted == 1  # the small one did not
    finally:
        extractor.close()
    assert protected.message == small.message == "Appelle le [TEL_1]"
    assert protected.pseudonyms.masked == {"TEL": 2}  # counted and logged by this process, not the worker
    assert "personal_data_pseudonymised" in capsys.readouterr().out
    assert protected.files[0].text.endswith("Rappeler le [TEL_1]")
