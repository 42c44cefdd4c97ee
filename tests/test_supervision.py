"""GET /webhook/wibot/analytics (the newer frontend's Supervision page): admin only, its exact shape (a missing
key or a null blanks the page), and every figure computed by PostgreSQL from rows the test wrote itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.auth.admin.analytics import compute_stats
from services.auth.app import create_app as auth_app
from shared import create_pool
from tests.conftest import bearer, token_for

ANALYTICS = "/webhook/wibot/analytics"
# A fixed clock for exact figures: Wednesday 2026-03-18 10:30 UTC.
NOW = datetime(2026, 3, 18, 10, 30, tzinfo=UTC)


@pytest.fixture
async def client(make_client, settings):
    return await make_client(auth_app(settings))


@pytest.fixture
async def admin_id(factory):
    return await factory.user("khora", "test123", role="admin")


async def add_message(db, conversation_id, user_id, role, *, at, mode="flash", tokens=0, files=0, rag=False):
    await db.execute(
        "INSERT INTO messages (conversation_id, user_id, role, content, tokens, created_at, mode, files_count,"
        " rag_used) VALUES ($1, $2, $3, 'x', $4, $5, $6, $7, $8)",
        conversation_id,
        user_id,
        role,
        tokens,
        at.replace(tzinfo=None),
        mode,
        files,
        rag,
    )


@pytest.fixture
async def history(db, factory, admin_id):
    """Two users, three conversations, exchanges spread over 40 days before NOW."""
    bob = await factory.user("bob")
    await factory.user("gone", is_active=False)
    await db.execute(
        "INSERT INTO user_token_usage (user_id, month, used_tokens, quota_tokens) VALUES"
        " ($1, '2026-03-01', 1000, 50000), ($2, '2026-03-01', 3000, 10000), ($1, '2026-02-01', 99999, 1)",
        admin_id,
        bob,
    )
    recent = await factory.conversation(bob, updated_at="2026-03-18T09:00:00Z")
    week = await factory.conversation(admin_id, updated_at="2026-03-12T08:00:00Z")
    old = await factory.conversation(bob, updated_at="2026-02-01T08:00:00Z")
    exchanges = [  # (conversation, user, when, mode, files, rag, answer tokens)
        (recent, bob, NOW - timedelta(minutes=30), "code", 2, False, 100),  # today
        (recent, bob, NOW - timedelta(hours=10), "flash", 0, True, 50),  # today, 00:30
        (recent, bob, NOW - timedelta(hours=11), "redaction", 1, False, 70),  # yesterday 23:30
        (week, admin_id, NOW - timedelta(days=6, hours=10), None, 0, False, 40),  # 03-12 00:30, in 7d
        (week, admin_id, NOW - timedelta(days=7, hours=1), "code", 0, False, 30),  # 03-11 09:30, not in 7d
        (old, bob, NOW - timedelta(days=40), "code", 3, True, 500),  # in no period
    ]
    for conversation, user, at, mode, files, rag, tokens in exchanges:
        await add_message(db, conversation, user, "user", at=at, mode=mode, files=files, rag=rag, tokens=5)
        await add_message(db, conversation, user, "assistant", at=at + timedelta(seconds=3), mode=mode, tokens=tokens)
    return bob


async def stats(settings, period):
    pool = await create_pool(settings, application_name="test")
    try:
        return (await compute_stats(pool, period=period, default_quota=50_000, now=NOW)).model_dump()
    finally:
        await pool.close()


async def test_figures_of_the_last_24_hours(settings, history):
    figures = await stats(settings, "24h")
    # Questions since 03-17 10:30: three (today 10:00 and 00:30, yesterday 23:30).
    assert figures["messages"] == {
        "total": 3,
        "today": 2,
        "byDay": [
            {"date": "2026-03-17", "count": 1, "tokens": 75},
            {"date": "2026-03-18", "count": 2, "tokens": 160},
        ],
    }
    assert figures["modes"] == {"flash": 1, "code": 1, "redaction": 1}
    assert figures["files"] == {"total": 3, "messagesWithFiles": 2}
    assert figures["rag"] == {"queries": 1}
    assert figures["conversations"] == {"total": 3, "active": 1}


async def test_figures_of_the_last_7_days_zero_fill_every_day(settings, history):
    figures = await stats(settings, "7d")
    by_day = figures["messages"]["byDay"]
    assert [d["date"] for d in by_day] == [f"2026-03-{day}" for day in range(11, 19)]  # 8 days touched
    assert {d["date"]: d["count"] for d in by_day if d["count"]} == {
        "2026-03-12": 1,
        "2026-03-17": 1,
        "2026-03-18": 2,
    }
    assert by_day[0] == {"date": "2026-03-11", "count": 0, "tokens": 0}  # 03-11 09:30 is before the period
    assert sum(d["count"] for d in by_day) == figures["messages"]["total"] == 4
    assert figures["modes"] == {"flash": 2, "code": 1, "redaction": 1}  # a NULL mode counts as flash
    assert figures["conversations"] == {"total": 3, "active": 2}


async def test_figures_of_the_last_30_days_and_this_months_tokens(settings, history):
    figures = await stats(settings, "30d")
    assert len(figures["messages"]["byDay"]) == 31
    assert figures["messages"]["total"] == 5
    # This month only (February's row left out); the inactive user without usage is not counted, the active
    # admin and bob are; quotas are theirs (no default needed).
    assert figures["tokens"] == {"used": 4000, "quota": 60000, "percentage": 6.7}
    assert figures["users"] == {"total": 2, "directory": 0}


async def test_users_without_a_row_this_month_count_with_the_default_quota(settings, db, factory):
    await factory.user("a")
    await factory.user("b")
    figures = await stats(settings, "7d")
    assert figures["tokens"] == {"used": 0, "quota": 100_000, "percentage": 0.0}


async def test_an_empty_database_answers_zeros_not_nulls(settings, db):
    figures = await stats(settings, "24h")
    assert figures["tokens"] == {"used": 0, "quota": 0, "percentage": 0.0}
    assert figures["messages"]["byDay"] == [
        {"date": "2026-03-17", "count": 0, "tokens": 0},
        {"date": "2026-03-18", "count": 0, "tokens": 0},
    ]


def numbers_only(value, path="stats"):
    """Every leaf is a number (the page does arithmetic on them) and nothing is null."""
    if isinstance(value, dict):
        for key, item in value.items():
            numbers_only(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            numbers_only(item, f"{path}[{index}]")
    else:
        assert isinstance(value, int | float) and not isinstance(value, bool), f"{path} = {value!r}"


@pytest.mark.parametrize(("period", "days"), [("24h", 2), ("7d", 8), ("30d", 31), (None, 8)])
async def test_the_route_answers_the_pages_exact_shape(client, admin_id, history, period, days):
    query = f"?period={period}" if period else ""
    r = await client.get(ANALYTICS + query, headers=bearer(admin_id, role="admin"))
    assert r.status == 200, await r.text()
    body = await r.json()
    assert set(body) == {"success", "period", "stats"}
    assert body["success"] is True and body["period"] == (period or "7d")
    stats_ = body["stats"]
    assert {key: set(value) for key, value in stats_.items()} == {
        "tokens": {"used", "quota", "percentage"},
        "messages": {"total", "today", "byDay"},
        "modes": {"flash", "code", "redaction"},
        "conversations": {"total", "active"},
        "users": {"total", "directory"},
        "files": {"total", "messagesWithFiles"},
        "rag": {"queries"},
    }
    by_day = stats_["messages"]["byDay"]
    assert len(by_day) == days
    assert all(set(day) == {"date", "count", "tokens"} for day in by_day)
    assert by_day[-1]["date"] == datetime.now(UTC).strftime("%Y-%m-%d")  # today last (oldest first)
    dates = [day.pop("date") for day in by_day]
    assert all(isinstance(date, str) and len(date) == 10 for date in dates)
    numbers_only(stats_)


@pytest.mark.parametrize("period", ["1y", "7D", "", "24h;DROP TABLE users"])
async def test_an_unknown_period_is_a_400_envelope(client, admin_id, period):
    r = await client.get(ANALYTICS, params={"period": period}, headers=bearer(admin_id, role="admin"))
    assert r.status == 400, await r.text()
    body = await r.json()
    assert body["success"] is False and body["code"] == "VALIDATION_ERROR"


async def test_admins_only(client, factory, admin_id):
    user = await factory.user("bob")
    r = await client.get(ANALYTICS)
    assert r.status == 401
    assert (await r.json())["code"] == "INVALID_TOKEN"
    r = await client.get(ANALYTICS, headers=bearer(user))
    assert r.status == 403
    assert await r.json() == {"success": False, "error": "Accès réservé aux administrateurs", "code": "FORBIDDEN"}
    # A token claiming admin for a user who is not one is refused too: the role comes from the database.
    r = await client.get(ANALYTICS, headers={"Authorization": f"Bearer {token_for(user, 'bob', 'admin')}"})
    assert r.status == 403
