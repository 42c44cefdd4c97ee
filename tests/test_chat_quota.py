"""The monthly quota: 429 contract, defaults, reservation under concurrency, capped replies, settlement."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from services.chat.app import create_app
from tests.conftest import bearer

CHAT = "/webhook/wibot/chat"
CID = "550e8400-e29b-41d4-a716-446655440000"


@pytest.fixture
async def user_id(factory):
    return await factory.user("khora")


async def usage(db) -> tuple[int, int]:
    row = await db.fetchrow("SELECT used_tokens, quota_tokens FROM user_token_usage")
    return row["used_tokens"], row["quota_tokens"]


async def chat(client, user_id, cid=CID, message="x"):
    return await client.post(CHAT, json={"conversation_id": str(cid), "message": message}, headers=bearer(user_id))


async def measure_reservation(client, user_id, db, fake_mistral) -> int:
    """What one chat with message 'x' on a new conversation holds while the model works (read from the DB)."""
    fake_mistral.hold = asyncio.Event()
    before = await db.fetchval("SELECT coalesce(sum(used_tokens), 0) FROM user_token_usage")
    task = asyncio.ensure_future(chat(client, user_id, uuid.uuid4()))
    await fake_mistral.wait_for_requests(1)
    held = await db.fetchval("SELECT sum(used_tokens) FROM user_token_usage") - before
    fake_mistral.hold.set()
    r = await task
    assert r.status == 200, await r.text()
    fake_mistral.hold = None
    fake_mistral.received.clear()
    return held


async def test_spec_test_8_quota_exceeded(make_client, chat_settings, user_id, factory, db, fake_mistral):
    client = await make_client(create_app(chat_settings))
    await factory.usage(user_id, used=51_000)
    r = await chat(client, user_id)
    assert r.status == 429, await r.text()
    assert await r.json() == {
        "success": False,
        "error": "Quota tokens mensuel dépassé. Limite : 50,000 tokens/mois.",
        "code": "QUOTA_EXCEEDED",
    }
    assert len(fake_mistral.received) == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await usage(db) == (51_000, 50_000)


async def test_the_message_quotes_the_users_own_limit(make_client, chat_settings, user_id, factory):
    client = await make_client(create_app(chat_settings))
    await factory.usage(user_id, used=1_250_000, quota=1_250_000)
    r = await chat(client, user_id)
    assert r.status == 429, await r.text()
    assert (await r.json())["error"] == "Quota tokens mensuel dépassé. Limite : 1,250,000 tokens/mois."


async def test_first_use_of_the_month_creates_the_row_with_the_default_quota(make_client, chat_settings, user_id, db):
    client = await make_client(create_app(chat_settings.model_copy(update={"default_quota_tokens": 7_000})))
    r = await chat(client, user_id)
    assert r.status == 200, await r.text()
    body = await r.json()
    assert await usage(db) == (body["tokens_used"], 7_000)
    assert body["tokens_remaining"] == 7_000 - body["tokens_used"]
    month = await db.fetchval(
        "SELECT month = DATE_TRUNC('month', NOW() AT TIME ZONE 'UTC')::date FROM user_token_usage"
    )
    assert month is True


async def test_fifty_concurrent_chats_with_room_for_five(
    make_client, chat_settings, user_id, factory, db, fake_mistral
):
    client = await make_client(create_app(chat_settings.model_copy(update={"mistral_max_tokens": 100})))
    reservation = await measure_reservation(client, user_id, db, fake_mistral)
    quota = 50_000
    await factory.usage(user_id, used=quota - 5 * reservation, quota=quota)

    fake_mistral.hold = asyncio.Event()  # nobody settles (and frees room) until every request was decided
    tasks = [asyncio.ensure_future(chat(client, user_id, uuid.uuid4())) for _ in range(50)]
    for _ in range(1000):
        if sum(t.done() for t in tasks) >= 45:
            break
        await asyncio.sleep(0.01)
    fake_mistral.hold.set()
    statuses = sorted([r.status for r in await asyncio.gather(*tasks)])
    assert statuses == [200] * 5 + [429] * 45
    assert len(fake_mistral.received) == 5
    used, quota_after = await usage(db)
    assert used <= quota_after == quota
    assert await db.fetchval("SELECT count(*) FROM messages") == 2 + 10  # the probe, then five exchanges


async def test_reply_budget_is_capped_to_what_remains(make_client, chat_settings, user_id, factory, db, fake_mistral):
    client = await make_client(create_app(chat_settings))
    reservation = await measure_reservation(client, user_id, db, fake_mistral)
    prompt_estimate = reservation - 2000  # with room to spare the full max_tokens (2000) is reserved
    await factory.usage(user_id, used=50_000 - prompt_estimate - 50)
    r = await chat(client, user_id, uuid.uuid4())
    assert r.status == 200, await r.text()
    assert fake_mistral.received[-1]["max_tokens"] == 50


async def test_too_little_room_for_a_reply_is_a_429(make_client, chat_settings, user_id, factory, db, fake_mistral):
    client = await make_client(create_app(chat_settings))
    reservation = await measure_reservation(client, user_id, db, fake_mistral)
    await factory.usage(user_id, used=50_000 - (reservation - 2000) - 5)
    r = await chat(client, user_id, uuid.uuid4())
    assert r.status == 429, await r.text()
    assert len(fake_mistral.received) == 0


async def test_usage_beyond_the_reservation_never_pushes_past_the_quota(
    make_client, chat_settings, user_id, factory, db, fake_mistral
):
    client = await make_client(create_app(chat_settings))
    await factory.usage(user_id, used=45_000)
    fake_mistral.total_tokens = 1_000_000  # a server that reports far more than was reserved
    r = await chat(client, user_id)
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["tokens_used"] == 1_000_000 and body["tokens_remaining"] == 0
    assert await usage(db) == (50_000, 50_000)


async def test_no_database_connection_is_held_during_the_model_call(make_client, chat_settings, factory, fake_mistral):
    # A pool of ONE connection: if the first chat kept it while the model works, the second could not even
    # load its memory and would never reach the model.
    client = await make_client(create_app(chat_settings.model_copy(update={"db_pool_min": 1, "db_pool_max": 1})))
    first, second = await factory.user("a"), await factory.user("b")
    fake_mistral.hold = asyncio.Event()
    tasks = [
        asyncio.ensure_future(chat(client, first, uuid.uuid4())),
        asyncio.ensure_future(chat(client, second, uuid.uuid4())),
    ]
    for _ in range(500):
        if len(fake_mistral.received) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(fake_mistral.received) == 2
    fake_mistral.hold.set()
    assert [r.status for r in await asyncio.gather(*tasks)] == [200, 200]


async def test_stale_reservations_of_dead_requests_are_refunded(make_client, chat_settings, factory, db):
    from services.chat.quota import sweep_stale_reservations
    from shared import create_pool

    alive, dead = await factory.user("alive"), await factory.user("dead")
    await factory.usage(alive, used=1_000)
    await factory.usage(dead, used=3_500)
    # A process died mid-chat 10 minutes ago holding 2,500 tokens of `dead`; `alive` holds 700 right now.
    await db.execute(
        "INSERT INTO token_reservations (reservation_id, user_id, month, tokens, created_at) VALUES"
        " (gen_random_uuid(), $1, DATE_TRUNC('month', NOW() AT TIME ZONE 'UTC')::date, 2500,"
        "  NOW() AT TIME ZONE 'UTC' - INTERVAL '10 minutes'),"
        " (gen_random_uuid(), $2, DATE_TRUNC('month', NOW() AT TIME ZONE 'UTC')::date, 700, NOW() AT TIME ZONE 'UTC')",
        dead,
        alive,
    )
    pool = await create_pool(chat_settings, application_name="test-sweeper")
    try:
        assert await sweep_stale_reservations(pool, older_than_s=300) == 2500
        assert await sweep_stale_reservations(pool, older_than_s=300) == 0  # once only
    finally:
        await pool.close()
    used = dict(await db.fetch("SELECT user_id, used_tokens FROM user_token_usage"))
    assert used == {alive: 1_000, dead: 1_000}
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 1


async def test_a_refund_happens_once_even_if_asked_twice(make_client, chat_settings, factory, db, fake_mistral):
    import asyncio

    from services.chat import quota
    from shared import create_pool
    from shared.background import Background

    later = Background()

    user_id = await factory.user()
    # Usage that is not zero: a refund of twice the reservation (or one that floors at 0) shows.
    await factory.usage(user_id, used=1000)
    pool = await create_pool(chat_settings, application_name="test-refund")
    try:
        reservation = await quota.reserve_quota(
            pool,
            later,
            user_id=user_id,
            month=(await db.fetchval("SELECT DATE_TRUNC('month', NOW() AT TIME ZONE 'UTC')::date")),
            prompt_tokens=100,
            max_tokens=400,
            default_quota=50_000,
        )
        assert await db.fetchval("SELECT used_tokens FROM user_token_usage") == 1500
        await asyncio.gather(quota.refund(pool, later, reservation), quota.refund(pool, later, reservation))
        assert await db.fetchval("SELECT used_tokens FROM user_token_usage") == 1000
        await quota.refund(pool, later, reservation)  # once more, later: still nothing
    finally:
        await pool.close()
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage") == 1000
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 0


async def test_a_model_failure_gives_back_exactly_the_reservation(
    make_client, chat_settings, factory, db, fake_mistral
):
    client = await make_client(create_app(chat_settings))
    user_id = await factory.user()
    await factory.usage(user_id, used=12_345)
    fake_mistral.failures = [400]
    r = await chat(client, user_id, uuid.uuid4())
    assert r.status == 502, await r.text()
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage") == 12_345


async def test_a_first_use_race_lost_is_retried_not_refused(make_client, chat_settings, factory, db, fake_mistral):
    """Two first chats of the month: the loser's snapshot saw no usage row and its insert met the winner's.

    Made deterministic: another transaction holds an uncommitted first-use row, our chat's insert waits on it,
    then that transaction commits; the chat must read again and go on, not answer 429.
    """
    client = await make_client(create_app(chat_settings))
    user_id = await factory.user()
    month = await db.fetchval("SELECT DATE_TRUNC('month', NOW() AT TIME ZONE 'UTC')::date")
    winner = db
    transaction = winner.transaction()
    await transaction.start()
    await winner.execute(
        "INSERT INTO user_token_usage (user_id, month, used_tokens, quota_tokens) VALUES ($1, $2, 0, 50000)",
        user_id,
        month,
    )
    pending = asyncio.ensure_future(chat(client, user_id, uuid.uuid4()))
    observer = await asyncpg.connect(chat_settings.dsn)
    try:
        async with asyncio.timeout(10):  # until the chat's insert waits on our uncommitted row
            while not await observer.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND application_name = 'wibot-chat'"
            ):
                await asyncio.sleep(0.01)
    finally:
        await observer.close()
    await transaction.commit()
    r = await pending
    assert r.status == 200, await r.text()
    assert await db.fetchval("SELECT count(*) FROM user_token_usage") == 1
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage") == (await r.json())["tokens_used"]


async def test_the_chat_service_sweeps_reservations_of_dead_processes_by_itself(
    make_client, chat_settings, factory, db
):
    """The sweeper as the running app schedules it (not called by the test)."""
    settings = chat_settings.model_copy(update={"reservation_sweep_every_s": 0.05, "reservation_stale_after_s": 60})
    dead = await factory.user("dead")
    await factory.usage(dead, used=4_000)
    await db.execute(
        "INSERT INTO token_reservations (reservation_id, user_id, month, tokens, created_at) VALUES"
        " (gen_random_uuid(), $1, DATE_TRUNC('month', NOW() AT TIME ZONE 'UTC')::date, 2500,"
        "  NOW() AT TIME ZONE 'UTC' - INTERVAL '10 minutes')",
        dead,
    )
    await make_client(create_app(settings))
    async with asyncio.timeout(10):
        while await db.fetchval("SELECT count(*) FROM token_reservations"):
            await asyncio.sleep(0.02)
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage") == 1_500


async def test_an_exchange_whose_reservation_was_swept_is_still_charged_once(
    make_client, chat_settings, user_id, factory, db, fake_mistral
):
    """A very slow model: the sweeper gave the reservation back meanwhile; the save charges the real usage."""
    from services.chat.quota import sweep_stale_reservations
    from shared import create_pool

    client = await make_client(create_app(chat_settings))
    await factory.usage(user_id, used=1_000)
    fake_mistral.hold = asyncio.Event()
    fake_mistral.total_tokens = 300
    pending = asyncio.ensure_future(chat(client, user_id, uuid.uuid4()))
    await fake_mistral.wait_for_requests(1)
    pool = await create_pool(chat_settings, application_name="test-sweeper")
    try:
        assert await sweep_stale_reservations(pool, older_than_s=0) > 0
    finally:
        await pool.close()
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage") == 1_000  # refunded by the sweep
    fake_mistral.hold.set()
    r = await pending
    assert r.status == 200, await r.text()
    assert (await r.json())["tokens_used"] == 300
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage") == 1_300
    assert await db.fetchval("SELECT count(*) FROM messages") == 2
