"""Budget first (F1 of the security round 3): a user's quota is reserved before anything that costs — extracting
their files, embedding an attachment, storing its chunks, the model — and what an attachment's embedding costs
is held before it is asked for and charged to its user. Before: a 500-page PDF sent by a user whose quota was 0
was extracted, embedded (426,391 tokens) and stored (2,000 chunks), then answered 429."""

from __future__ import annotations

import math
import uuid

import pytest

from services.chat.app import create_app
from services.chat.resources import CHAT as RESOURCES
from tests.documents import b64, text_pdf
from tests.test_knowledge import ask, long_report

QUOTA_EXCEEDED = "QUOTA_EXCEEDED"


def report_file() -> list[dict[str, str]]:
    return [{"name": "rapport-nuit.txt", "content": b64(long_report().encode())}]


def fake_embedding_tokens(chunks: list[str]) -> int:
    return sum(max(1, math.ceil(len(chunk) / 4)) for chunk in chunks)  # devtools.fake_mistral's count


@pytest.mark.parametrize(
    "quota", [0, 300], ids=["none (refused at admission)", "too little for the prompt (refused by the reservation)"]
)
async def test_a_user_without_quota_extracts_embeds_and_stores_nothing(
    make_client, chat_settings, factory, db, fake_mistral, quota
):
    client = await make_client(create_app(chat_settings.model_copy(update={"chat_files_max_chars": 1_500})))
    user_id = await factory.user()
    await factory.usage(user_id, used=0, quota=quota)
    pdf = text_pdf([f"Page {n} : procédure de sauvegarde du serveur de fichiers. " * 20 for n in range(50)])
    files = [*report_file(), {"name": "gros.pdf", "content": b64(pdf)}]
    status, body = await ask(client, user_id, "Résume ces documents", files=files)
    assert status == 429 and body["code"] == QUOTA_EXCEEDED, body
    assert client.app[RESOURCES].extractor.submitted == 0  # not even read
    assert len(fake_mistral.embedded) == 0 and len(fake_mistral.received) == 0
    assert await db.fetchval("SELECT count(*) FROM kb_documents") == 0
    assert await db.fetchval("SELECT count(*) FROM kb_chunks") == 0
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage WHERE user_id = $1", user_id) == 0
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 0


async def test_an_attachments_embedding_is_charged_to_its_user(make_client, chat_settings, factory, db, fake_mistral):
    """Whatever KB_CHARGE_EMBEDDINGS says (it is about the question's embedding), an indexed attachment's
    tokens are its sender's: they are added to the reply's."""
    client = await make_client(create_app(chat_settings.model_copy(update={"chat_files_max_chars": 1_500})))
    user_id = await factory.user()
    fake_mistral.total_tokens = 1000
    status, body = await ask(client, user_id, "Que s'est-il passé avec l'onduleur ?", files=report_file())
    assert status == 200, body
    chunks = [inputs for request in fake_mistral.embedded for inputs in request["input"]]
    question = "Que s'est-il passé avec l'onduleur ?"
    attachment_tokens = fake_embedding_tokens([chunk for chunk in chunks if chunk != question])
    assert attachment_tokens > 0
    assert body["tokens_used"] == 1000 + attachment_tokens
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage WHERE user_id = $1", user_id) == (
        1000 + attachment_tokens
    )
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 0


async def test_an_attachment_the_quota_cannot_embed_is_cut_not_indexed(
    make_client, chat_settings, factory, db, fake_mistral
):
    """Room for the message and a reply, not for the attachment's embedding: the file is cut as when indexing is
    off, nothing is embedded or stored, and the chat is answered."""
    settings = chat_settings.model_copy(update={"chat_files_max_chars": 1_500, "mistral_max_tokens": 100})
    client = await make_client(create_app(settings))
    user_id = await factory.user()
    await factory.usage(user_id, used=0, quota=2_500)  # the report's ~5,300 characters cost ~1,800 tokens
    status, body = await ask(client, user_id, "Résume", files=report_file())
    assert status == 200, body
    sent = fake_mistral.received[-1]["messages"][-1]["content"]
    assert "[Contenu tronqué : le fichier rapport-nuit.txt est coupé" in sent
    assert len(fake_mistral.embedded) == 0
    assert await db.fetchval("SELECT count(*) FROM kb_chunks") == 0
    used = await db.fetchval("SELECT used_tokens FROM user_token_usage WHERE user_id = $1", user_id)
    assert used == body["tokens_used"] <= 2_500


