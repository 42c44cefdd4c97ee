"""Per-user limits: kept in PostgreSQL, so two chat processes (here two apps with their own pools) and a
restart share them; over a limit, a 429 `RATE_LIMITED` envelope with Retry-After, distinct from QUOTA_EXCEEDED.

A limit is a rate with a burst (shared/ratelimit.py): a test's requests, sent within a second or two, meet the
burst; one more request is due only 60/limit seconds later (12 s at the smallest limit here)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
from prometheus_client import REGISTRY

from services.chat.app import create_app as chat_app
from services.conversations.app import create_app as conversations_app
from shared.errors import RateLimited
from shared.ratelimit import check_rate
from tests.conftest import bearer

CHAT = "/webhook/wibot/chat"
LIST = "/webhook/wibot/conversations"


def unique(name: str) -> str:
    """A username of its own for each test (each its own limit)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def test_chat_requests_per_minute_hold_across_two_chat_processes(
    make_client, chat_settings, factory, db, fake_mistral
):
    settings = chat_settings.model_copy(update={"chat_requests_per_minute": 5})
    first, second = await make_client(chat_app(settings)), await make_client(chat_app(settings))
    user_id, other = await factory.user(unique("busy")), await factory.user(unique("calm"))
    statuses, refused = [], []
    for i in range(8):
        client = (first, second)[i % 2]
        r = await client.post(
            CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id)
        )
        statuses.append(r.status)
        if r.status == 429:
            refused.append((await r.json(), int(r.headers["Retry-After"])))
    model_calls = len(fake_mistral.received)
    # Another user is not affected; a "restarted" process (a new app) still sees this user's limit.
    other_chat = await first.post(
        CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(other)
    )
    restarted = await make_client(chat_app(settings))
    after_restart = await restarted.post(
        CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id)
    )
    assert statuses == [200] * 5 + [429] * 3
    for body, retry_after in refused:
        assert body["code"] == "RATE_LIMITED" and body["success"] is False
        assert body["error"].startswith("Trop de messages : 5 par minute au maximum. Réessayez dans ")
        assert 1 <= retry_after <= 60
    assert model_calls == 5  # the refused ones cost no model call
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 0
    assert other_chat.status == 200
    assert after_restart.status == 429


async def test_concurrent_chats_cannot_slip_past_the_limit(make_client, chat_settings, factory):
    settings = chat_settings.model_copy(
        update={"chat_requests_per_minute": 3, "mistral_server_url": "http://127.0.0.1:9"}
    )
    clients = [await make_client(chat_app(settings)) for _ in range(2)]
    user_id = await factory.user(unique("limited"))
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


async def test_conversation_creations_per_minute(make_client, settings, factory, db):
    client = await make_client(conversations_app(settings.model_copy(update={"conversation_creations_per_minute": 3})))
    user_id = await factory.user(unique("limited"))
    statuses = [(await client.post(LIST, json={}, headers=bearer(user_id))).status for _ in range(5)]
    kept = await db.fetchval("SELECT count(*) FROM conversations WHERE user_id = $1", user_id)
    assert (statuses, kept) == ([200, 200, 200, 429, 429], 3)


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


async def test_past_the_limit_a_refusal_is_neither_counted_again_nor_read(make_client, chat_settings, factory, db):
    """A flood past the limit was a flood of statements and of bodies parsed: refused from the process's memory of
    the refusal, before the body is read, until the user's next request is due."""
    client = await make_client(chat_app(chat_settings.model_copy(update={"chat_requests_per_minute": 2})))
    user_id = await factory.user(unique("flood"))
    from_database, from_memory = refusals("database"), refusals("memory")
    statuses = []
    for _ in range(6):
        r = await client.post(
            CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id)
        )
        statuses.append(r.status)
    r = await client.post(CHAT, data=b"{pas du JSON", headers={**bearer(user_id), "Content-Type": "application/json"})
    assert statuses == [200, 200, 429, 429, 429, 429]
    assert (r.status, (await r.json())["code"]) == (429, "RATE_LIMITED")
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    # The first refusal was the database's; the four after it never reached it.
    assert (refusals("database") - from_database, refusals("memory") - from_memory) == (1, 4)


def refusals(seen_in: str) -> float:
    return REGISTRY.get_sample_value("wibot_rate_limited_total", {"action": "chat", "seen_in": seen_in}) or 0.0


async def test_a_burst_is_refused_and_the_rate_refills_one_request_at_a_time(make_client, chat_settings, factory, db):
    """30 a minute, 5 at once: the sixth message of a burst is refused with the wait until the next one is due
    (2 s), not until the end of a minute; a user cannot spend a minute's requests in one second."""
    settings = chat_settings.model_copy(update={"chat_requests_per_minute": 30, "chat_burst": 5})
    client = await make_client(chat_app(settings))
    user_id = await factory.user(unique("burst"))

    async def send() -> Any:
        return await client.post(
            CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id)
        )

    statuses = [(await send()).status for _ in range(5)]
    refused = await send()
    assert statuses == [200] * 5
    assert refused.status == 429
    body = await refused.json()
    assert body["error"].startswith("Trop de messages : 30 par minute au maximum (5 à la suite au plus).")
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    # The user's next request is due 2 s after the burst's fifth: moved back, as if that much time had passed.
    await db.execute(
        "UPDATE rate_limits SET due_at = due_at - interval '2 seconds' WHERE user_id = $1 AND action = 'chat'",
        user_id,
    )
    refused_memory_cleared = await make_client(chat_app(settings))  # a process that did not see the refusal
    r = await refused_memory_cleared.post(
        CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id)
    )
    assert r.status == 200
    r = await refused_memory_cleared.post(
        CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id)
    )
    assert r.status == 429  # one request refilled, not five


async def test_a_users_first_requests_at_once_get_exactly_their_burst(database_url, factory):
    """Ten requests at once, the user's first (no row yet: all but one meet the insert of another): a burst of 1
    admits one, refuses nine with a wait, none fails."""
    user_id = await factory.user(unique("first"))
    pool = await asyncpg.create_pool(database_url, min_size=10, max_size=10)

    async def hit() -> str:
        try:
            await check_rate(pool, user_id=user_id, action="chat", per_minute=60, burst=1)
        except RateLimited as refused:
            assert refused.retry_after_s >= 1
            return "refused"
        return "admitted"

    try:
        outcomes = await asyncio.gather(*(hit() for _ in range(10)))
    finally:
        await pool.close()
    assert sorted(outcomes) == ["admitted"] + ["refused"] * 9
