"""The migrated schema: the spec's columns, its constraints, UTC whatever the timezone (upgrades: test_migrations)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from devtools.stack import with_database
from shared import apply_migrations, create_pool
from shared.contracts import format_utc
from tests.conftest import SERVER_URL, make_settings

COLUMNS_SQL = """
SELECT table_name, column_name, data_type, is_nullable
FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, ordinal_position
"""
INDEXES_SQL = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname"


@pytest.fixture
async def scratch_db():
    name = f"wibot_scratch_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(SERVER_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(SERVER_URL, name)
    try:
        yield name, url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_fresh_schema_has_exactly_the_spec_columns(db):
    ours = {(r["table_name"], r["column_name"], r["data_type"]) for r in await db.fetch(COLUMNS_SQL)}
    spec = (
        {
            ("users", c, t)
            for c, t in [
                ("user_id", "integer"),
                ("username", "character varying"),
                ("password_hash", "character varying"),
                ("email", "character varying"),
                ("role", "character varying"),
                ("created_at", "timestamp without time zone"),
                ("is_active", "boolean"),
            ]
        }
        | {
            ("conversations", c, t)
            for c, t in [
                ("conversation_id", "uuid"),
                ("user_id", "integer"),
                ("title", "character varying"),
                ("created_at", "timestamp without time zone"),
                ("updated_at", "timestamp without time zone"),
            ]
        }
        | {
            ("messages", c, t)
            for c, t in [
                ("message_id", "integer"),
                ("conversation_id", "uuid"),
                ("user_id", "integer"),
                ("role", "character varying"),
                ("content", "text"),
                ("tokens", "integer"),
                ("attachments", "jsonb"),
                ("created_at", "timestamp without time zone"),
            ]
        }
        | {
            ("user_token_usage", c, t)
            for c, t in [
                ("usage_id", "integer"),
                ("user_id", "integer"),
                ("month", "date"),
                ("used_tokens", "bigint"),
                ("quota_tokens", "bigint"),
            ]
        }
    )
    assert spec <= ours


async def test_role_check_constraint_allows_only_user_and_assistant(db, factory):
    user_id = await factory.user()
    cid = await factory.conversation(user_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await factory.message(cid, user_id, "bot", "hello")


async def test_dates_are_utc_in_a_europe_paris_session(scratch_db):
    name, url = scratch_db
    await asyncio.to_thread(apply_migrations, url)
    admin = await asyncpg.connect(url)
    await admin.execute(f"ALTER DATABASE \"{name}\" SET timezone TO 'Europe/Paris'")
    await admin.close()

    # A writer that is not us (psql, an n8n node) in a Paris session, relying on the column defaults.
    paris = await asyncpg.connect(url)
    assert await paris.fetchval("SHOW timezone") == "Europe/Paris"
    await paris.execute("INSERT INTO users (username, password_hash) VALUES ('khora', 'x')")
    await paris.execute("INSERT INTO conversations (user_id, title) VALUES (1, 't')")
    await paris.execute("UPDATE conversations SET title = 'u'")  # the trigger sets updated_at
    created, updated = await paris.fetchrow("SELECT created_at, updated_at FROM conversations")
    await paris.close()

    # Our own pool on that database: its sessions are pinned to UTC.
    pool = await create_pool(make_settings(url), application_name="test")
    try:
        ours = await pool.fetchval("SELECT NOW()::timestamp")
        assert await pool.fetchval("SHOW timezone") == "UTC"
    finally:
        await pool.close()

    now = datetime.now(UTC).replace(tzinfo=None)
    for value in (created, updated, ours):
        assert abs((value - now).total_seconds()) < 60, (value, now)  # Paris is 1 or 2 hours away
    assert format_utc(created).endswith("Z")


def test_format_utc_converts_aware_values_and_keeps_naive_utc():
    from zoneinfo import ZoneInfo

    paris = datetime(2024, 12, 25, 15, 30, 0, tzinfo=ZoneInfo("Europe/Paris"))
    assert format_utc(paris) == "2024-12-25T14:30:00Z"
    assert format_utc(datetime(2024, 12, 25, 14, 30, 0, 999_999)) == "2024-12-25T14:30:00Z"


async def test_make_run_prepares_a_fresh_database_with_the_demo_user(scratch_db):
    import bcrypt

    from devtools.stack import ensure_database

    _, url = scratch_db
    missing = url + "_new"  # a database the server does not have yet: created, then prepared
    await ensure_database(missing)
    await ensure_database(missing)  # twice is harmless
    conn = await asyncpg.connect(missing)
    try:
        rows = await conn.fetch("SELECT username, role, is_active, password_hash FROM users")
    finally:
        await conn.close()
        admin = await asyncpg.connect(SERVER_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{missing.rsplit("/", 1)[1]}" WITH (FORCE)')
        await admin.close()
    assert [(r["username"], r["role"], r["is_active"]) for r in rows] == [("khora", "admin", True)]
    assert bcrypt.checkpw(b"test123", rows[0]["password_hash"].encode())
