"""db/migrations with yoyo: every shape of database a site runs reaches the current version without losing a row.

Assumes the local PostgreSQL server (tests/conftest.py); each test works in its own scratch database. A database's
"catalog" here is what a migration may change: columns (type, default, nullability), indexes, constraints,
triggers and functions of the public schema, yoyo's own bookkeeping tables left out.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from devtools.stack import with_database
from services.auth.app import create_app as auth_app
from shared import DatabaseBehind, apply_migrations
from shared.migrations import MIGRATIONS_DIR, YOYO_TABLES, known_migrations, missing_migrations
from tests.conftest import SERVER_URL, TEST_SECRET, make_settings

ROOT = Path(__file__).resolve().parent.parent

# The spec's DDL in substance (NOW() defaults, its indexes, its trigger): what a spec-built site runs today.
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

# The shape of a real WIBOT n8n database (its init.sql and two manual migrations): cascading foreign keys, an
# accreditation level with its CHECK, message metadata columns, an ascending conversation index, and its
# plain-text demo passwords.
N8N_DDL = """
CREATE TABLE users (user_id SERIAL PRIMARY KEY, username VARCHAR(100) UNIQUE NOT NULL,
  password_hash VARCHAR(255) NOT NULL, email VARCHAR(255), role VARCHAR(50) DEFAULT 'user',
  accreditation_level VARCHAR(2) DEFAULT 'N1' CHECK (accreditation_level IN ('N0','N1','N2','N3','N4')),
  created_at TIMESTAMP DEFAULT NOW(), is_active BOOLEAN DEFAULT true);
CREATE TABLE conversations (conversation_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id INTEGER REFERENCES users(user_id) ON DELETE CASCADE, title VARCHAR(255),
  created_at TIMESTAMP DEFAULT NOW(), updated_at TIMESTAMP DEFAULT NOW());
CREATE TABLE messages (message_id SERIAL PRIMARY KEY,
  conversation_id UUID REFERENCES conversations(conversation_id) ON DELETE CASCADE,
  user_id INTEGER REFERENCES users(user_id), role VARCHAR(20) NOT NULL CHECK (role IN ('user', 'assistant')),
  content TEXT NOT NULL, tokens INTEGER DEFAULT 0, attachments JSONB, mode VARCHAR(20) DEFAULT 'flash',
  rag_used BOOLEAN DEFAULT false, files_count INTEGER DEFAULT 0, created_at TIMESTAMP DEFAULT NOW());
CREATE TABLE user_token_usage (usage_id SERIAL PRIMARY KEY,
  user_id INTEGER REFERENCES users(user_id) ON DELETE CASCADE, month DATE NOT NULL,
  used_tokens BIGINT DEFAULT 0, quota_tokens BIGINT DEFAULT 50000, UNIQUE(user_id, month));
CREATE INDEX idx_conversations_user ON conversations(user_id, updated_at DESC);
CREATE INDEX idx_messages_conversation ON messages(conversation_id, created_at ASC);
CREATE INDEX idx_messages_user ON messages(user_id);
CREATE INDEX idx_token_usage_user_month ON user_token_usage(user_id, month);
CREATE INDEX idx_messages_mode ON messages(mode);
CREATE INDEX idx_messages_created_at ON messages(created_at);
CREATE OR REPLACE FUNCTION update_updated_at_column() RETURNS TRIGGER AS $$
BEGIN NEW.updated_at = NOW(); RETURN NEW; END; $$ LANGUAGE plpgsql;
CREATE TRIGGER update_conversation_timestamp BEFORE UPDATE ON conversations
FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
"""

# Rows for the spec's four tables (every spec database has them).
SPEC_ROWS = """
INSERT INTO users (username, password_hash, email, role, created_at)
  VALUES ('khora', '$2b$10$abcdefghijklmnopqrstuuJ7aW0Y9C5gI7b6cQ4c8x9Yz1234567', 'k@widip.fr', 'admin',
          '2025-01-02 03:04:05'), ('lea', 'test123', NULL, 'user', '2025-02-03 04:05:06');
INSERT INTO conversations (conversation_id, user_id, title, created_at, updated_at)
  VALUES ('550e8400-e29b-41d4-a716-446655440000', 1, 'Imprimante', '2025-03-01 10:00:00', '2025-03-01 10:05:00'),
         ('770f9622-a4bd-41d4-a716-446655440002', 2, NULL, '2025-03-02 10:00:00', '2025-03-02 10:00:00');
