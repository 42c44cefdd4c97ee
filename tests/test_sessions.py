"""Authentication without a database round trip (shared/sessions.py): each process's copy of the revoked tokens
and of the users it serves, kept current by LISTEN/NOTIFY (migration 0012), and the database asked instead
whenever that copy may be behind. The routed test with several processes is in tests/test_gateway.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.auth.app import create_app as auth_app
from services.conversations.app import create_app as conversations_app
from shared.sessions import SESSIONS, SessionCache, SessionUser
from tests.conftest import bearer, sessions_caught_up

ME = "/webhook/auth/me"
LIST = "/webhook/wibot/conversations"
ADMIN = "/webhook/wibot/admin/users"
SESSION_TABLES = "users, revoked_tokens, user_token_revocations"


async def test_a_known_users_request_reads_none_of_the_session_tables(make_client, settings, factory, db):
    """Zero round trips: with those tables locked against every reader, the listing still answers."""
    client = await make_client(conversations_app(settings))
    user = await factory.user("lea")
    assert (await client.get(LIST, headers=bearer(user, "lea"))).status == 200  # first use: read and kept
    async with db.transaction():
        await db.execute(f"LOCK TABLE {SESSION_TABLES} IN ACCESS EXCLUSIVE MODE")
        r = await asyncio.wait_for(client.get(LIST, headers=bearer(user, "lea")), 10)
        assert r.status == 200, await r.text()


async def test_a_change_made_elsewhere_reaches_the_process(make_client, settings, factory, db):
    client = await make_client(auth_app(settings))
    admin = await factory.user("root", role="admin")
    bob = await factory.user("bob")
    token = bearer(bob, "bob")
    assert (await client.get(ADMIN, headers=token)).status == 403  # bob is known to the process as a user
    await db.execute("UPDATE users SET role = 'admin' WHERE user_id = $1", bob)  # another process's change
    await sessions_caught_up(client, db)
    assert (await client.get(ADMIN, headers=token)).status == 200
    await db.execute("UPDATE users SET accreditation_level = 'N3' WHERE user_id = $1", bob)
    await sessions_caught_up(client, db)
    r = await client.get(ADMIN, headers=bearer(admin, "root", role="admin"))
    assert {u["username"]: u["accreditation_level"] for u in (await r.json())["users"]}["bob"] == "N3"
    await db.execute("UPDATE users SET is_active = false WHERE user_id = $1", bob)
    await sessions_caught_up(client, db)
    assert (await client.get(ME, headers=token)).status == 401
    await db.execute("DELETE FROM users WHERE user_id = $1", admin)
    await sessions_caught_up(client, db)
    assert (await client.get(ME, headers=bearer(admin, "root", role="admin"))).status == 401


async def test_a_token_revoked_by_another_process_is_refused(make_client, settings, factory, db):
    client = await make_client(conversations_app(settings))
    user = await factory.user("lea", "pw-lea-123")
    auth = await make_client(auth_app(settings))
    r = await auth.post("/webhook/auth/login", json={"username": "lea", "password": "pw-lea-123"})
    headers = {"Authorization": f"Bearer {(await r.json())['token']}"}
    assert (await client.get(LIST, headers=headers)).status == 200
    assert (await auth.post("/webhook/auth/logout", headers=headers)).status == 200
    assert (await auth.get(ME, headers=headers)).status == 401  # the process that revoked it: at once
    await sessions_caught_up(client, db)
    assert (await client.get(LIST, headers=headers)).status == 401
    # Every token of the user, by a password change made by yet another process (the CLI writes this row).
    other = bearer(user, "lea")
    assert (await client.get(LIST, headers=other)).status == 200
    await db.execute(
        "INSERT INTO user_token_revocations (user_id, not_before, generation) VALUES ($1, now() + interval '1 s', 1)",
        user,
    )
    await sessions_caught_up(client, db)
    assert (await client.get(LIST, headers=other)).status == 401


async def test_revoked_tokens_are_loaded_at_start(make_client, settings, factory, db):
    """A token logged out before the process started is in its copy, not only in the database."""
    user = await factory.user("lea")
    headers = bearer(user, "lea")
    auth = await make_client(auth_app(settings))
    assert (await auth.post("/webhook/auth/logout", headers=headers)).status == 200
    client = await make_client(conversations_app(settings))
    assert client.app[SESSIONS].revoked_count == 1
    async with db.transaction():  # the answer comes from the copy: the tables cannot be read
        await db.execute(f"LOCK TABLE {SESSION_TABLES} IN ACCESS EXCLUSIVE MODE")
        r = await asyncio.wait_for(client.get(LIST, headers=headers), 10)
        assert r.status == 401


async def test_a_lost_listener_means_asking_the_database(make_client, settings, factory, db, monkeypatch):
    monkeypatch.setattr("shared.listen.RECONNECT_DELAY_S", 3.0)  # the checks below run well within it
    client = await make_client(conversations_app(settings))
    sessions = client.app[SESSIONS]
    user = await factory.user("lea")
    headers = bearer(user, "lea")
    assert (await client.get(LIST, headers=headers)).status == 200
    sessions.loaded.clear()
    # Only this test's database, only this app's listener: nothing else on the server is touched.
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'wibot-conversations-sessions'"
    )
    assert killed == 1
    async with asyncio.timeout(10):
        while sessions.ready:
            await asyncio.sleep(0.01)
    # Revoked while nobody listens: no notification will ever say so; the database does.
    await db.execute(
        "INSERT INTO revoked_tokens (token_sha256, user_id, expires_at)"
        " VALUES ($1, $2, now() AT TIME ZONE 'UTC' + interval '1 hour')",
        sessions_key(headers),
        user,
    )
    assert (await client.get(LIST, headers=headers)).status == 401
    await asyncio.wait_for(sessions.loaded.wait(), 10)  # reconnected, everything loaded again
    assert sessions.ready and sessions.is_revoked(sessions_key(headers))
    assert (await client.get(LIST, headers=headers)).status == 401


def sessions_key(headers: dict[str, str]) -> str:
    import jwt

    from shared.auth import token_key

    token = headers["Authorization"].removeprefix("Bearer ")
    return token_key(token, jwt.decode(token, options={"verify_signature": False}))


def session_user(user_id: int = 7) -> SessionUser:
    return SessionUser(user_id=user_id, username="lea", role="user", accreditation_level="N1", generation=None,
                       not_before=None)  # fmt: skip


async def test_a_user_read_before_a_change_is_not_kept_after_it():
    """The database read that began before a change notified must not store what it read (it may be stale)."""
    cache = SessionCache()
    assert cache.user(7) is None  # not loaded: every lookup goes to the database
    cache.ready = True
    read_at = cache.epoch
    cache.forget(7)  # a notification arrives while the read is in flight
    cache.keep(session_user(), read_at_epoch=read_at)
    assert cache.user(7) is None
    cache.keep(session_user(), read_at_epoch=cache.epoch)
    assert cache.user(7) == session_user()
    cache.lost()
    assert cache.user(7) is None and not cache.ready


async def test_a_user_read_before_a_reload_is_not_kept_after_it(db):
    """Changes made while the connection was down are only known through the reload: what a request read
    before it may predate them."""
    cache = SessionCache()
    await cache.load(db)
    read_at = cache.epoch
    await cache.load(db)
    cache.keep(session_user(), read_at_epoch=read_at)
    assert cache.user(7) is None


@pytest.mark.parametrize(
    ("payload", "revoked", "forgotten"),
    [
        ("u:7", False, True),
        ("r:abc:4102444800", True, False),
        ("x:7", False, False),
        ("a:7", False, False),  # kinds are compared whole: nothing sorts its way into another
        ("u:seven", False, False),
        ("r:", False, False),
        ("", False, False),  # kinds that sort before `*` are not a reload either
        ("!:7", False, False),
    ],
)
async def test_each_notification_does_what_it_says(payload, revoked, forgotten):
    cache = SessionCache()
    cache.ready = True
    cache.keep(session_user(), read_at_epoch=cache.epoch)
    await cache.apply(None, payload)  # type: ignore[arg-type] # no reload in these payloads: no connection used
    assert cache.is_revoked("abc") is revoked
    assert cache.revoked_count == int(revoked)
    assert (cache.user(7) is None) is forgotten


async def test_a_truncate_reloads_everything(make_client, settings, factory, db):
    """A TRUNCATE fires no row trigger: its `*` must drop every user the process knew and re-read the revocations."""
    client = await make_client(conversations_app(settings))
    user = await factory.user("lea")
    assert (await client.get(LIST, headers=bearer(user, "lea"))).status == 200  # known to the process now
    await db.execute("TRUNCATE users CASCADE")
    await sessions_caught_up(client, db)
    assert (await client.get(LIST, headers=bearer(user, "lea"))).status == 401


async def test_an_unknown_notification_is_logged_cut_to_100_characters(capsys):
    cache = SessionCache()
    await cache.apply(None, "?" * 150)  # type: ignore[arg-type] # not a reload: no connection used
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "session_cache_unknown" in line]
    assert [entry["payload"] for entry in logged] == ["?" * 100]


def test_several_users_are_kept_side_by_side():
    cache = SessionCache()
    cache.ready = True
    for user_id in (7, 8, 9):
        cache.keep(session_user(user_id), read_at_epoch=cache.epoch)
    assert [cache.user(user_id) is not None for user_id in (7, 8, 9)] == [True, True, True]


def test_the_copy_holds_100_000_users_then_starts_over():
    cache = SessionCache()
    cache.ready = True
    for user_id in range(100_000):
        cache.keep(session_user(user_id), read_at_epoch=cache.epoch)
    assert cache.user(0) is not None and cache.user(99_999) is not None
    cache.keep(session_user(100_000), read_at_epoch=cache.epoch)
    assert cache.user(0) is None and cache.user(100_000) is not None


def test_revocations_are_pruned_once_an_hour_has_passed(monkeypatch):
    import time

    now = 1_800_000_000.0
    monkeypatch.setattr(time, "time", lambda: now)
    cache = SessionCache()
    cache.revoke("expired", int(now) - 10)
    now += 3600  # an hour since the cache started, not more
    cache.revoke("current", int(now) + 60)
    assert cache.is_revoked("expired")
    cache.revoke("ends_now", int(now) + 1)
    now += 1  # past the hour: the revocations still to come are kept, those that ended are dropped
    cache.revoke("other", int(now) + 60)
    assert [cache.is_revoked(key) for key in ("expired", "ends_now", "current", "other")] == [False, False, True, True]


async def test_expired_revocations_are_dropped_hourly_and_only_they():
    import time

    from shared.sessions import PRUNE_EVERY_S

    cache = SessionCache()
    now = time.time()
    cache.revoke("expired", int(now) - 10)
    assert cache.is_revoked("expired")  # kept until the next pruning: an hour has not passed
    await cache.apply(None, "r:unreadable:soon")  # type: ignore[arg-type] # an expiry it cannot read: far away
    cache._pruned_at = now - PRUNE_EVERY_S - 1
    cache.revoke("current", int(now) + 3600)
    assert (cache.is_revoked("expired"), cache.is_revoked("current"), cache.is_revoked("unreadable")) == (
        False,
        True,
        True,
    )
