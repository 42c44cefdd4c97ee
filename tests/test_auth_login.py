"""POST /webhook/auth/login against a real PostgreSQL (spec workflow 1 and its checklist)."""

from __future__ import annotations

import time

import jwt
import pytest

from services.auth.app import create_app
from tests.conftest import TEST_SECRET

LOGIN = "/webhook/auth/login"
INVALID = {"success": False, "error": "Identifiants invalides", "code": "INVALID_CREDENTIALS"}


@pytest.fixture
async def client(make_client, settings):
    return await make_client(create_app(settings))


async def test_login_success_matches_contract(client, factory):
    user_id = await factory.user("khora", "test123", role="admin")
    r = await client.post(LOGIN, json={"username": "khora", "password": "test123"})
    body = await r.json()
    assert r.status == 200, body
    assert r.content_type == "application/json"
    assert set(body) == {"success", "token", "user"}
    assert body["success"] is True
    assert body["user"] == {"id": user_id, "username": "khora", "role": "admin"}
    claims = jwt.decode(body["token"], TEST_SECRET, algorithms=["HS256"])
    # Spec checklist: the payload carries user_id (not id / userId), and nothing else than these keys.
    assert set(claims) == {"user_id", "username", "role", "iat", "exp"}
    assert claims["user_id"] == user_id and claims["username"] == "khora" and claims["role"] == "admin"
    assert claims["exp"] - claims["iat"] == 8 * 3600
    assert abs(claims["iat"] - time.time()) < 60
    assert jwt.get_unverified_header(body["token"])["alg"] == "HS256"


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("khora", "wrongpass"),  # wrong password
        ("nobody", "test123"),  # unknown user
        ("sleeper", "test123"),  # inactive user
        ("khora", "é" * 40),  # 80 bytes: bcrypt 5 would raise, we answer like a wrong password
    ],
)
async def test_login_failures_are_one_and_the_same_401(client, factory, username, password):
    await factory.user("khora", "test123")
    await factory.user("sleeper", "test123", is_active=False)
    r = await client.post(LOGIN, json={"username": username, "password": password})
    assert r.status == 401, await r.text()
    assert await r.json() == INVALID


async def test_password_of_exactly_72_bytes_still_logs_in(client, factory):
    password = "p" * 72
    await factory.user("longpw", password)
    r = await client.post(LOGIN, json={"username": "longpw", "password": password})
    assert r.status == 200, await r.text()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"password": "x"}, "Champ obligatoire manquant : username"),
        ({"username": "khora"}, "Champ obligatoire manquant : password"),
        ({"username": 12, "password": "x"}, "Le champ username doit être une chaîne de caractères"),
        ({"username": "khora", "password": ["x"]}, "Le champ password doit être une chaîne de caractères"),
        ({"username": "", "password": "x"}, "Le champ username ne peut pas être vide"),
        ({"username": "khora", "password": None}, "Le champ password doit être une chaîne de caractères"),
    ],
)
async def test_login_bad_input_is_a_400(client, payload, message):
    r = await client.post(LOGIN, json=payload)
    assert r.status == 400, await r.text()
    assert await r.json() == {"success": False, "error": message, "code": "VALIDATION_ERROR"}


async def test_password_never_reaches_the_logs(client, factory, capsys):
    await factory.user("khora", "test123")
    secret = "Sup3r-Secret-Passw0rd"
    await client.post(LOGIN, json={"username": "khora", "password": secret})
    await client.post(LOGIN, json={"username": "khora", "password": "test123"})
    out = capsys.readouterr().out
    assert '"path": "/webhook/auth/login"' in out  # the log lines were captured
    assert secret not in out and "test123" not in out


async def test_unknown_user_costs_a_bcrypt_check_like_a_wrong_password(make_client, settings, factory):
    # A ratio measured in one run, with a cost high enough (rounds=11, ~150 ms) to dwarf the noise:
    # without the dummy hash an unknown user answers in ~1 ms, i.e. a ratio near 0.
    client = await make_client(create_app(settings.model_copy(update={"bcrypt_rounds": 11})))
    await factory.user("khora", "test123", rounds=11)

    async def elapsed(username: str) -> float:
        started = time.perf_counter()
        r = await client.post(LOGIN, json={"username": username, "password": "wrongpass"})
        assert r.status == 401
        return time.perf_counter() - started

    wrong_password = min([await elapsed("khora") for _ in range(2)])
    unknown_user = min([await elapsed("nobody") for _ in range(2)])
    assert 0.5 < unknown_user / wrong_password < 2, (unknown_user, wrong_password)


async def test_bcrypt_runs_off_the_event_loop(make_client, settings, factory):
    # Two slow logins in parallel take about the time of one when bcrypt leaves the loop (it releases the GIL).
    import asyncio

    client = await make_client(create_app(settings.model_copy(update={"bcrypt_rounds": 11})))

    async def one() -> float:
        started = time.perf_counter()
        await client.post(LOGIN, json={"username": "nobody", "password": "x"})
        return time.perf_counter() - started

    single = min([await one() for _ in range(2)])
    started = time.perf_counter()
    # A trivial request during a login must not wait for the hash.
    login = asyncio.ensure_future(one())
    await asyncio.sleep(0.02)
    probe_started = time.perf_counter()
    r = await client.get("/webhook/auth/nothing-here")
    probe = time.perf_counter() - probe_started
    await login
    assert r.status == 404
    assert probe < single / 2, (probe, single, time.perf_counter() - started)
