"""Admin API (admin role only), /me, logout and revocation, checked on every authenticated request."""

from __future__ import annotations

import asyncio

import pytest

from services.auth.app import create_app as auth_app
from services.conversations.app import create_app as conversations_app
from tests.conftest import bearer, sessions_caught_up
from tests.figures import FIGURES

ADMIN = "/webhook/wibot/admin/users"
LOGIN = "/webhook/auth/login"


@pytest.fixture
async def client(make_client, settings):
    return await make_client(auth_app(settings))


@pytest.fixture
async def admin_id(factory):
    return await factory.user("khora", "test123", role="admin")


async def login(client, username="khora", password="test123") -> str:
    r = await client.post(LOGIN, json={"username": username, "password": password})
    assert r.status == 200, await r.text()
    return (await r.json())["token"]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_admin_lists_users_with_this_months_usage(client, admin_id, factory):
    bob = await factory.user("bob")
    await factory.usage(bob, used=1234, quota=9000)
    r = await client.get(ADMIN, headers=bearer(admin_id, role="admin"))
    assert r.status == 200, await r.text()
    users = (await r.json())["users"]
    assert [(u["username"], u["used_tokens"], u["quota_tokens"]) for u in users] == [
        ("khora", 0, 50_000),
        ("bob", 1234, 9000),
    ]
    assert set(users[0]) == {
        "user_id",
        "username",
        "email",
        "role",
        "is_active",
        "created_at",
        "used_tokens",
        "quota_tokens",
        "standing_quota_tokens",
        "quota_source",
        "accreditation_level",
        "source",
    }
    assert users[0]["created_at"].endswith("Z")


@pytest.mark.parametrize(
    ("method", "payload"),
    [
        ("GET", None),
        ("POST", {"username": "x", "password": "secret1"}),
        ("PUT", {"user_id": "the admin", "role": "user"}),
        ("DELETE", {"user_id": "the admin"}),
    ],
)
async def test_admin_routes_are_403_for_users_and_401_without_token(client, admin_id, factory, db, method, payload):
    if payload and payload.get("user_id") == "the admin":
        payload = {**payload, "user_id": admin_id}
    user_id = await factory.user("bob")
    r = await client.request(method, ADMIN, json=payload, headers=bearer(user_id))
    assert r.status == 403, await r.text()
    assert await r.json() == {"success": False, "error": "Accès réservé aux administrateurs", "code": "FORBIDDEN"}
    r = await client.request(method, ADMIN, json=payload)
    assert r.status == 401
    assert await db.fetchval("SELECT count(*) FROM users") == 2
    assert await db.fetchval("SELECT role FROM users WHERE user_id = $1", admin_id) == "admin"


async def test_admin_creates_a_user_who_can_log_in(client, admin_id, db):
    r = await client.post(
        ADMIN,
        headers=bearer(admin_id, role="admin"),
        json={"username": "alice", "password": "s3cret-pw", "email": "alice@widip.fr", "quota_tokens": 120_000},
    )
    assert r.status == 200, await r.text()
    user = (await r.json())["user"]
    assert {k: user[k] for k in ("username", "email", "role", "is_active", "used_tokens", "quota_tokens")} == {
        "username": "alice",
        "email": "alice@widip.fr",
        "role": "user",
        "is_active": True,
        "used_tokens": 0,
        "quota_tokens": 120_000,
    }
    await login(client, "alice", "s3cret-pw")
    r = await client.post(
        ADMIN, headers=bearer(admin_id, role="admin"), json={"username": "alice", "password": "x" * 8}
    )
    assert r.status == 409, await r.text()
    assert (await r.json())["code"] == "CONFLICT"


@pytest.mark.parametrize(
    "payload",
    [
        {"username": "a"},
        {"username": "a", "password": "short"},
        {"username": "a", "password": "longenough", "role": "root"},
        {"username": "a", "password": "longenough", "quota_tokens": -1},
    ],
)
async def test_admin_create_validates(client, admin_id, db, payload):
    r = await client.post(ADMIN, headers=bearer(admin_id, role="admin"), json=payload)
    assert r.status == 400, await r.text()
    assert await db.fetchval("SELECT count(*) FROM users") == 1


