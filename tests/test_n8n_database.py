"""Moving from the n8n WIBOT: its database, built here with its own SQL (plain-text passwords, rows in every
table, n8n's chat memory table), is upgraded by the project's schema step (`python -m shared.migrate`), its
passwords hashed by `users migrate-passwords`, and then its people log in with their old passwords and find
their conversations, messages and token usage through the API."""

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
from services.conversations.app import create_app as conversations_app
from shared import apply_migrations, current_month
from tests.conftest import SERVER_URL, TEST_SECRET, make_settings

ROOT = Path(__file__).resolve().parent.parent
CONVERSATION = "550e8400-e29b-41d4-a716-446655440000"

# A real install's schema (its init.sql and migrations), and rows as n8n wrote them: the password in
# password_hash is the password itself.
N8N_INSTALL_SQL = """
CREATE TABLE users (user_id SERIAL PRIMARY KEY, username VARCHAR(100) UNIQUE NOT NULL,
  password_hash VARCHAR(255) NOT NULL, email VARCHAR(255), role VARCHAR(50) DEFAULT 'user',
  accreditation_level VARCHAR(2) DEFAULT 'N1',
  created_at TIMESTAMP DEFAULT NOW(), is_active BOOLEAN DEFAULT true);
ALTER TABLE users ADD CONSTRAINT check_accreditation_level
  CHECK (accreditation_level IN ('N0', 'N1', 'N2', 'N3', 'N4'));
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
CREATE TABLE n8n_chat_histories (id SERIAL PRIMARY KEY, session_id VARCHAR(255) NOT NULL, message JSONB NOT NULL);

INSERT INTO users (username, password_hash, email, role, accreditation_level, created_at) VALUES
  ('khora', 'test123', 'khora@widip.fr', 'admin', 'N4', '2025-06-01 08:00:00'),
  ('lea', 'Printemps2025!', 'lea@widip.fr', 'user', 'N2', '2025-06-02 08:00:00'),
  ('longpass', repeat('x', 80), NULL, 'user', 'N1', '2025-06-03 08:00:00');
INSERT INTO conversations (conversation_id, user_id, title, created_at, updated_at) VALUES
  ('550e8400-e29b-41d4-a716-446655440000', 2, 'Imprimante du 2e', '2025-07-01 14:00:00', '2025-07-01 14:30:02');
INSERT INTO messages (conversation_id, user_id, role, content, tokens, mode, files_count, created_at) VALUES
  ('550e8400-e29b-41d4-a716-446655440000', 2, 'user', 'L''imprimante ne répond plus', 0, 'flash', 1,
   '2025-07-01 14:30:00'),
  ('550e8400-e29b-41d4-a716-446655440000', 2, 'assistant', 'Vérifiez son adresse IP.', 120, 'flash', 0,
   '2025-07-01 14:30:02');
INSERT INTO n8n_chat_histories (session_id, message) VALUES
  ('2_550e8400-e29b-41d4-a716-446655440000', '{"type": "human", "data": {"content": "L''imprimante"}}'),
  ('2_550e8400-e29b-41d4-a716-446655440000', '{"type": "ai", "data": {"content": "Vérifiez son adresse IP."}}');
"""


@pytest.fixture
async def n8n_database(database_url):  # database_url: the session's logging set-up (JSON lines) comes with it
    admin = await asyncpg.connect(SERVER_URL)
    name = f"wibot_n8n_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(SERVER_URL, name)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(N8N_INSTALL_SQL)
        await conn.execute(
            "INSERT INTO user_token_usage (user_id, month, used_tokens, quota_tokens) VALUES (2, $1, 12450, 80000)",
            current_month(),
        )
    finally:
        await conn.close()
    try:
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def log_line(line: str) -> dict:
    return json.loads(line[line.index("{") :])