async def test_without_an_answer_the_attachments_embedding_is_charged_and_the_rest_refunded(
    make_client, chat_settings, factory, db, fake_mistral
):
    client = await make_client(create_app(chat_settings.model_copy(update={"chat_files_max_chars": 1_500})))
    user_id = await factory.user()
    fake_mistral.failures = [500] * 50  # the model fails; the embeddings were made
    conversation = uuid.uuid4()
    status, _ = await ask(client, user_id, "Résume", conversation_id=conversation, files=report_file())
    assert status == 502
    chunks = [inputs for request in fake_mistral.embedded for inputs in request["input"]]
    spent = fake_embedding_tokens([chunk for chunk in chunks if chunk != "Résume"])
    assert spent > 0
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage WHERE user_id = $1", user_id) == spent
    row = await db.fetchrow("SELECT tokens, reason FROM unsaved_charges WHERE user_id = $1", user_id)
    assert (row["tokens"], row["reason"]) == (spent, "no_answer")
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 0


async def test_a_conversation_past_its_indexed_chunks_cap_is_a_413_before_any_embedding(
    make_client, chat_settings, factory, db, fake_mistral
):
    settings = chat_settings.model_copy(update={"chat_files_max_chars": 1_500, "kb_conversation_max_chunks": 6})
    client = await make_client(create_app(settings))
    user_id = await factory.user()
    conversation = uuid.uuid4()
    assert (await ask(client, user_id, "Résume", conversation_id=conversation, files=report_file()))[0] == 200
    assert await db.fetchval("SELECT count(*) FROM kb_chunks") == 6  # the report's chunks: the cap, reached
    embedded, used = len(fake_mistral.embedded), await db.fetchval("SELECT used_tokens FROM user_token_usage")
    status, body = await ask(client, user_id, "Et celui-ci ?", conversation_id=conversation, files=report_file())
    assert status == 413, body
    assert body == {
        "success": False,
        "error": "Cette conversation a déjà 6 passages de fichiers indexés, sa limite : démarrez une nouvelle"
        " conversation pour ce fichier.",
        "code": "KB_CONVERSATION_FULL",
    }
    assert len(fake_mistral.embedded) == embedded  # nothing embedded
    assert await db.fetchval("SELECT count(*) FROM kb_chunks") == 6
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage") == used  # nothing charged
    # A message without a file too long for the prompt goes on in that conversation.
    assert (await ask(client, user_id, "Merci", conversation_id=conversation))[0] == 200


async def test_a_user_past_their_indexed_chunks_cap_is_indexed_in_part_then_refused(
    make_client, chat_settings, factory, db, fake_mistral
):
    settings = chat_settings.model_copy(update={"chat_files_max_chars": 1_500, "kb_user_max_chunks": 8})
    client = await make_client(create_app(settings))
    user_id = await factory.user()
    assert (await ask(client, user_id, "Résume", files=report_file()))[0] == 200  # 6 chunks
    status, body = await ask(client, user_id, "Résume", files=report_file())  # room for 2 more
    assert status == 200, body
    assert await db.fetchval("SELECT count(*) FROM kb_chunks") == 8
    assert (
        "[Seuls les 1 600 premiers caractères environ ont été indexés.]"
        in (fake_mistral.received[-1]["messages"][-1]["content"])
    )
    status, body = await ask(client, user_id, "Résume", files=report_file())
    assert (status, body["code"]) == (429, "KB_USER_FULL"), body
    assert await db.fetchval("SELECT count(*) FROM kb_chunks") == 8
    # Another user is not concerned by this one's cap.
    other = await factory.user("autre")
    assert (await ask(client, other, "Résume", files=report_file()))[0] == 200
    assert await db.fetchval("SELECT count(*) FROM kb_chunks") == 14


async def test_the_sweeper_cuts_a_conversation_back_to_its_newest_attachments_within_the_cap(db, factory):
    """A conversation indexed before the cap existed (or above a lowered one) keeps its newest attachments."""
    from services.chat.knowledge.base import trim_conversations
    from tests.test_retrieval_isolation import add_document

    user_id = await factory.user()
    crowded, small = uuid.uuid4(), uuid.uuid4()
    oldest = await add_document(db, chunks=3, content="ancien", conversation_id=crowded, user_id=user_id)
    middle = await add_document(db, chunks=3, content="moyen", conversation_id=crowded, user_id=user_id)
    newest = await add_document(db, chunks=3, content="récent", conversation_id=crowded, user_id=user_id)
    other = await add_document(db, chunks=5, content="autre", conversation_id=small, user_id=user_id)
    site = await add_document(db, chunks=9, content="site")
    await db.execute(
        "UPDATE kb_documents SET created_at = created_at - make_interval(mins => $2) WHERE document_id = $1",
        oldest,
        10,
    )
    await db.execute(
        "UPDATE kb_documents SET created_at = created_at - make_interval(mins => $2) WHERE document_id = $1",
        middle,
        5,
    )
    assert await trim_conversations(db, max_chunks=6) == 3  # the connection answers fetch() as the pool does
    assert set(await db.fetchval("SELECT array_agg(document_id) FROM kb_documents")) == {middle, newest, other, site}
    assert await db.fetchval("SELECT count(*) FROM kb_chunks WHERE document_id = $1", oldest) == 0
    assert await trim_conversations(db, max_chunks=6) == 0  # within the cap now: nothing more
    assert await trim_conversations(db, max_chunks=0) == 0  # no cap