async def test_quota_changes_apply_to_this_month_at_once(client, make_client, settings, admin_id, factory):
    bob = await factory.user("bob")
    await factory.usage(bob, used=50_000, quota=50_000)
    conversations = await make_client(conversations_app(settings))
    r = await client.put(ADMIN, headers=bearer(admin_id, role="admin"), json={"user_id": bob, "add_tokens": 10_000})
    assert (await r.json())["user"]["quota_tokens"] == 60_000
    r = await conversations.get("/webhook/wibot/user/tokens", headers=bearer(bob))
    assert (await r.json())["tokens_remaining"] == 10_000
    r = await client.put(ADMIN, headers=bearer(admin_id, role="admin"), json={"user_id": bob, "quota_tokens": 80_000})
    assert (await r.json())["user"]["quota_tokens"] == 80_000
    carol = await factory.user("carol")  # no row this month yet: created with the new quota
    r = await client.put(ADMIN, headers=bearer(admin_id, role="admin"), json={"user_id": carol, "add_tokens": 5})
    assert (await r.json())["user"]["quota_tokens"] == 50_005


async def test_last_active_admin_cannot_be_removed(client, admin_id, db):
    for payload, method in [
        ({"user_id": admin_id, "role": "user"}, "PUT"),
        ({"user_id": admin_id, "is_active": False}, "PUT"),
        ({"user_id": admin_id}, "DELETE"),
    ]:
        r = await client.request(method, ADMIN, headers=bearer(admin_id, role="admin"), json=payload)
        assert r.status == 409, await r.text()
        assert await r.json() == {
            "success": False,
            "error": "Impossible : c'est le dernier administrateur actif",
            "code": "CONFLICT",
        }
    assert await db.fetchrow("SELECT role, is_active FROM users") == ("admin", True)


async def test_two_admins_demoting_each_other_at_once_leave_one(client, factory, db):
    first = await factory.user("first", role="admin")
    second = await factory.user("second", role="admin")
    results = await asyncio.gather(
        client.put(ADMIN, headers=bearer(first, role="admin"), json={"user_id": second, "role": "user"}),
        client.put(ADMIN, headers=bearer(second, role="admin"), json={"user_id": first, "role": "user"}),
    )
    statuses = sorted(r.status for r in results)
    assert statuses in ([200, 409], [200, 403])  # the loser is either refused or no longer an admin
    assert await db.fetchval("SELECT count(*) FROM users WHERE role = 'admin' AND is_active") == 1


async def test_delete_removes_everything_of_the_user(client, admin_id, factory, db):
    bob = await factory.user("bob")
    cid = await factory.conversation(bob)
    await factory.message(cid, bob, "user", "bonjour")
    await factory.usage(bob, used=10)
    keep = await factory.conversation(admin_id)
    await factory.message(keep, admin_id, "user", "à garder")
    r = await client.delete(ADMIN, headers=bearer(admin_id, role="admin"), json={"user_id": bob})
    assert r.status == 200, await r.text()
    assert await r.json() == {"success": True, "deleted": {"user_id": bob, "username": "bob"}}
    counts = await db.fetchrow(
        "SELECT (SELECT count(*) FROM users) AS u, (SELECT count(*) FROM conversations) AS c,"
        " (SELECT count(*) FROM messages) AS m, (SELECT count(*) FROM user_token_usage) AS t"
    )
    assert tuple(counts) == (1, 1, 1, 0)
    r = await client.delete(ADMIN, headers=bearer(admin_id, role="admin"), json={"user_id": bob})
    assert r.status == 404


async def test_me_and_logout_revokes_only_that_token(client, admin_id):
    # Two logins in the same second: different tokens (jti), revoked one by one.
    first = await login(client)
    second = await login(client)
    assert first != second
    r = await client.get("/webhook/auth/me", headers=auth(first))
    assert await r.json() == {"success": True, "user": {"id": admin_id, "username": "khora", "role": "admin"}}
    r = await client.post("/webhook/auth/logout", headers=auth(first))
    assert (r.status, await r.json()) == (200, {"success": True})
    r = await client.get("/webhook/auth/me", headers=auth(first))
    assert r.status == 401
    r = await client.get("/webhook/auth/me", headers=auth(second))
    assert r.status == 200


