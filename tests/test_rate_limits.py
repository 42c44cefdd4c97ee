"""Per-user limits: counted in PostgreSQL, so two chat processes (here two apps with their own pools) and a
restart share them; over a limit, a 429 `RATE_LIMITED` envelope with Retry-After, distinct from QUOTA_EXCEEDED.

The windows are whole minutes of the database's clock. A test whose counts must fall in one window runs its
requests as an attempt that returns what it saw; an attempt that crossed a minute is run again with new users
(two in a row cannot both cross one: a test is cut at 60 s), and the assertions look at the attempt that did not.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from services.chat.app import create_app as chat_app
from services.conversations.app import create_app as conversations_app
from tests.conftest import bearer

CHAT = "/webhook/wibot/chat"
LIST = "/webhook/wibot/conversations"
MINUTE_SQL = "SELECT date_trunc('minute', NOW() AT TIME ZONE 'UTC')"


async def in_one_minute(db: Any, attempt: Callable[[], Awaitable[Any]]) -> Any:
    """What `attempt` returned the first time it started and ended in the same minute of the database's clock."""
    for _ in range(2):
        started = await db.fetchval(MINUTE_SQL)
        seen = await attempt()
        if await db.fetchval(MINUTE_SQL) == started:
            return seen
    raise AssertionError("two attempts in a row crossed a minute")


def unique(name: str) -> str:
    """A username of its own for each attempt (an attempt run again must not count the first one's hits)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


class FakeClock:
    """Answers MINUTE_SQL with the minutes given, one per read (a real crossing would cost a minute of waiting)."""

    def __init__(self, *minutes: str) -> None:
        self.minutes = iter(minutes)

    async def fetchval(self, sql: str) -> str:
        assert sql == MINUTE_SQL
        return next(self.minutes)


async def test_an_attempt_that_crossed_a_minute_is_run_again_and_two_crossings_fail():
    runs: list[int] = []

    async def attempt() -> int:
        runs.append(len(runs) + 1)
        return runs[-1]

    assert await in_one_minute(FakeClock("09:00", "09:00"), attempt) == 1
    runs.clear()
    assert await in_one_minute(FakeClock("09:00", "09:01", "09:01", "09:01"), attempt) == 2
    runs.clear()
    try:
        await in_one_minute(FakeClock("09:00", "09:01", "09:01", "09:02"), attempt)
    except AssertionError as error:
        assert str(error) == "two attempts in a row crossed a minute" and runs == [1, 2]
    else:
        raise AssertionError("two crossings in a row must fail the test")


async def test_chat_requests_per_minute_hold_across_two_chat_processes(
    make_client, chat_settings, factory, db, fake_mistral
):
    settings = chat_settings.model_copy(update={"chat_requests_per_minute": 5})
    first, second = await make_client(chat_app(settings)), await make_client(chat_app(settings))

    async def attempt():
        user_id, other = await factory.user(unique("busy")), await factory.user(unique("calm"))
        calls_before = len(fake_mistral.received)
        statuses, refused = [], []
        for i in range(8):
            client = (first, second)[i % 2]
            r = await client.post(
                CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id)
            )
            statuses.append(r.status)
            if r.status == 429:
                refused.append((await r.json(), int(r.headers["Retry-After"])))
        model_calls = len(fake_mistral.received) - calls_before
        # Another user is not affected; a "restarted" process (a new app) still counts this minute's hits.
        r = await first.post(CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(other))
        other_status = r.status
        restarted = await make_client(chat_app(settings))
        r = await restarted.post(
            CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id)
        )
        return statuses, refused, model_calls, other_status, r.status

    statuses, refused, model_calls, other_status, after_restart = await in_one_minute(db, attempt)
    assert statuses == [200] * 5 + [429] * 3
    for body, retry_after in refused:
        assert body["code"] == "RATE_LIMITED" and body["success"] is False
        assert body["error"].startswith("Trop de messages : 5 par minute au maximum. Réessayez dans ")
        assert 1 <= retry_after <= 60
    assert model_calls == 5  # the refused ones cost no model call
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 0
    assert other_status == 200
    assert after_restart == 429


async def test_concurrent_chats_cannot_slip_past_the_limit(make_client, chat_settings, factory, db):
    settings = chat_settings.model_copy(
        update={"chat_requests_per_minute": 3, "mistral_server_url": "http://127.0.0.1:9"}
    )
    clients = [await make_client(chat_app(settings)) for _ in range(2)]

    async def attempt():
        user_id = await factory.user(unique("limited"))
        results = await asyncio.gather(
            *(
                clients[i % 2].post(
                    CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id)
                )
                for i in range(20)
            )
        )
        return sorted(r.status for r in results)

    # The model is unreachable (503 after the limit check): only the limit decides who gets past it.
    assert await in_one_minute(db, attempt) == [429] * 17 + [503] * 3


async def test_conversation_creations_per_minute(make_client, settings, factory, db):
    client = await make_client(conversations_app(settings.model_copy(update={"conversation_creations_per_minute": 3})))

    async def attempt():
        user_id = await factory.user(unique("limited"))
        statuses = [(await client.post(LIST, json={}, headers=bearer(user_id))).status for _ in range(5)]
        kept = await db.fetchval("SELECT count(*) FROM conversations WHERE user_id = $1", user_id)
        return statuses, kept

    assert await in_one_minute(db, attempt) == ([200, 200, 200, 429, 429], 3)


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
    """A flood past the limit was a flood of UPDATEs and of bodies parsed: refused from the process's memory of the
    full window, before the body is read."""
    client = await make_client(chat_app(chat_settings.model_copy(update={"chat_requests_per_minute": 2})))

    async def attempt():
        user_id = await factory.user(unique("flood"))
        statuses = []
        for _ in range(6):
            r = await client.post(
                CHAT, json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id)
            )
            statuses.append(r.status)
        r = await client.post(
            CHAT, data=b"{pas du JSON", headers={**bearer(user_id), "Content-Type": "application/json"}
        )
        hits = await db.fetchval(
            "SELECT sum(hits) FROM rate_limit_windows WHERE user_id = $1 AND action = 'chat'", user_id
        )
        return statuses, r.status, (await r.json())["code"], int(r.headers["Retry-After"]), hits

    # Well within a minute: the last refusals must not fall in the few milliseconds between the process's clock
    # and the database's at the window's end (where they are counted, which is right, but not what is shown here).
    while await db.fetchval("SELECT extract(second FROM NOW())") > 45:
        await asyncio.sleep(0.5)
    statuses, status, code, retry_after, hits = await in_one_minute(db, attempt)
    assert statuses == [200, 200, 429, 429, 429, 429]
    assert (status, code) == (429, "RATE_LIMITED") and 1 <= retry_after <= 60
    assert hits == 3  # the two admitted and the first refusal; the four after it never reached the database
