"""Accreditation levels (N0…N4): stored, listed, set by the admin API (as the newer frontend sends them) and by
the `users` command; anything else is a 400 envelope, never silently dropped."""

from __future__ import annotations

import pytest

from services.auth.app import create_app as auth_app
from tests.conftest import bearer
from tests.test_users_cli import users_cli

ADMIN = "/webhook/wibot/admin/users"


@pytest.fixture
async def client(make_client, settings):
    return await make_client(auth_app(settings))


@pytest.fixture
async def admin_id(factory):
    return await factory.user("khora", "test123", role="admin")


async def test_create_and_update_carry_the_level(client, admin_id, db):
    r = await client.post(
        ADMIN,
        json={"username": "tech2", "password": "secret-pw", "accreditation_level": "N2"},
        headers=bearer(admin_id, role="admin"),
    )
    assert r.status == 200, await r.text()
    created = (await r.json())["user"]
    assert created["accreditation_level"] == "N2"
    assert await db.fetchval("SELECT accreditation_level FROM users WHERE username = 'tech2'") == "N2"

    r = await client.put(
        ADMIN,
        json={"user_id": created["user_id"], "accreditation_level": "N3"},
        headers=bearer(admin_id, role="admin"),
    )
    assert r.status == 200, await r.text()
    assert (await r.json())["user"]["accreditation_level"] == "N3"
    assert await db.fetchval("SELECT accreditation_level FROM users WHERE username = 'tech2'") == "N3"

    r = await client.get(ADMIN, headers=bearer(admin_id, role="admin"))
    levels = {u["username"]: u["accreditation_level"] for u in (await r.json())["users"]}
    assert levels == {"khora": "N1", "tech2": "N3"}  # N1: the column's default


async def test_a_user_created_without_a_level_gets_n1(client, admin_id, db):
    r = await client.post(
        ADMIN, json={"username": "plain", "password": "secret-pw"}, headers=bearer(admin_id, role="admin")
    )
    assert r.status == 200, await r.text()
    assert (await r.json())["user"]["accreditation_level"] == "N1"


async def test_an_update_without_the_level_keeps_it(client, admin_id, db):
    await db.execute("UPDATE users SET accreditation_level = 'N4' WHERE user_id = $1", admin_id)
    r = await client.put(
        ADMIN, json={"user_id": admin_id, "quota_tokens": 1000}, headers=bearer(admin_id, role="admin")
    )
    assert r.status == 200, await r.text()
    assert (await r.json())["user"]["accreditation_level"] == "N4"


@pytest.mark.parametrize("level", ["N5", "n1", "L1", "", 1, None, ["N1"]])
async def test_any_other_level_is_a_400_and_changes_nothing(client, admin_id, db, level):
    before = await db.fetchval("SELECT accreditation_level FROM users WHERE user_id = $1", admin_id)
    r = await client.put(
        ADMIN, json={"user_id": admin_id, "accreditation_level": level}, headers=bearer(admin_id, role="admin")
    )
    if level is None:  # JSON null = field not sent (the frontend omits unchanged fields)
        assert r.status == 200, await r.text()
    else:
        assert r.status == 400, await r.text()
        body = await r.json()
        assert body["success"] is False and body["code"] == "VALIDATION_ERROR"
        assert "accreditation_level" in body["error"]
    assert await db.fetchval("SELECT accreditation_level FROM users WHERE user_id = $1", admin_id) == before

    r = await client.post(
        ADMIN,
        json={"username": "x1", "password": "secret-pw", "accreditation_level": level or "N9"},
        headers=bearer(admin_id, role="admin"),
    )
    assert r.status == 400, await r.text()
    assert await db.fetchval("SELECT count(*) FROM users WHERE username = 'x1'") == 0


async def test_the_database_refuses_a_level_outside_n0_n4(db, admin_id):
    import asyncpg

    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE users SET accreditation_level = 'N7' WHERE user_id = $1", admin_id)


async def test_cli_creates_with_a_level_sets_it_and_lists_it(database_url, db):
    code, out, err = await users_cli(database_url, "create", "safe3", "--accreditation", "N3", stdin="secret-pw\n")
    assert code == 0, err
    assert "niveau N3" in out
    assert await db.fetchval("SELECT accreditation_level FROM users WHERE username = 'safe3'") == "N3"

    code, out, err = await users_cli(database_url, "set-accreditation", "safe3", "N0")
    assert code == 0, err
    assert await db.fetchval("SELECT accreditation_level FROM users WHERE username = 'safe3'") == "N0"

    code, out, err = await users_cli(database_url, "list")
    assert code == 0, err
    row = next(line for line in out.splitlines() if "safe3" in line)
    assert row.split()[3] == "N0"

    code, _, err = await users_cli(database_url, "set-accreditation", "safe3", "N9")
    assert code == 2 and "invalid choice" in err  # argparse refuses it before any database work
    code, _, err = await users_cli(database_url, "set-accreditation", "nobody", "N2")
    assert code == 1 and "Utilisateur inconnu" in err
