"""db/schema.sql: idempotent, compatible with a database created from the spec, UTC whatever the timezone."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from devtools.stack import with_database
from shared import apply_schema, create_pool
from shared.contracts import format_utc
from tests.conftest import SERVER_URL, make_settings

# The spec's DDL, verbatim in substance (NOW() defaults, its indexes, its trigger): what an n8n site runs today.
SPEC_DDL = """
CREATE TABLE users (user_id SERIAL PRIMARY KEY, username VARCHAR(100) UNIQUE NOT NULL,
  password_hash VARCHAR(255) NOT NULL, email VARCHAR(255), role VARCHAR(50) DEFAULT 'user',
  created_at TIMESTAMP DEFAULT NOW(), is_active BOOLEAN DEFAULT true);
CREATE TABLE conversations (conversation_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id INTEGER REFERENCES users(user_id), title VARCHAR(255), created_at TIMESTAMP DEFAULT NOW(),
  updated_at TIMESTAMP DEFAULT NOW());
CREATE TABLE messages (message_id SERIAL PRIMARY KEY,
  conversation_id UUID REFERENCES conversations(conversation_id) ON DELETE CASCADE,
  user_id INTEGER REFERENCES users(user_id), role VARCHAR(20) NOT NULL CHECK (role IN ('user', 'assistant')),
  content TEXT NOT NULL, tokens INTEGER DEFAULT 0, attachments JSONB, created_at TIMESTAMP DEFAULT NOW());
CREATE TABLE user_token_usage (usage_id SERIAL PRIMARY KEY, user_id INTEGER REFERENCES users(user_id),
  month DATE NOT NULL, used_tokens BIGINT DEFAULT 0, quota_tokens BIGINT DEFAULT 50000, UNIQUE(user_id, month));
CREATE INDEX idx_conversations_user ON conversations(user_id, updated_at DESC);
CREATE INDEX idx_messages_conversation ON messages(conversation_id, created_at DESC);
CREATE INDEX idx_messages_user ON messages(user_id);
CREATE INDEX idx_token_usage_user_month ON user_token_usage(user_id, month);
CREATE OR REPLACE FUNCTION update_updated_at_column() RETURNS TRIGGER AS $$
BEGIN NEW.updated_at = NOW(); RETURN NEW; END; $$ LANGUAGE plpgsql;
CREATE TRIGGER update_conversation_timestamp BEFORE UPDATE ON conversations
FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
"""

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


async def test_applying_the_schema_twice_changes_nothing(db):
    before = (await db.fetch(COLUMNS_SQL), await db.fetch(INDEXES_SQL))
    await apply_schema(db)
    await apply_schema(db)
    assert (await db.fetch(COLUMNS_SQL), await db.fetch(INDEXES_SQL)) == before
    tables = {r["table_name"] for r in before[0]}
    assert {"users", "conversations", "messages", "user_token_usage"} <= tables


async def test_schema_upgrades_a_database_created_from_the_spec_keeping_its_data(scratch_db):
    _, url = scratch_db
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SPEC_DDL)
        spec_columns = {(r["table_name"], r["column_name"], r["data_type"]) for r in await conn.fetch(COLUMNS_SQL)}
        await conn.execute("INSERT INTO users (username, password_hash) VALUES ('khora', 'x')")
        await apply_schema(conn)
        ours = {(r["table_name"], r["column_name"], r["data_type"]) for r in await conn.fetch(COLUMNS_SQL)}
        assert spec_columns <= ours  # every spec column is still there, with its type
        assert await conn.fetchval("SELECT username FROM users") == "khora"
    finally:
        await conn.close()


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
    admin = await asyncpg.connect(url)
    await apply_schema(admin)
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
