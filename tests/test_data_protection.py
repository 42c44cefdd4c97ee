"""Retention, export, deletion and the audit trail (#30), against the real database: the trail refuses UPDATE and
DELETE, its chain shows a row edited or removed by a superuser, the purge keeps it verifiable; the retention
purge deletes on one side of the limit only; the export holds the caller's data and nobody else's."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import timedelta

import asyncpg
import pytest

from services.auth.app import create_app as auth_app
from services.conversations import data
from services.conversations.app import create_app as conversations_app
from shared import audit, create_pool
from tests.conftest import TEST_SECRET, bearer, make_settings

EXPORT = "/webhook/wibot/user/export"
AUDIT = "/webhook/wibot/admin/audit"


@pytest.fixture
async def pool(database_url):
    pool = await create_pool(make_settings(database_url), application_name="tests")
    yield pool
    await pool.close()


async def trail_since(db, first_id: int) -> list[dict]:
    rows = await db.fetch("SELECT * FROM audit_log WHERE audit_id > $1 ORDER BY audit_id", first_id)
    return [dict(row) | {"details": json.loads(row["details"])} for row in rows]


async def last_audit_id(db) -> int:
    return await db.fetchval("SELECT coalesce(max(audit_id), 0) FROM audit_log")


# --- the trail ---------------------------------------------------------------------------------------------------


async def test_the_application_cannot_update_delete_or_truncate_the_trail(pool, db):
    audit_id = await audit.record(pool, audit.LOGOUT, actor_id=1)
    for statement in (
        "UPDATE audit_log SET action = 'login' WHERE audit_id = $1",
        "DELETE FROM audit_log WHERE audit_id = $1",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await db.execute(statement, audit_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("TRUNCATE audit_log")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the anchor a purge leaves is kept as it is
        async with db.transaction():
            await db.execute("INSERT INTO audit_anchor (audit_id, hash) VALUES (-1, '\\x00')")
            await db.execute("DELETE FROM audit_anchor WHERE audit_id = -1")
    # The application cannot forge the chain either: the database numbers, times and hashes each row.
    forged = await db.fetchrow(
        "INSERT INTO audit_log (audit_id, at, action, previous_hash, hash) VALUES (1, '2000-01-01', 'x', '\\x00',"
        " '\\x00') RETURNING audit_id, at, hash"
    )
    assert forged["audit_id"] > audit_id and forged["at"].year > 2000 and forged["hash"] != b"\x00"
    assert (await audit.verify(pool)).intact


async def test_concurrent_writers_make_one_chain(pool):
    await asyncio.gather(*(audit.record(pool, audit.LOGIN, actor_id=n) for n in range(40)))
    result = await audit.verify(pool)
    assert result.intact and result.rows >= 40


async def superuser_session(db) -> None:
    """What a superuser can do that the application cannot: switch the triggers off for this session."""
    await db.execute("SET session_replication_role = replica")


async def test_verify_finds_a_row_edited_or_removed_by_a_superuser(pool, db, database_url):
    ids = [await audit.record(pool, audit.LOGIN, actor_id=7, target="7") for _ in range(5)]
    assert (await audit.verify(pool)).intact
    await superuser_session(db)
    await db.execute("UPDATE audit_log SET actor_id = 8 WHERE audit_id = $1", ids[1])
    assert (await audit.verify(pool)).faults[:1] == [(ids[1], "edited")]
    await db.execute("UPDATE audit_log SET actor_id = 7 WHERE audit_id = $1", ids[1])  # put back: intact again
    assert (await audit.verify(pool)).intact
    removed = await db.fetchrow("DELETE FROM audit_log WHERE audit_id = $1 RETURNING *", ids[3])
    assert (await audit.verify(pool)).faults[:1] == [(ids[4], "row_removed_before")]
    rc, _, err = await data_cli(database_url, "verify")
    assert rc == 1 and f"Ligne {ids[4]}" in err
    # Put back (the suite's later tests share this trail): intact again.
    await db.execute("INSERT INTO audit_log SELECT ($1::audit_log).*", removed)
    await db.execute("SET session_replication_role = origin")
    assert (await audit.verify(pool)).intact


async def age_the_trail(db, days: int) -> None:
    """Make every row `days` older, as a superuser, re-chaining the rows (the chain covers the time)."""
    await superuser_session(db)
    rows = await db.fetch("SELECT audit_id FROM audit_log ORDER BY audit_id")
    previous = await db.fetchval("SELECT hash FROM audit_anchor ORDER BY audit_id DESC LIMIT 1") or b""
    for row in rows:
        previous = await db.fetchval(
            "UPDATE audit_log SET at = at - make_interval(days => $2), previous_hash = $3,"
            " hash = wibot_audit_hash($3, audit_id, at - make_interval(days => $2), actor_id, action, target,"
            " request_id, client_address, details) WHERE audit_id = $1 RETURNING hash",
            row["audit_id"],
            days,
            previous,
        )
    await db.execute("SET session_replication_role = origin")


async def test_the_trail_past_its_retention_is_purged_and_stays_verifiable(pool, db, database_url):
    old = [await audit.record(pool, audit.LOGIN, actor_id=3) for _ in range(3)]
    await age_the_trail(db, 400)
    recent = await audit.record(pool, audit.LOGIN, actor_id=3)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # younger than 180 days: refused whatever asks
        await db.execute("DELETE FROM audit_log WHERE audit_id = $1", recent)
    settings = make_settings(database_url, audit_retention_days=365)
    purged = await data.purge_inactive(pool, settings, now=data.utc_now())
    assert purged is not None and purged.audit_rows >= 3
    remaining = [row["audit_id"] for row in await db.fetch("SELECT audit_id FROM audit_log ORDER BY audit_id")]
    assert not set(old) & set(remaining) and recent in remaining
    assert await db.fetchval("SELECT max(audit_id) FROM audit_anchor") >= old[-1]
    assert (await audit.verify(pool)).intact  # the chain now starts at the anchor


# --- retention ---------------------------------------------------------------------------------------------------


async def test_retention_deletes_inactive_conversations_with_their_messages_and_chunks_and_keeps_usage(
    pool, db, factory, database_url
):
    user_id = await factory.user("khora")
    await factory.usage(user_id, used=1234)
    now = data.utc_now()
    old_cid = await factory.conversation(user_id, updated_at=(now - timedelta(days=31)).isoformat() + "Z")
    young_cid = await factory.conversation(user_id, updated_at=(now - timedelta(days=29)).isoformat() + "Z")
    for cid in (old_cid, young_cid):
        await factory.message(cid, user_id, "user", "Bonjour")
        document_id = await db.fetchval(
            "INSERT INTO kb_documents (source, path, content_hash, chunk_count, conversation_id, user_id)"
            " VALUES ('f.txt', 'f.txt', 'h', 1, $1, $2) RETURNING document_id",
            cid,
            user_id,
        )
        await db.execute(
            "INSERT INTO kb_chunks (document_id, position, content, embedding, conversation_id)"
            " VALUES ($1, 0, 'texte', ARRAY[0.1, 0.2]::real[], $2)",
            document_id,
            cid,
        )
    settings = make_settings(database_url, retention_days=30)
    counted = await data.purge_inactive(pool, settings, now=now, dry_run=True)
    assert (counted.conversations, counted.messages, counted.chunks) == (1, 1, 1)
    assert await db.fetchval("SELECT count(*) FROM conversations") == 2  # a dry run deletes nothing
    first = await last_audit_id(db)
    done = await data.purge_inactive(pool, settings, now=now)
    assert (done.conversations, done.messages, done.chunks) == (1, 1, 1)
    assert [r["conversation_id"] for r in await db.fetch("SELECT conversation_id FROM conversations")] == [young_cid]
    assert await db.fetchval("SELECT count(*) FROM kb_chunks WHERE conversation_id = $1", old_cid) == 0
    assert await db.fetchval("SELECT count(*) FROM kb_chunks WHERE conversation_id = $1", young_cid) == 1
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage WHERE user_id = $1", user_id) == 1234
    rows = await trail_since(db, first)
    assert [(r["action"], r["details"]["conversations"]) for r in rows] == [(audit.RETENTION_PURGE, 1)]
    # Zero keeps everything.
    assert (
        await data.purge_inactive(pool, make_settings(database_url), now=now + timedelta(days=999))
    ).conversations == 0


async def test_the_purge_runs_in_one_process_at_a_time(pool, db, database_url):
    settings = make_settings(database_url, retention_days=30)
    async with pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", data.PURGE_LOCK)
        try:
            assert await data.purge_inactive(pool, settings, now=data.utc_now()) is None
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", data.PURGE_LOCK)
    assert await data.purge_inactive(pool, settings, now=data.utc_now()) is not None


async def test_many_old_conversations_are_purged_in_batches(pool, db, factory, database_url):
    user_id = await factory.user("khora")
    await db.execute(
        "INSERT INTO conversations (conversation_id, user_id, title, updated_at)"
        " SELECT gen_random_uuid(), $1, 'x', now() - interval '90 days' FROM generate_series(1, $2)",
        user_id,
        data.PURGE_BATCH_CONVERSATIONS * 2 + 7,
    )
    done = await data.purge_inactive(pool, make_settings(database_url, retention_days=30), now=data.utc_now())
    assert done.conversations == data.PURGE_BATCH_CONVERSATIONS * 2 + 7
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0


# --- export and deletion -----------------------------------------------------------------------------------------


async def test_the_export_holds_the_callers_data_and_nobody_elses(make_client, settings, db, factory):
    client = await make_client(conversations_app(settings))
    me = await factory.user("khora")
    other = await factory.user("autre")
    await factory.usage(me, used=321)
    mine = await factory.conversation(me, title="Ma conversation")
    await factory.message(mine, me, "user", "Question à moi", created_at="2026-12-01T10:00:00Z")
    await factory.message(mine, me, "assistant", "Réponse", created_at="2026-12-01T10:00:01Z")
    theirs = await factory.conversation(other, title="Pas à moi")
    await factory.message(theirs, other, "user", "Secret de l'autre")
    first = await last_audit_id(db)

    r = await client.get(EXPORT, headers=bearer(me) | {"X-Real-IP": "203.0.113.9"})
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
    body = json.loads(await r.read())
    assert body["success"] is True and body["user"]["username"] == "khora" and body["user"]["user_id"] == me
    assert body["usage"][0]["used_tokens"] == 321
    assert [c["title"] for c in body["conversations"]] == ["Ma conversation"]
    messages = body["conversations"][0]["messages"]
    assert [(m["role"], m["content"], m["created_at"]) for m in messages] == [
        ("user", "Question à moi", "2026-12-01T10:00:00Z"),
        ("assistant", "Réponse", "2026-12-01T10:00:01Z"),
    ]
    assert "Secret de l'autre" not in json.dumps(body)
    [row] = await trail_since(db, first)
    assert (row["action"], row["actor_id"], row["client_address"]) == (audit.DATA_EXPORT, me, "203.0.113.9")
    assert (await client.get(EXPORT)).status == 401


async def test_an_export_of_many_conversations_is_whole_and_the_rate_is_limited(make_client, database_url, db, factory):
    client = await make_client(conversations_app(make_settings(database_url, data_exports_per_minute=1)))
    me = await factory.user("khora")
    count = data.EXPORT_BATCH_CONVERSATIONS * 2 + 3
    await db.execute(
        "INSERT INTO conversations (conversation_id, user_id, title) SELECT gen_random_uuid(), $1, 'c' || n"
        " FROM generate_series(1, $2) AS n",
        me,
        count,
    )
    r = await client.get(EXPORT, headers=bearer(me))
    body = json.loads(await r.read())
    assert len(body["conversations"]) == count == len({c["conversation_id"] for c in body["conversations"]})
    r = await client.get(EXPORT, headers=bearer(me))
    assert r.status == 429 and (await r.json())["code"] == "RATE_LIMITED"


async def test_deleting_a_user_erases_their_conversations_messages_and_chunks_and_the_trail_keeps_their_id(
    make_client, settings, db, factory
):
    client = await make_client(auth_app(settings))
    admin = await factory.user("chef", role="admin")
    user_id = await factory.user("khora")
    cid = await factory.conversation(user_id)
    await factory.message(cid, user_id, "user", "Bonjour")
    await db.execute(
        "INSERT INTO kb_documents (source, path, content_hash, chunk_count, conversation_id, user_id)"
        " VALUES ('f.txt', 'f.txt', 'h', 1, $1, $2)",
        cid,
        user_id,
    )
    first = await last_audit_id(db)
    r = await client.delete(
        "/webhook/wibot/admin/users", json={"user_id": user_id}, headers=bearer(admin, "chef", "admin")
    )
    assert r.status == 200, await r.text()
    for table in ("conversations", "messages", "kb_documents"):
        assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE user_id = $1", user_id) == 0  # noqa: S608
    [row] = await trail_since(db, first)
    assert (row["action"], row["actor_id"], row["target"]) == (audit.USER_DELETED, admin, str(user_id))
    assert "khora" not in json.dumps(dict(row), default=str)


async def test_logins_logouts_and_admin_actions_are_in_the_trail_readable_by_admins(make_client, settings, db, factory):
    client = await make_client(auth_app(settings))
    admin = await factory.user("chef", "motdepasse1", role="admin")
    user_id = await factory.user("khora", "motdepasse2")
    first = await last_audit_id(db)
    login = "/webhook/auth/login"
    assert (await client.post(login, json={"username": "khora", "password": "faux-mot-de-passe"})).status == 401
    assert (await client.post(login, json={"username": "inconnu", "password": "faux-mot-de-passe"})).status == 401
    r = await client.post(login, json={"username": "khora", "password": "motdepasse2"})
    token = (await r.json())["token"]
    assert (await client.post("/webhook/auth/logout", headers={"Authorization": f"Bearer {token}"})).status == 200
    admin_headers = bearer(admin, "chef", "admin")
    change = {"user_id": user_id, "role": "admin", "accreditation_level": "N3", "quota_tokens": 90_000}
    assert (await client.put("/webhook/wibot/admin/users", json=change, headers=admin_headers)).status == 200
    off = {"user_id": user_id, "is_active": False}
    assert (await client.put("/webhook/wibot/admin/users", json=off, headers=admin_headers)).status == 200

    rows = await trail_since(db, first)
    assert [(r["action"], r["actor_id"], r["target"]) for r in rows] == [
        (audit.LOGIN_FAILED, None, str(user_id)),
        (audit.LOGIN_FAILED, None, None),  # an unknown username is not kept: it may be a password
        (audit.LOGIN, user_id, str(user_id)),
        (audit.LOGOUT, user_id, None),
        (audit.USER_CHANGED, admin, str(user_id)),
        (audit.USER_DEACTIVATED, admin, str(user_id)),
    ]
    assert rows[4]["details"] == {"role": "admin", "accreditation_level": "N3", "quota_tokens": 90_000}
    assert all(r["request_id"] for r in rows)
    assert "faux-mot-de-passe" not in json.dumps([dict(r) for r in rows], default=str)

    r = await client.get(AUDIT, params={"action": "login_failed", "limit": "1"}, headers=admin_headers)
    page = await r.json()
    assert r.status == 200 and [row["audit_id"] for row in page["rows"]] == [rows[1]["audit_id"]]
    r = await client.get(
        AUDIT, params={"action": "login_failed", "before_id": page["next_before_id"]}, headers=admin_headers
    )
    assert [row["audit_id"] for row in (await r.json())["rows"]] == [rows[0]["audit_id"]]
    r = await client.get(AUDIT, params={"user_id": str(admin)}, headers=admin_headers)
    assert {row["action"] for row in (await r.json())["rows"]} == {audit.USER_CHANGED, audit.USER_DEACTIVATED}
    for bad in ({"user_id": "-1488264819304"}, {"before_id": "0"}, {"limit": "501"}):  # schemathesis found the first
        r = await client.get(AUDIT, params=bad, headers=admin_headers)
        assert (r.status, (await r.json())["code"]) == (400, "VALIDATION_ERROR"), bad
    someone = await factory.user("quelquun")
    assert (await client.get(AUDIT, headers=bearer(someone, "quelquun"))).status == 403


async def data_cli(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "DATABASE_URL": database_url, "JWT_SECRET": TEST_SECRET}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.conversations", "data", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_the_data_cli_exports_purges_dry_and_reads_the_trail(database_url, db, factory):
    user_id = await factory.user("khora")
    cid = await factory.conversation(user_id, title="Ancienne", updated_at="2020-01-01T00:00:00Z")
    await factory.message(cid, user_id, "user", "Bonjour")
    rc, out, err = await data_cli(database_url, "export", "khora")
    assert rc == 0, err
    assert json.loads(out)["conversations"][0]["title"] == "Ancienne"
    rc, out, err = await data_cli(database_url, "purge", "--dry-run")
    assert rc == 0 and "0 conversations" in out  # RETENTION_DAYS unset: kept for ever
    rc, out, err = await data_cli(database_url, "audit", "--action", "data_export", "--limit", "1")
    assert rc == 0 and json.loads(out)["target"] == str(user_id)
    rc, out, err = await data_cli(database_url, "verify")
    assert rc == 0 and "intacte" in out, err
