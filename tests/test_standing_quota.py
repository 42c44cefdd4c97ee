"""Standing quotas: a user's own monthly quota that every new month starts from (NULL: DEFAULT_QUOTA_TOKENS),
beside the per-month override; the admin API and the usage endpoint say which applies."""

from __future__ import annotations

import uuid
from datetime import date

import pytest

from services.auth.app import create_app as auth_app
from services.chat.app import create_app as chat_app
from services.conversations.app import create_app as conversations_app
from shared import current_month
from tests.conftest import bearer

ADMIN = "/webhook/wibot/admin/users"
TOKENS = "/webhook/wibot/user/tokens"


@pytest.fixture
async def admin(make_client, settings):
    return await make_client(auth_app(settings))


@pytest.fixture
async def usage(make_client, settings):
    return await make_client(conversations_app(settings))


@pytest.fixture
async def people(factory):
    return await factory.user("khora", role="admin"), await factory.user("lea")


async def put(admin, admin_id, **fields):
    r = await admin.put(ADMIN, json=fields, headers=bearer(admin_id, role="admin"))
    assert r.status == 200, await r.text()
    return (await r.json())["user"]


async def tokens(usage, user_id):
    r = await usage.get(TOKENS, headers=bearer(user_id, "lea"))
    body = await r.json()
    return body["quota_tokens"], body["quota_source"]


async def test_a_standing_quota_applies_to_months_that_start_and_says_so(admin, usage, people, db):
    admin_id, lea = people
    assert await tokens(usage, lea) == (50_000, "default")
    user = await put(admin, admin_id, user_id=lea, standing_quota_tokens=120_000)
    assert (user["standing_quota_tokens"], user["quota_tokens"], user["quota_source"]) == (120_000, 120_000, "standing")
    assert await db.fetchval("SELECT standing_quota_tokens FROM users WHERE user_id = $1", lea) == 120_000
    assert await tokens(usage, lea) == (120_000, "standing")

    # A month raised on its own: the override applies this month, and is named as such.
    user = await put(admin, admin_id, user_id=lea, quota_tokens=200_000)
    assert (user["quota_tokens"], user["quota_source"], user["standing_quota_tokens"]) == (200_000, "month", 120_000)
    assert await tokens(usage, lea) == (200_000, "month")

    # Back to the default for the months to come.
    user = await put(admin, admin_id, user_id=lea, standing_quota_tokens="default")
    assert user["standing_quota_tokens"] is None
    assert await db.fetchval("SELECT standing_quota_tokens FROM users WHERE user_id = $1", lea) is None


async def test_the_first_chat_of_a_month_starts_from_the_standing_quota(
    make_client, chat_settings, people, db, fake_mistral
):
    _, lea = people
    await db.execute("UPDATE users SET standing_quota_tokens = 90000 WHERE user_id = $1", lea)
    # Last month had its own override: it does not carry over.
    await db.execute(
        "INSERT INTO user_token_usage (user_id, month, used_tokens, quota_tokens) VALUES ($1, $2, 10, 400000)",
        lea,
        date(2020, 1, 1),
    )
    chat = await make_client(chat_app(chat_settings))
    r = await chat.post(
        "/webhook/wibot/chat", json={"conversation_id": str(uuid.uuid4()), "message": "Bonjour"}, headers=bearer(lea)
    )
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["tokens_remaining"] == 90_000 - body["tokens_used"]
    row = await db.fetchrow(
        "SELECT used_tokens, quota_tokens FROM user_token_usage WHERE user_id = $1 AND month = $2", lea, current_month()
    )
    assert tuple(row) == (body["tokens_used"], 90_000)


async def test_a_user_created_with_a_standing_quota(admin, people, db):
    admin_id, _ = people
    r = await admin.post(
        ADMIN,
        json={"username": "marc", "password": "secret-pw", "standing_quota_tokens": 75_000},
        headers=bearer(admin_id, role="admin"),
    )
    assert r.status == 200, await r.text()
    user = (await r.json())["user"]
    assert (user["standing_quota_tokens"], user["quota_tokens"], user["quota_source"]) == (75_000, 75_000, "standing")


@pytest.mark.parametrize("value", [-1, "unlimited", 1.5, True, 10**13])
async def test_a_bad_standing_quota_is_a_400_and_changes_nothing(admin, people, db, value):
    admin_id, lea = people
    r = await admin.put(
        ADMIN, json={"user_id": lea, "standing_quota_tokens": value}, headers=bearer(admin_id, role="admin")
    )
    assert r.status == 400, await r.text()
    assert await db.fetchval("SELECT standing_quota_tokens FROM users WHERE user_id = $1", lea) is None