INSERT INTO messages (conversation_id, user_id, role, content, tokens, attachments, created_at)
  VALUES ('550e8400-e29b-41d4-a716-446655440000', 1, 'user', 'Bonjour', 3,
          '[{"name": "a.txt", "size": 12}]', '2025-03-01 10:00:00'),
         ('550e8400-e29b-41d4-a716-446655440000', 1, 'assistant', 'Bonjour ! Comment puis-je aider ?', 9, NULL,
          '2025-03-01 10:00:02');
INSERT INTO user_token_usage (user_id, month, used_tokens, quota_tokens)
  VALUES (1, '2025-03-01', 12450, 50000), (2, '2025-03-01', 0, 100000);
"""

# Rows for every table a migration creates, keyed by the migration that creates it: a test below checks
# that every table holds rows before each migration, so a new table without rows here fails it.
ROWS_BY_MIGRATION = {
    "0019-rate-limit-rates": """
INSERT INTO rate_limits (user_id, action, due_at) VALUES (1, 'chat', '2025-03-20 12:00:02+00');
""",
    "0017-audit-trail": """
INSERT INTO audit_log (actor_id, action, target) VALUES (1, 'login', '1');
INSERT INTO audit_anchor (audit_id, hash) VALUES (0, '\\x00');
""",
    "0011-conversation-message-count": """
INSERT INTO conversations (conversation_id, user_id, title)
  VALUES ('33333333-3333-4333-8333-333333333333', 1, 'Après 0011');
INSERT INTO messages (conversation_id, user_id, role, content)
  VALUES ('33333333-3333-4333-8333-333333333333', 1, 'user', 'compté par le trigger');
""",
    "0010-knowledge-base": """
INSERT INTO kb_documents (document_id, source, category, path, content_hash, chunk_count)
  VALUES (1, 'vpn.md', 'procedures', 'procedures/vpn.md', repeat('b', 64), 1);
INSERT INTO kb_chunks (document_id, position, content, embedding) VALUES (1, 0, 'Connexion VPN', '{0.6,0.8}');
""",
    "0005-rate-limits": """
INSERT INTO rate_limit_windows (user_id, action, window_start, hits) VALUES (1, 'chat', '2025-03-20 12:00:00', 3);
""",
    "0003-unsaved-charges": """
INSERT INTO unsaved_charges (reservation_id, user_id, month, tokens, reason)
  VALUES ('22222222-2222-4222-8222-222222222222', 1, '2025-03-01', 420, 'save_failed');
""",
    "0001-baseline": SPEC_ROWS
    + """
INSERT INTO revoked_tokens (token_sha256, user_id, expires_at) VALUES (repeat('a', 64), 1, '2030-01-01');
INSERT INTO user_token_revocations (user_id, not_before) VALUES (2, '2025-03-01 09:00:00');
INSERT INTO quota_alerts (user_id, month, threshold, sent_at) VALUES (1, '2025-03-01', 80, '2025-03-20 12:00:00');
INSERT INTO token_reservations (reservation_id, user_id, month, tokens, created_at)
  VALUES ('11111111-1111-4111-8111-111111111111', 1, '2025-03-01', 2100, '2025-03-20 12:00:00');