def run_module(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url, "JWT_SECRET": TEST_SECRET, "BCRYPT_ROUNDS": "4", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def memory_table(url: str) -> tuple[list, list]:
    conn = await asyncpg.connect(url)
    try:
        columns = await conn.fetch(
            "SELECT column_name, data_type, column_default FROM information_schema.columns"
            " WHERE table_name = 'n8n_chat_histories' ORDER BY ordinal_position"
        )
        rows = await conn.fetch("SELECT id, session_id, message::text FROM n8n_chat_histories ORDER BY id")
        return [tuple(c) for c in columns], [tuple(r) for r in rows]
    finally:
        await conn.close()


async def test_a_running_n8n_install_moves_over_with_its_people_and_history(n8n_database, aiohttp_client, capsys):
    url = n8n_database
    memory_before = await memory_table(url)

    migrated = await asyncio.to_thread(run_module, url, "shared.migrate")
    assert migrated.returncode == 0, migrated.stderr

    settings = make_settings(url)
    auth = await aiohttp_client(auth_app(settings))
    warning = [log_line(line) for line in capsys.readouterr().out.splitlines() if "plain_text_passwords" in line]
    assert len(warning) == 1 and warning[0]["users"] == 3
    assert "migrate-passwords" in warning[0]["hint"]

    # Before the command: the old password is refused like any wrong one (never compared as plain text),
    # and the log says which user and what to run.
    r = await auth.post("/webhook/auth/login", json={"username": "lea", "password": "Printemps2025!"})
    assert r.status == 401
    assert (await r.json())["code"] == "INVALID_CREDENTIALS"
    logged = [log_line(line) for line in capsys.readouterr().out.splitlines() if "legacy_password_login" in line]
    assert [(entry["user_id"], entry["level"]) for entry in logged] == [(2, "warning")]
    assert "Printemps2025!" not in json.dumps(logged)

    done = await asyncio.to_thread(run_module, url, "services.auth", "users", "migrate-passwords")
    assert done.returncode == 0, done.stderr
    assert "Mots de passe en clair hachés : 2" in done.stdout
    assert "Trop longs pour bcrypt (72 octets), laissés tels quels : 1" in done.stdout
    for secret in ("test123", "Printemps2025!", "x" * 80):
        assert secret not in done.stdout + done.stderr
    again = await asyncio.to_thread(run_module, url, "services.auth", "users", "migrate-passwords")
    assert "Mots de passe en clair hachés : 0" in again.stdout  # idempotent

    r = await auth.post("/webhook/auth/login", json={"username": "lea", "password": "Printemps2025!"})
    assert r.status == 200, await r.text()
    login = await r.json()
    assert login["user"] == {"id": 2, "username": "lea", "role": "user"}
    headers = {"Authorization": f"Bearer {login['token']}"}

    conversations = await aiohttp_client(conversations_app(settings))
    r = await conversations.get("/webhook/wibot/conversations", headers=headers)
    assert (await r.json())["conversations"] == [
        {
            "conversation_id": CONVERSATION,
            "title": "Imprimante du 2e",
            "updated_at": "2025-07-01T14:30:02Z",
            "message_count": 2,
        }
    ]
    r = await conversations.get(f"/webhook/wibot/conversations/{CONVERSATION}/messages", headers=headers)
    messages = (await r.json())["messages"]
    assert [(m["role"], m["content"], m["created_at"]) for m in messages] == [
        ("user", "L'imprimante ne répond plus", "2025-07-01T14:30:00Z"),
        ("assistant", "Vérifiez son adresse IP.", "2025-07-01T14:30:02Z"),
    ]
    r = await conversations.get("/webhook/wibot/user/tokens", headers=headers)
    usage = await r.json()
    assert (usage["used_tokens"], usage["quota_tokens"]) == (12450, 80000)

    # The admin logs in with the old password too and keeps the level n8n gave them.
    r = await auth.post("/webhook/auth/login", json={"username": "khora", "password": "test123"})
    admin_headers = {"Authorization": f"Bearer {(await r.json())['token']}"}
    r = await auth.get("/webhook/wibot/admin/users", headers=admin_headers)
    assert {u["username"]: u["accreditation_level"] for u in (await r.json())["users"]} == {
        "khora": "N4",
        "lea": "N2",
        "longpass": "N1",
    }
    assert await memory_table(url) == memory_before  # n8n's memory table is left untouched


async def test_rows_of_a_database_that_ran_in_local_time_are_shown_in_utc(n8n_database, aiohttp_client):
    """EXISTING_ROWS_TIMEZONE=Europe/Paris for the first migrate: 14:30 Paris time in July is 12:30 UTC."""
    url = n8n_database
    migrated = await asyncio.to_thread(run_module, url, "shared.migrate", EXISTING_ROWS_TIMEZONE="Europe/Paris")
    assert migrated.returncode == 0, migrated.stderr
    # Run again with the setting: nothing left to apply, nothing converted twice.
    again = await asyncio.to_thread(run_module, url, "shared.migrate", EXISTING_ROWS_TIMEZONE="Europe/Paris")
    assert again.returncode == 0 and "0 applied now" in again.stdout

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE users SET password_hash = $1 WHERE username = 'lea'", bcrypt_hash("pw-lea-123"))
        created = await conn.fetchval("SELECT created_at FROM users WHERE username = 'lea'")
    finally:
        await conn.close()
    assert created.isoformat() == "2025-06-02T06:00:00"  # 08:00 in Paris (summer time)

    settings = make_settings(url)
    auth = await aiohttp_client(auth_app(settings))
    r = await auth.post("/webhook/auth/login", json={"username": "lea", "password": "pw-lea-123"})
    headers = {"Authorization": f"Bearer {(await r.json())['token']}"}
    conversations = await aiohttp_client(conversations_app(settings))
    r = await conversations.get(f"/webhook/wibot/conversations/{CONVERSATION}/messages", headers=headers)
    assert [m["created_at"] for m in (await r.json())["messages"]] == ["2025-07-01T12:30:00Z", "2025-07-01T12:30:02Z"]
    r = await conversations.get("/webhook/wibot/conversations", headers=headers)
    assert (await r.json())["conversations"][0]["updated_at"] == "2025-07-01T12:30:02Z"


async def test_a_database_already_ours_is_never_shifted(n8n_database):
    """The setting only applies to the run that adopts a database: rows written by these services are UTC."""
    url = n8n_database
    await asyncio.to_thread(apply_migrations, url, upto="0006-accreditation-level")
    await asyncio.to_thread(apply_migrations, url, existing_rows_timezone="Europe/Paris")
    conn = await asyncpg.connect(url)
    try:
        assert (await conn.fetchval("SELECT created_at FROM messages ORDER BY message_id LIMIT 1")).isoformat() == (
            "2025-07-01T14:30:00"
        )
    finally:
        await conn.close()


def test_an_unknown_time_zone_is_refused_before_touching_the_database():
    result = run_module("postgresql://postgres@127.0.0.1:9/none", "shared.migrate", EXISTING_ROWS_TIMEZONE="Paris")
    assert result.returncode == 2
    assert "unknown time zone 'Paris'" in result.stderr


def bcrypt_hash(password: str) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
