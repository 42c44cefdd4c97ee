"""services/auth/users.py's rules at their edges (written from mutation testing's survivors)."""

from __future__ import annotations

import pytest

from services.auth.app import create_app as auth_app
from tests.conftest import bearer, token_for

ADMIN = "/webhook/wibot/admin/users"


@pytest.fixture
async def client(make_client, settings):
    return await make_client(auth_app(settings))


async def test_a_user_can_be_deactivated_when_the_only_admin_has_a_higher_id(client, factory, db):
    """The last-admin rule protects the last admin only, whatever the ids."""
    user = await factory.user("lea")
    admin = await factory.user("khora", role="admin")  # created after: a higher id
    r = await client.put(ADMIN, json={"user_id": user, "is_active": False}, headers=bearer(admin, role="admin"))
    assert r.status == 200, await r.text()
    r = await client.delete(ADMIN, json={"user_id": user}, headers=bearer(admin, role="admin"))
    assert r.status == 200, await r.text()


async def test_tokens_revoked_by_a_deactivation_stay_revoked_when_the_account_is_reenabled_by_sql(client, factory, db):
    """An n8n-era admin may flip is_active back with SQL: the deactivation itself revoked every token."""
    admin = await factory.user("khora", role="admin")
    user = await factory.user("lea")
    before = {"Authorization": f"Bearer {token_for(user, 'lea')}"}
    assert (await client.get("/webhook/auth/me", headers=before)).status == 200
    r = await client.put(ADMIN, json={"user_id": user, "is_active": False}, headers=bearer(admin, role="admin"))
    assert r.status == 200, await r.text()
    await db.execute("UPDATE users SET is_active = true WHERE user_id = $1", user)
    assert (await client.get("/webhook/auth/me", headers=before)).status == 401
    # Reactivating through the API revokes nothing more: a token issued after it works.
    r = await client.put(ADMIN, json={"user_id": user, "is_active": True}, headers=bearer(admin, role="admin"))
    assert r.status == 200, await r.text()
    generation = await db.fetchval("SELECT generation FROM user_token_revocations WHERE user_id = $1", user)
    after = {"Authorization": f"Bearer {token_for(user, 'lea', generation=generation)}"}
    assert (await client.get("/webhook/auth/me", headers=after)).status == 200
    assert await db.fetchval("SELECT generation FROM user_token_revocations WHERE user_id = $1", user) == generation


async def test_a_password_of_exactly_the_minimum_length_is_accepted(client, factory, db):
    admin = await factory.user("khora", role="admin")
    for password, status in (("abcde", 400), ("abcdef", 200)):  # MIN_PASSWORD_CHARS = 6
        r = await client.post(
            ADMIN, json={"username": f"u{len(password)}", "password": password}, headers=bearer(admin, role="admin")
        )
        assert r.status == status, (password, await r.text())