def spellings(token: str) -> list[str]:
    """The same token spelt otherwise, kept when PyJWT accepts it as valid (a trailing `=` is, with PyJWT 2.15)."""
    import jwt as pyjwt

    from tests.conftest import TEST_SECRET

    head, _, signature = token.rpartition(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # 32 bytes of HMAC are 43 characters: the last one carries 4 bits of signature and 2 unused ones.
    high = alphabet.index(signature[-1]) & ~0b11
    candidates = [
        token + "=",
        token + "==",
        token + "===",
        *(f"{head}.{signature[:-1]}{c}" for c in alphabet[high : high + 4]),
    ]
    accepted = []
    for candidate in candidates:
        if candidate == token:
            continue
        try:
            pyjwt.decode(candidate, TEST_SECRET, algorithms=["HS256"])
        except pyjwt.PyJWTError:
            continue
        accepted.append(candidate)
    assert accepted, "no other spelling is accepted any more: this test no longer tests anything"
    return accepted


@pytest.mark.parametrize("with_jti", [True, False], ids=["jti", "token-without-jti"])
async def test_a_logged_out_token_stays_out_whatever_its_spelling(client, admin_id, with_jti):
    import jwt as pyjwt

    from tests.conftest import TEST_SECRET

    if with_jti:
        token = await login(client)
    else:  # issued before tokens had a jti: revocation is keyed on its canonical form
        now = int(__import__("time").time())
        claims = {"user_id": admin_id, "username": "khora", "role": "admin", "iat": now, "exp": now + 3600}
        token = pyjwt.encode(claims, TEST_SECRET, algorithm="HS256")
    variants = spellings(token)
    for spelling in variants:  # PyJWT accepts each of them as the same token
        assert (await client.get("/webhook/auth/me", headers=auth(spelling))).status == 200
    r = await client.post("/webhook/auth/logout", headers=auth(token))
    assert r.status == 200
    for spelling in [token, *variants]:
        r = await client.get("/webhook/auth/me", headers=auth(spelling))
        FIGURES["revoked_variants_tried"] += 1
        FIGURES["revoked_variants_accepted"] += r.status != 401
        assert r.status == 401, spelling


async def test_a_password_change_revokes_tokens_of_the_same_second(client, admin_id, factory, db):
    """iat has whole seconds: tokens issued in the second of the change are told apart by their generation."""
    from services.auth import users
    from services.auth.passwords import PasswordHasher
    from shared import AppKeys

    bob = await factory.user("bob", "bob-password")
    before = await login(client, "bob", "bob-password")
    await users.set_password(client.app[AppKeys.DB], PasswordHasher(4), user_id=bob, password="new-password")
    after = await login(client, "bob", "new-password")  # very likely the same second: no sleeping either way
    await sessions_caught_up(client, db)
    assert (await client.get("/webhook/auth/me", headers=auth(before))).status == 401
    assert (await client.get("/webhook/auth/me", headers=auth(after))).status == 200
    await users.set_password(client.app[AppKeys.DB], PasswordHasher(4), user_id=bob, password="third-password")
    latest = await login(client, "bob", "third-password")
    await sessions_caught_up(client, db)
    assert (await client.get("/webhook/auth/me", headers=auth(after))).status == 401
    assert (await client.get("/webhook/auth/me", headers=auth(latest))).status == 200
    assert await db.fetchval("SELECT generation FROM user_token_revocations WHERE user_id = $1", bob) == 2


async def test_password_change_and_deactivation_revoke_every_token(client, admin_id, factory, database_url, db):
    import time

    from tests.conftest import token_for
    from tests.test_users_cli import users_cli

    bob = await factory.user("bob", "bob-password")
    # Issued before the change (a whole-second iat, 5 s ago): no sleeping to get past the second of the change.
    earlier = {"Authorization": f"Bearer {token_for(bob, 'bob', now=int(time.time()) - 5)}"}
    assert (await client.get("/webhook/auth/me", headers=earlier)).status == 200

    code, _, err = await users_cli(database_url, "set-password", "bob", stdin="new-password\n")  # the real path
    assert code == 0, err
    await sessions_caught_up(client, db)  # the CLI's change, notified to the service
    r = await client.get("/webhook/auth/me", headers=earlier)
    assert (r.status, (await r.json())["code"]) == (401, "INVALID_TOKEN")

    token_after = await login(client, "bob", "new-password")
    assert (await client.get("/webhook/auth/me", headers=auth(token_after))).status == 200
    r = await client.put(ADMIN, headers=bearer(admin_id, role="admin"), json={"user_id": bob, "is_active": False})
    assert r.status == 200, await r.text()
    assert (await client.get("/webhook/auth/me", headers=auth(token_after))).status == 401


async def test_a_demoted_admin_is_refused_at_once_though_the_token_says_admin(client, admin_id, factory, db):
    other_admin = await factory.user("root", role="admin")
    token = bearer(other_admin, "root", role="admin")  # its claims say admin for hours to come
    assert (await client.get(ADMIN, headers=token)).status == 200
    r = await client.put(ADMIN, headers=bearer(admin_id, role="admin"), json={"user_id": other_admin, "role": "user"})
    assert r.status == 200, await r.text()
    r = await client.get(ADMIN, headers=token)
    assert r.status == 403, await r.text()
    assert await r.json() == {"success": False, "error": "Accès réservé aux administrateurs", "code": "FORBIDDEN"}
    # And the other way: promoted in the database, the user's old "user" token opens the admin API at once.
    bob = await factory.user("bob")
    assert (await client.get(ADMIN, headers=bearer(bob, "bob"))).status == 403
    await db.execute("UPDATE users SET role = 'admin' WHERE user_id = $1", bob)
    await sessions_caught_up(client, db)
    assert (await client.get(ADMIN, headers=bearer(bob, "bob"))).status == 200


@pytest.mark.parametrize(
    "payload",
    [
        {"user_id": 10**15},
        {"user_id": 0},
        {"user_id": 2, "quota_tokens": 10**19},
        {"user_id": 2, "add_tokens": 10**13},
        {"user_id": "2"},
        {"user_id": True},
    ],
)
async def test_admin_update_bounds_numbers_instead_of_failing_in_sql(client, admin_id, payload):
    # Found by the fuzzer: user_id past int4 reached PostgreSQL and came back as a 500.
    r = await client.put(ADMIN, headers=bearer(admin_id, role="admin"), json=payload)
    assert r.status == 400, await r.text()
    assert (await r.json())["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize("scheme", ["Token", "JWT", "Bearerx", "Basic", "bearer:"])
async def test_only_the_bearer_scheme_carries_a_token(client, admin_id, scheme):
    from tests.conftest import token_for

    token = token_for(admin_id, role="admin")
    r = await client.get("/webhook/auth/me", headers={"Authorization": f"{scheme} {token}"})
    assert r.status == 401, await r.text()
    r = await client.get("/webhook/auth/me", headers={"Authorization": f"bEaReR {token}"})  # the scheme's case is free
    assert r.status == 200


async def test_token_generations_decide_which_tokens_a_revocation_ended(client, admin_id, db):
    import time

    import jwt as pyjwt

    from tests.conftest import TEST_SECRET, token_for

    now = int(time.time())
    assert pyjwt.decode(token_for(admin_id), TEST_SECRET, algorithms=["HS256"])["gen"] == 0  # never revoked: gen 0
    # Revoked once, long ago (not_before far in the past): only the generation tells old tokens from new ones.
    await db.execute(
        "INSERT INTO user_token_revocations (user_id, not_before, generation) VALUES ($1, '2000-01-01', 1)", admin_id
    )
    claims = {"user_id": admin_id, "username": "khora", "role": "admin", "iat": now, "exp": now + 600}
    without_gen = pyjwt.encode(claims, TEST_SECRET, algorithm="HS256")  # issued before generations existed
    assert (await client.get("/webhook/auth/me", headers=auth(without_gen))).status == 401
    assert (await client.get("/webhook/auth/me", headers=auth(token_for(admin_id, generation=0)))).status == 401
    assert (await client.get("/webhook/auth/me", headers=auth(token_for(admin_id, generation=1)))).status == 200
    bogus = pyjwt.encode({**claims, "gen": "1"}, TEST_SECRET, algorithm="HS256")
    assert (await client.get("/webhook/auth/me", headers=auth(bogus))).status == 401
