"""Per-user limits: counted in PostgreSQL, so two chat processes (here two apps with their own pools) and a
restart share them; over a limit, a 429 `RATE_LIMITED` envelope with Retry-After, distinct from QUOTA_EXCEEDED.

The windows are whole minutes of the database's clock: a test that must not straddle two of them starts at the
beginning of a minute when too close to its end.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.chat.app import create_app as chat_app
from services.conversations.app import create_app as conversations_app
from tests.conftest import bearer

CHAT = "/webhook/wibot/chat"
LIST = "/webhook/wibot/conversations"


@pytest.fixture
async def same_minute(db):
    """Enough of the current minute left for a short test (waits for the next minute otherwise)."""
    second = await db.fetchval("SELECT extract(second FROM NOW() AT TIME ZONE 'UTC')")
    if second > 45:
        await asyncio.sleep(61 - float(second))


async def test_chat_requests_per_minute_hold_across_two_chat_processes(
    make_client, chat_settings, factory, db, fake_mistral, same_minute
):
    settings = chat_settings.model_copy(update={"chat_requests_per_minute": 5})
    first, second = await make_client(chat_app(settings)), await make_client(chat_app(settings))
    user_id, other = await factory.user("busy"), await factory.user("calm")
    statuses, refused = [], []
    for i in range(8):
        client = (first, second)[i % 2]
        r = await client.post(
            CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id)
        )
        statuses.append(r.status)
        if r.status == 429:
            refused.append((await r.json(), int(r.headers["Retry-After"])))
    assert statuses == [200] * 5 + [429] * 3
    for body, retry_after in refused:
        assert body["code"] == "RATE_LIMITED" and body["success"] is False
        assert body["error"].startswith("Trop de messages : 5 par minute au maximum. Réessayez dans ")
        assert 1 <= retry_after <= 60
    assert len(fake_mistral.received) == 5  # the refused ones cost no model call
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 0
    # Another user is not affected; a "restarted" process (a new app) still counts this minute's hits.
    r = await first.post(CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(other))
    assert r.status == 200
    restarted = await make_client(chat_app(settings))
    r = await restarted.post(CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id))
    assert r.status == 429


async def test_concurrent_chats_cannot_slip_past_the_limit(make_client, chat_settings, factory, db, same_minute):
    settings = chat_settings.model_copy(
        update={"chat_requests_per_minute": 3, "mistral_server_url": "http://127.0.0.1:9"}
    )
    clients = [await make_client(chat_app(settings)) for _ in range(2)]
    user_id = await factory.user()
    results = await asyncio.gather(
        *(
            clients[i % 2].post(
                CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id)
            )
            for i in range(20)
        )
    )
    # The model is unreachable (503 after the limit check): only the limit decides who gets past it.
    assert sorted(r.status for r in results) == [429] * 17 + [503] * 3


async def test_conversation_creations_per_minute(make_client, settings, factory, db, same_minute):
    client = await make_client(conversations_app(settings.model_copy(update={"conversation_creations_per_minute": 3})))
    user_id = await factory.user()
    statuses = [(await client.post(LIST, json={}, headers=bearer(user_id))).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert await db.fetchval("SELECT count(*) FROM conversations") == 3


async def test_a_user_cannot_keep_more_conversations_than_the_cap(
    make_client, chat_settings, factory, db, fake_mistral
):
    settings = chat_settings.model_copy(update={"max_conversations_per_user": 2})
    conversations, chat = await make_client(conversations_app(settings)), await make_client(chat_app(settings))
    user_id = await factory.user()
    kept = [uuid.uuid4(), uuid.uuid4()]
    for cid in kept:
        assert (
            await conversations.post(LIST, json={"conversation_id": str(cid)}, headers=bearer(user_id))
        ).status == 200
    r = await conversations.post(LIST, json={}, headers=bearer(user_id))
    assert r.status == 409
    assert await r.json() == {
        "success": False,
        "error": "Nombre maximal de conversations atteint (2) : supprimez-en avant d'en créer",
        "code": "CONVERSATION_LIMIT",
    }
    # Re-creating one of yours is still idempotent, and chatting in it still works...
    assert (
        await conversations.post(LIST, json={"conversation_id": str(kept[0])}, headers=bearer(user_id))
    ).status == 200
    r = await chat.post(CHAT, json={"conversation_id": str(kept[0]), "message": "x"}, headers=bearer(user_id))
    assert r.status == 200, await r.text()
    # ...but a chat that would open a third one is refused before any model call.
    calls = len(fake_mistral.received)
    r = await chat.post(CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id))
    assert (r.status, (await r.json())["code"]) == (409, "CONVERSATION_LIMIT")
    assert len(fake_mistral.received) == calls
    assert await db.fetchval("SELECT count(*) FROM conversations") == 2


async def test_a_user_already_past_a_lowered_cap_opens_no_more(make_client, chat_settings, factory, db, fake_mistral):
    """An admin lowered the cap below what the user keeps: 3 conversations against a cap of 2 is past it too."""
    chat = await make_client(chat_app(chat_settings.model_copy(update={"max_conversations_per_user": 2})))
    user_id = await factory.user()
    for _ in range(3):
        await factory.conversation(user_id)
    r = await chat.post(CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id))
    assert (r.status, (await r.json())["code"]) == (409, "CONVERSATION_LIMIT")
    assert len(fake_mistral.received) == 0