""",
}

# Values a migration is meant to change in existing rows: {migration: {table: {column, ...}}}.
INTENDED_CHANGES: dict[str, dict[str, set[str]]] = {}

CATALOG_QUERIES = {
    "columns": """
        SELECT table_name, column_name, data_type, character_maximum_length, is_nullable, column_default
        FROM information_schema.columns WHERE table_schema = 'public' AND NOT (table_name = ANY($1::text[]))
        ORDER BY 1, 2""",
    "indexes": """
        SELECT indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND NOT (tablename = ANY($1::text[])) ORDER BY 1""",
    "constraints": """
        SELECT rel.relname, con.conname, pg_get_constraintdef(con.oid) FROM pg_constraint con
        JOIN pg_class rel ON rel.oid = con.conrelid JOIN pg_namespace n ON n.oid = rel.relnamespace
        WHERE n.nspname = 'public' AND NOT (rel.relname = ANY($1::text[])) ORDER BY 1, 2""",
    "triggers": """
        SELECT tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class rel ON rel.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = rel.relnamespace WHERE n.nspname = 'public' AND NOT t.tgisinternal
          AND cardinality($1::text[]) >= 0 ORDER BY 1""",
    "functions": """
        SELECT proname, prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND cardinality($1::text[]) >= 0 ORDER BY 1""",
}


async def catalog(conn: asyncpg.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {
        name: [tuple(row) for row in await conn.fetch(sql, list(YOYO_TABLES))] for name, sql in CATALOG_QUERIES.items()
    }


async def tables(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND NOT (tablename = ANY($1::text[])) ORDER BY 1",
        list(YOYO_TABLES),
    )
    return [row["tablename"] for row in rows]


async def rows(conn: asyncpg.Connection) -> dict[str, list[dict[str, object]]]:
    """Every row of every table, as JSON objects, in a stable order."""
    snapshot = {}
    for table in await tables(conn):
        values = await conn.fetch(f'SELECT to_jsonb(t)::text AS row FROM "{table}" AS t')  # noqa: S608
        snapshot[table] = sorted((json.loads(v["row"]) for v in values), key=lambda r: json.dumps(r, sort_keys=True))
    return snapshot


def assert_rows_kept(before: dict, after: dict, *, changed: dict[str, set[str]] | None = None) -> None:
    """Every row before is still there with the same values, new columns aside (and the intended changes)."""
    changed = changed or {}
    for table, old_rows in before.items():
        assert table in after, f"table {table} disappeared"
        skip = changed.get(table, set())
        old = sorted(json.dumps({k: v for k, v in r.items() if k not in skip}, sort_keys=True) for r in old_rows)
        new = sorted(
            json.dumps({k: v for k, v in r.items() if k in old_rows[0] and k not in skip}, sort_keys=True)
            for r in after[table]
        )
        assert new == old, f"rows of {table} changed"


@pytest.fixture
async def scratch():
    """A factory of empty databases on the test server, dropped at the end."""
    admin = await asyncpg.connect(SERVER_URL)
    names: list[str] = []

    async def create() -> str:
        name = f"wibot_mig_{uuid.uuid4().hex[:10]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        return with_database(SERVER_URL, name)

    try:
        yield create
    finally:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def migrate(url: str, *, upto: str | None = None) -> list[str]:
    return await asyncio.to_thread(apply_migrations, url, upto=upto)


async def test_a_fresh_database_gets_every_migration_once(scratch):
    url = await scratch()
    assert await migrate(url) == known_migrations()
    conn = await asyncpg.connect(url)
    try:
        assert await missing_migrations(conn) == []
        before = await catalog(conn)
        assert await migrate(url) == []  # run twice: nothing to do
        assert await catalog(conn) == before
        assert {"users", "conversations", "messages", "user_token_usage"} <= set(await tables(conn))
    finally:
        await conn.close()


async def test_migration_files_run_again_by_hand_change_nothing(scratch):
    """Someone pipes a migration into psql again: every file is idempotent, schema and rows untouched."""
    url = await scratch()
    await migrate(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(ROWS_BY_MIGRATION["0001-baseline"])
        before = (await catalog(conn), await rows(conn))
        for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
            await conn.execute(path.read_text(encoding="utf-8"))
        assert (await catalog(conn), await rows(conn)) == before
    finally:
        await conn.close()


async def _fresh_catalog(scratch) -> dict:
    url = await scratch()
    await migrate(url)
    conn = await asyncpg.connect(url)
    try:
        return await catalog(conn)
    finally:
        await conn.close()


@pytest.mark.parametrize("shape", ["spec", "n8n"])
async def test_an_existing_site_database_is_upgraded_in_place(scratch, shape):
    ddl = {"spec": SPEC_DDL, "n8n": N8N_DDL}[shape]
    url = await scratch()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(ddl)
        await conn.execute(SPEC_ROWS)
        if shape == "n8n":
            await conn.execute("UPDATE users SET accreditation_level = 'N4' WHERE role = 'admin'")
            await conn.execute("UPDATE messages SET mode = 'code', files_count = 1 WHERE role = 'user'")
        site_columns = {(r[0], r[1], r[2]) for r in (await catalog(conn))["columns"]}
        before = await rows(conn)
        assert await missing_migrations(conn) == known_migrations()

        assert await migrate(url) == known_migrations()

        assert await missing_migrations(conn) == []
        assert_rows_kept(before, await rows(conn))
        ours = await catalog(conn)
        assert site_columns <= {(r[0], r[1], r[2]) for r in ours["columns"]}  # nothing of the site's dropped
        fresh = await _fresh_catalog(scratch)
        if shape == "spec":  # the spec's database ends exactly like one we created
            assert ours == fresh
        else:  # n8n's extras stay; everything we need is there
            assert {(r[0], r[1], r[2]) for r in fresh["columns"]} <= {(r[0], r[1], r[2]) for r in ours["columns"]}
            assert {r[0] for r in fresh["indexes"]} <= {r[0] for r in ours["indexes"]}
        # Dates written by the database itself are UTC from now on, whatever the site's writers do.
        default = await conn.fetchval(
            "SELECT column_default FROM information_schema.columns WHERE table_name = 'messages'"
            " AND column_name = 'created_at'"
        )
        assert "UTC" in default
    finally:
        await conn.close()


async def test_a_database_made_by_the_former_schema_sql_is_adopted_without_change(scratch):
    """Before migrations, sites ran db/schema.sql, which is now 0001-baseline word for word in its SQL."""
    url = await scratch()
    former_schema_sql = (MIGRATIONS_DIR / "0001-baseline.sql").read_text(encoding="utf-8")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(former_schema_sql)
        await conn.execute(ROWS_BY_MIGRATION["0001-baseline"])
        before_catalog, before_rows = await catalog(conn), await rows(conn)
        assert await migrate(url, upto="0001-baseline") == ["0001-baseline"]
        assert (await catalog(conn), await rows(conn)) == (before_catalog, before_rows)
        assert await migrate(url) == known_migrations()[1:]
        assert_rows_kept(before_rows, await rows(conn))
    finally:
        await conn.close()


@pytest.mark.parametrize("migration", known_migrations()[1:])
async def test_each_migration_keeps_every_row_of_the_previous_version(scratch, migration):
    ids = known_migrations()
    previous = ids[ids.index(migration) - 1]
    url = await scratch()
    await migrate(url, upto=previous)
    conn = await asyncpg.connect(url)
    try:
        for applied in ids[: ids.index(migration)]:
            if applied in ROWS_BY_MIGRATION:
                await conn.execute(ROWS_BY_MIGRATION[applied])
        before = await rows(conn)
        empty = [table for table, values in before.items() if not values]
        assert not empty, f"add rows for {empty} to ROWS_BY_MIGRATION"

        assert await migrate(url, upto=migration) == [migration]

        assert_rows_kept(before, await rows(conn), changed=INTENDED_CHANGES.get(migration))
    finally:
        await conn.close()


async def test_message_metadata_defaults_for_existing_messages(scratch):
    url = await scratch()
    await migrate(url, upto="0001-baseline")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SPEC_ROWS)
        await migrate(url, upto="0002-message-metadata")
        metadata = await conn.fetch("SELECT DISTINCT mode, rag_used, files_count FROM messages")
        assert [tuple(r) for r in metadata] == [("flash", False, 0)]
    finally:
        await conn.close()


COUNTS_SQL = """
SELECT c.conversation_id, (SELECT count(*) FROM messages m WHERE m.conversation_id = c.conversation_id) AS actual,
       k.message_count AS kept, c.updated_at
