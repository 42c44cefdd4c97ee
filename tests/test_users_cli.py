"""`python -m services.auth users ...` against the test database, then the login service sees the result."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

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


@pytest.mark.parametrize(
    "username",
    [
        "a",  # too short
        "x" * 65,  # too long
        "bob smith",  # space
        "bob\r\nadmin",  # CR/LF: a forged log or terminal line
        "\x1b[31mroot",  # ANSI escape
        "kh\u043era",  # Cyrillic о among Latin letters: looks like "khora"
        "\u0391lice",  # Greek capital alpha
        ".hidden",  # starts with punctuation
        "bob\u200b",  # zero-width space
    ],
    ids=["short", "long", "space", "crlf", "ansi", "cyrillic", "greek", "dot", "zero-width"],
)
async def test_new_usernames_follow_the_rules(client, db, factory, username):
    admin = await factory.user("root", role="admin")
    from tests.conftest import bearer

    r = await client.post(
        "/webhook/wibot/admin/users",
        json={"username": username, "password": "s3cret-pw"},
        headers=bearer(admin, "root", "admin"),
    )
    assert r.status == 400, await r.text()
    assert (await r.json())["error"].startswith("Nom d'utilisateur invalide : 2 à 64 caractères")
    assert await db.fetchval("SELECT count(*) FROM users") == 1


async def test_usernames_are_normalised_accents_allowed_and_unique_whatever_the_case(client, db, factory):
    admin = await factory.user("khora", role="admin")
    from tests.conftest import bearer

    async def create(username: str):
        return await client.post(
            "/webhook/wibot/admin/users",
            json={"username": username, "password": "s3cret-pw"},
            headers=bearer(admin, "khora", "admin"),
        )

    r = await create("E\u0301tienne.Dupont")  # E + combining acute: stored as the single letter É
    assert r.status == 200, await r.text()
    assert (await r.json())["user"]["username"] == "\u00c9tienne.Dupont"
    r = await create("KHORA")
    assert r.status == 409, await r.text()
    assert await login(client, "\u00c9tienne.Dupont", "s3cret-pw") == 200


async def test_the_cli_never_prints_control_characters_raw(client, database_url, db, factory):
    # A name written before the rules existed (or by SQL) may hold anything: the CLI escapes it.
    await factory.user("evil\x1b[2J\x1b[Hname\r\nroot")
    code, out, _ = await users_cli(database_url, "list")
    assert code == 0
    assert "\x1b" not in out and "\r" not in out
    assert "evil\\x1b[2J\\x1b[Hname\\r\\nroot" in out
    code, _, err = await users_cli(database_url, "set-password", "ghost\x1b[31m", stdin="abcdefgh\n")
    assert code == 1 and "\x1b" not in err and "ghost\\x1b[31m" in err


async def test_cli_help_states_the_rules(database_url):
    code, out, _ = await users_cli(database_url, "--help")
    assert code == 0
    assert "2 à 64 caractères" in out and "6 caractères au moins" in out and "72 octets au plus" in out


async def test_every_account_change_without_sql(client, database_url, db, factory):
    root = await factory.user("root", role="admin")
    bob = await factory.user("bob", "bob-password")

    code, out, err = await users_cli(database_url, "set-role", "bob", "admin")
    assert code == 0, err
    assert await db.fetchval("SELECT role FROM users WHERE user_id = $1", bob) == "admin"

    code, out, err = await users_cli(database_url, "set-quota", "bob", "120000")
    assert code == 0, err
    assert "120000" in out
    assert await db.fetchval("SELECT standing_quota_tokens FROM users WHERE user_id = $1", bob) == 120_000

    code, out, err = await users_cli(database_url, "set-quota", "bob", "90000", "--this-month")
    assert code == 0, err
    assert await db.fetchval("SELECT quota_tokens FROM user_token_usage WHERE user_id = $1", bob) == 90_000

    code, out, err = await users_cli(database_url, "add-tokens", "bob", "10000")
    assert code == 0, err
    assert await db.fetchval("SELECT quota_tokens FROM user_token_usage WHERE user_id = $1", bob) == 100_000

    code, out, err = await users_cli(database_url, "set-quota", "bob", "default")
    assert code == 0, err
    assert await db.fetchval("SELECT standing_quota_tokens FROM users WHERE user_id = $1", bob) is None

    code, _, err = await users_cli(database_url, "set-quota", "bob", "-5")
    assert code == 2 and "entre 0 et 1 000 000 000 000" in err  # argparse refuses it, nothing is changed

    code, _, err = await users_cli(database_url, "deactivate", "bob")
    assert code == 0, err
    assert await login(client, "bob", "bob-password") == 401
    code, _, err = await users_cli(database_url, "reactivate", "bob")
    assert code == 0, err
    assert await login(client, "bob", "bob-password") == 200

    code, _, err = await users_cli(database_url, "set-role", "bob", "user")
    assert code == 0, err
    code, _, err = await users_cli(database_url, "delete", "root")
    assert code == 1 and "dernier administrateur actif" in err  # the API's rule
    code, out, err = await users_cli(database_url, "delete", "bob")
    assert code == 0 and "Compte supprimé : bob" in out, err
    assert await db.fetchval("SELECT count(*) FROM users") == 1
    assert await db.fetchval("SELECT count(*) FROM user_token_usage WHERE user_id = $1", bob) == 0
    assert root


async def test_an_unreachable_database_is_one_line_without_the_password(tmp_path):
    env = {**os.environ, "DATABASE_URL": "postgresql://widip:s3cret@127.0.0.1:9/wibot", "JWT_SECRET": TEST_SECRET}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.auth", "users", "list", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    lines = err.decode().splitlines()
    assert proc.returncode == 1
    assert len(lines) == 1 and "Traceback" not in err.decode()
    assert lines[0].startswith("Erreur : base de données injoignable (127.0.0.1:9/wibot)")
    assert "s3cret" not in lines[0]


async def test_the_service_help_points_to_the_users_command():
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.auth",
        "--help",
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert "users ..." in out.decode() and "migrate-passwords" in out.decode()
