"""docs/RUNBOOK.md: every block marked `tested` runs as written on a throwaway database (backup, restore,
upgrade, a new secret, incident checks), and does what the runbook says."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from devtools.stack import with_database
from shared import apply_migrations
from tests.conftest import SERVER_URL, TEST_SECRET

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = (ROOT / "docs" / "RUNBOOK.md").read_text(encoding="utf-8")
BLOCKS = dict(re.findall(r"<!-- tested: ([\w-]+) -->\n```bash\n(.*?)```", RUNBOOK, flags=re.S))


def run_block(name: str, **env: str) -> subprocess.CompletedProcess[str]:
    venv = str(Path(sys.executable).parent)
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", BLOCKS[name]],
        cwd=ROOT,
        env={**os.environ, "PATH": f"{venv}:{os.environ['PATH']}", "JWT_SECRET": TEST_SECRET, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
async def site_database():
    admin = await asyncpg.connect(SERVER_URL)
    name = f"wibot_runbook_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(SERVER_URL, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def test_the_runbook_marks_its_commands():
    assert set(BLOCKS) == {"backup", "restore", "upgrade", "new-secret", "checks"}


async def test_backup_then_restore_brings_every_row_back(site_database, tmp_path):
    url = site_database
    await asyncio.to_thread(apply_migrations, url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO users (username, password_hash) VALUES ('lea', 'x')")
        cid = uuid.uuid4()
        await conn.execute("INSERT INTO conversations (conversation_id, user_id, title) VALUES ($1, 1, 't')", cid)
        await conn.execute(
            "INSERT INTO messages (conversation_id, user_id, role, content) VALUES ($1, 1, 'user', 'm')", cid
        )
        backup = tmp_path / "wibot.dump"
        done = await asyncio.to_thread(run_block, "backup", DATABASE_URL=url, BACKUP_FILE=str(backup))
        assert done.returncode == 0, done.stderr
        assert backup.stat().st_size > 0

        await conn.execute("DELETE FROM messages; DELETE FROM conversations")  # the incident
        restored = await asyncio.to_thread(run_block, "restore", DATABASE_URL=url, BACKUP_FILE=str(backup))
        assert restored.returncode == 0, restored.stderr  # and --check says the schema is current
        assert await conn.fetchval("SELECT count(*) FROM messages") == 1
        assert await conn.fetchval("SELECT title FROM conversations WHERE conversation_id = $1", cid) == "t"
    finally:
        await conn.close()


async def test_upgrade_applies_then_checks(site_database):
    result = await asyncio.to_thread(run_block, "upgrade", DATABASE_URL=site_database)
    assert result.returncode == 0, result.stderr
    assert "applied  0001-baseline" in result.stdout and "0 pending" in result.stdout


def test_the_new_secret_is_one_services_accept():
    result = run_block("new-secret")
    assert result.returncode == 0
    from shared import Settings

    secret = result.stdout.strip()
    settings = Settings(_env_file=None, jwt_secret=TEST_SECRET, jwt_secret_previous=secret)  # type: ignore[call-arg]
    assert settings.verification_secrets[1] == secret


async def test_incident_checks_run_on_a_current_database(site_database):
    await asyncio.to_thread(apply_migrations, site_database)
    result = await asyncio.to_thread(run_block, "checks", DATABASE_URL=site_database)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "0"  # no stale reservation