FROM conversations c LEFT JOIN conversation_message_counts k USING (conversation_id) ORDER BY 1
"""


async def test_message_counts_are_filled_for_existing_conversations_and_kept_by_any_writer(scratch):
    url = await scratch()
    await migrate(url, upto="0010-knowledge-base")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SPEC_ROWS)
        updated_before = {r["conversation_id"]: r["updated_at"] for r in await conn.fetch(
            "SELECT conversation_id, updated_at FROM conversations")}  # fmt: skip
        await migrate(url, upto="0011-conversation-message-count")
        counted = await conn.fetch(COUNTS_SQL)
        assert counted and all(r["actual"] == (r["kept"] or 0) for r in counted)
        assert any(r["actual"] > 0 for r in counted)
        # The backfill wrote a table of its own: no conversation moved in the list (updated_at untouched).
        assert {r["conversation_id"]: r["updated_at"] for r in counted} == updated_before

        first, *others = [r["conversation_id"] for r in counted]
        await conn.execute(
            "INSERT INTO messages (conversation_id, user_id, role, content)"
            " SELECT $1, user_id, 'user', 'x' FROM conversations WHERE conversation_id = $1"
            " UNION ALL SELECT $1, user_id, 'assistant', 'y' FROM conversations WHERE conversation_id = $1",
            first,
        )
        if others:
            await conn.execute(
                "UPDATE messages SET conversation_id = $2 WHERE message_id = (SELECT min(message_id) FROM messages"
                " WHERE conversation_id = $1)",
                first,
                others[0],
            )
        await conn.execute("DELETE FROM messages WHERE message_id = (SELECT max(message_id) FROM messages)")
        assert all(r["actual"] == (r["kept"] or 0) for r in await conn.fetch(COUNTS_SQL))
        await conn.execute("DELETE FROM conversations WHERE conversation_id = $1", first)
        assert await conn.fetchval("SELECT count(*) FROM conversation_message_counts WHERE conversation_id = $1",
                                   first) == 0  # fmt: skip
    finally:
        await conn.close()


async def test_chunks_indexed_before_0014_get_their_conversation_and_new_ones_cannot_miss_it(scratch):
    """0014 backfills each existing chunk's scope from its document (attachments: their conversation; the site's:
    NULL), and from then on the database sets it, whatever a writer sends."""
    url = await scratch()
    await migrate(url, upto="0013-kb-user-index")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SPEC_ROWS)
        conversation = "550e8400-e29b-41d4-a716-446655440000"
        site = await conn.fetchval(
            "INSERT INTO kb_documents (source, path, content_hash, chunk_count)"
            " VALUES ('vpn.md', 'vpn.md', repeat('a', 64), 1) RETURNING document_id"
        )
        attachment = await conn.fetchval(
            "INSERT INTO kb_documents (source, category, path, content_hash, chunk_count, conversation_id, user_id)"
            " VALUES ('rapport.pdf', 'attachment', 'rapport.pdf', repeat('b', 64), 2, $1, 1) RETURNING document_id",
            uuid.UUID(conversation),
        )
        await conn.execute(
            "INSERT INTO kb_chunks (document_id, position, content, embedding) VALUES"
            " ($1, 0, 'Connexion VPN', '{0.6,0.8}'), ($2, 0, 'Rapport', '{0.6,0.8}'), ($2, 1, 'Suite', '{0.8,0.6}')",
            site,
            attachment,
        )
        await migrate(url, upto="0014-kb-chunk-scope")
        scopes = await conn.fetch("SELECT document_id, conversation_id FROM kb_chunks ORDER BY chunk_id")
        assert [(r["document_id"], r["conversation_id"]) for r in scopes] == [
            (site, None),
            (attachment, uuid.UUID(conversation)),
            (attachment, uuid.UUID(conversation)),
        ]
        # A writer that sends a wrong scope (or none) is corrected by the trigger.
        await conn.execute(
            "INSERT INTO kb_chunks (document_id, position, content, embedding, conversation_id)"
            " VALUES ($1, 2, 'Ajout', '{0.6,0.8}', NULL), ($2, 1, 'Autre', '{0.6,0.8}', $3)",
            attachment,
            site,
            uuid.uuid4(),
        )
        added = await conn.fetch(
            "SELECT document_id, conversation_id FROM kb_chunks WHERE position > 0 ORDER BY chunk_id"
        )
        assert [(r["document_id"], r["conversation_id"]) for r in added][-2:] == [
            (attachment, uuid.UUID(conversation)),
            (site, None),
        ]
    finally:
        await conn.close()


async def test_db_schema_sql_is_the_dump_of_a_migrated_database():
    """db/schema.sql is generated from the migrations (make schema), never edited: one source of truth."""
    from devtools.schema_dump import SCHEMA_FILE, generate

    assert SCHEMA_FILE.read_text(encoding="utf-8") == await asyncio.to_thread(generate), (
        "db/schema.sql is stale: run `make schema`"
    )


async def test_db_schema_sql_builds_the_same_tables_and_indexes(scratch):
    url = await scratch()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute((ROOT / "db" / "schema.sql").read_text(encoding="utf-8"))
        from_file = await catalog(conn)
    finally:
        await conn.close()
    migrated = await _fresh_catalog(scratch)
    # pg_dump re-spells CHECK constraints (IN (...) becomes = ANY (ARRAY[...])): compare their names only.
    assert {k: v for k, v in from_file.items() if k != "constraints"} == {
        k: v for k, v in migrated.items() if k != "constraints"
    }
    assert [c[:2] for c in from_file["constraints"]] == [c[:2] for c in migrated["constraints"]]


async def test_a_service_refuses_a_database_that_is_behind(scratch):
    url = await scratch()
    await migrate(url, upto="0001-baseline")
    app = auth_app(make_settings(url))
    runner_error = None
    from aiohttp import web

    runner = web.AppRunner(app)
    try:
        await runner.setup()
    except DatabaseBehind as exc:
        runner_error = exc
    finally:
        await runner.cleanup()
    assert runner_error is not None
    assert runner_error.missing == known_migrations()[1:]
    assert "make migrate" in str(runner_error)


def _run(module: str, url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url, "JWT_SECRET": TEST_SECRET, "DB_STARTUP_WAIT_S": "0"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def test_a_service_process_behind_exits_with_one_line_naming_make_migrate(scratch):
    url = await scratch()
    *previous, last = known_migrations()
    await migrate(url, upto=previous[-1])
    result = await asyncio.to_thread(_run, "services.conversations", url, "--port", "0")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    complaint = [line for line in result.stderr.splitlines() if "make migrate" in line]
    assert complaint == [
        f"conversations: refusing to start: the database lacks 1 migration(s) ({last}): run"
        " `make migrate` (python -m shared.migrate) and start again"
    ], result.stderr


async def test_make_migrate_prints_what_it_applied_and_check_reports_pending(scratch):
    url = await scratch()
    check = await asyncio.to_thread(_run, "shared.migrate", url, "--check")
    assert check.returncode == 1
    assert [line.split()[1] for line in check.stdout.splitlines() if line.startswith("pending")] == known_migrations()

    first = await asyncio.to_thread(_run, "shared.migrate", url)
    assert first.returncode == 0, first.stderr
    assert [line.split()[1] for line in first.stdout.splitlines() if line.startswith("applied")] == known_migrations()
    assert "password" not in first.stdout

    second = await asyncio.to_thread(_run, "shared.migrate", url)
    assert second.returncode == 0, second.stderr
    assert not [line for line in second.stdout.splitlines() if line.startswith("applied")]
    assert "0 applied now" in second.stdout
    assert (await asyncio.to_thread(_run, "shared.migrate", url, "--check")).returncode == 0


async def test_make_migrate_without_a_server_says_so_in_one_line():
    result = await asyncio.to_thread(_run, "shared.migrate", "postgresql://postgres:s3cret@127.0.0.1:9/wibot")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr
    assert result.stderr.startswith("Migration impossible sur 127.0.0.1:9/wibot"), result.stderr


async def test_two_migrate_runs_at_once_apply_each_migration_once(scratch):
    url = await scratch()
    first, second = await asyncio.gather(migrate(url), migrate(url))
    assert sorted(first + second) == known_migrations()
    conn = await asyncpg.connect(url)
    try:
        applied = await conn.fetch("SELECT migration_id FROM _yoyo_migration ORDER BY migration_id")
    finally:
        await conn.close()
    assert [r["migration_id"] for r in applied] == known_migrations()


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def test_readyz_says_the_database_is_behind_when_the_service_started_before_the_database(scratch, aiohttp_client):
    """DB_POOL_MIN=0: the service starts while the database is away; once it answers, /readyz checks migrations."""
    from urllib.parse import urlsplit, urlunsplit

    from devtools.stack import free_ports

    url = await scratch()
    await migrate(url, upto="0001-baseline")
    port = free_ports(1)[0]
    target = urlsplit(url)
    behind = urlunsplit(target._replace(netloc=f"{target.username or 'postgres'}@127.0.0.1:{port}"))
    assert behind != url
    client = await aiohttp_client(auth_app(make_settings(behind, db_pool_min=0)))
    r = await client.get("/readyz")
    assert (r.status, (await r.json())["code"]) == (503, "DB_UNAVAILABLE")

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(target.hostname, target.port)
        await asyncio.gather(_forward(reader, upstream_writer), _forward(upstream_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", port)  # the database "comes back"
    try:
        r = await client.get("/readyz")
        assert r.status == 503, await r.text()
        assert await r.json() == {
            "success": False,
            "error": "Base de données à mettre à jour : lancez `make migrate`.",
            "code": "SCHEMA_BEHIND",
        }
        await migrate(url)
        r = await client.get("/readyz")
        assert (r.status, await r.json()) == (200, {"success": True, "status": "ready"})
    finally:
        server.close()
