"""`python -m services.auth users ...` against the test database, then the login service sees the result."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from services.auth.app import create_app
from tests.conftest import TEST_SECRET

LOGIN = "/webhook/auth/login"


async def users_cli(database_url: str, *args: str, stdin: str = "") -> tuple[int, str, str]:
    env = {**os.environ, "DATABASE_URL": database_url, "JWT_SECRET": TEST_SECRET, "BCRYPT_ROUNDS": "4"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.auth",
        "users",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def client(make_client, settings):
    return await make_client(create_app(settings))


async def login(client, username: str, password: str) -> int:
    r = await client.post(LOGIN, json={"username": username, "password": password})
    return r.status


async def test_operator_lifecycle_without_sql(client, database_url, db):
    code, _, err = await users_cli(database_url, "create", "root", "--role", "admin", stdin="root-password\n")
    assert code == 0, err
    code, out, err = await users_cli(
        database_url, "create", "alice", "--role", "admin", "--email", "a@widip.fr", stdin="s3cret-pw\n"
    )
    assert code == 0, err
    assert "Utilisateur créé : alice" in out
    assert await db.fetchrow("SELECT role, email, is_active FROM users WHERE username = 'alice'") == (
        "admin",
        "a@widip.fr",
        True,
    )
    assert await login(client, "alice", "s3cret-pw") == 200

    code, _, err = await users_cli(database_url, "create", "alice", stdin="other-pw\n")
    assert code == 1 and "existe déjà" in err
    code, out, _ = await users_cli(database_url, "create", "alice", "--if-missing", stdin="other-pw\n")
    assert code == 0 and "rien à faire" in out

    code, _, err = await users_cli(database_url, "set-password", "alice", stdin="n3w-password\n")
    assert code == 0, err
    assert await login(client, "alice", "s3cret-pw") == 401
    assert await login(client, "alice", "n3w-password") == 200

    code, out, _ = await users_cli(database_url, "list")
    assert code == 0 and "alice" in out and "admin" in out and "oui" in out

    code, _, err = await users_cli(database_url, "deactivate", "alice")
    assert code == 0, err
    assert await login(client, "alice", "n3w-password") == 401
    code, out, _ = await users_cli(database_url, "list")
    assert "non" in out

    code, _, err = await users_cli(database_url, "deactivate", "root")
    assert code == 1 and "dernier administrateur actif" in err  # the CLI and the admin API share the rule


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("create", "bob"), "abc\n", "au moins 6 caractères"),
        (("create", "bob"), "é" * 40 + "\n", "72 octets"),
        (("set-password", "ghost"), "abcdefgh\n", "Utilisateur inconnu : ghost"),
        (("deactivate", "ghost"), "", "Utilisateur inconnu : ghost"),
    ],
)
async def test_cli_refuses_bad_requests_clearly(database_url, db, args, stdin, message):
    code, _, err = await users_cli(database_url, *args, stdin=stdin)
    assert code == 1
    assert message in err
    assert await db.fetchval("SELECT count(*) FROM users") == 0
