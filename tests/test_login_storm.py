"""Login storms are bounded: bcrypt runs in one core fewer than the machine, and a check beyond
BCRYPT_MAX_PENDING is refused at once (503 LOGIN_BUSY, Retry-After) instead of waiting in an unbounded queue."""

from __future__ import annotations

import asyncio
import os

import pytest

from services.auth.app import create_app
from services.auth.errors import LoginBusy
from services.auth.keys import HASHER
from services.auth.passwords import PasswordHasher

LOGIN = "/webhook/auth/login"


def test_bcrypt_leaves_a_core_to_the_other_routes():
    hasher = PasswordHasher(4)
    try:
        assert hasher.workers == max(1, (os.cpu_count() or 2) - 1)
        assert hasher._executor._max_workers == hasher.workers
    finally:
        hasher.close()


async def test_checks_beyond_the_bound_are_refused_at_once_and_the_others_done():
    hasher = PasswordHasher(4, workers=1, max_pending=2)
    stored = await hasher.hash("secret-1")
    try:
        results = await asyncio.gather(*(hasher.verify("secret-1", stored) for _ in range(5)), return_exceptions=True)
    finally:
        hasher.close()
    assert results[:2] == [True, True]
    for refused in results[2:]:
        assert isinstance(refused, LoginBusy)
        answer = refused.api_error()
        assert (answer.status, answer.code, answer.headers) == (503, "LOGIN_BUSY", {"Retry-After": "1"})
    assert hasher.pending == 0  # every slot given back, refused or done


async def test_without_a_bound_the_cli_hashes_whatever_it_is_given():
    hasher = PasswordHasher(4, workers=1)
    try:
        hashes = await asyncio.gather(*(hasher.hash(f"pw-{n}") for n in range(20)))
    finally:
        hasher.close()
    assert len(set(hashes)) == 20


@pytest.mark.timeout(120)
async def test_a_login_beyond_the_bound_is_a_503_envelope_with_retry_after(make_client, settings, factory):
    await factory.user("khora", "test123", rounds=14)  # ~1 s a check: the first login is still running
    client = await make_client(create_app(settings.model_copy(update={"bcrypt_max_pending": 1})))
    hasher = client.server.app[HASHER]
    first = asyncio.ensure_future(client.post(LOGIN, json={"username": "khora", "password": "test123"}))
    async with asyncio.timeout(60):
        while hasher.pending == 0:  # the first check holds the only slot
            await asyncio.sleep(0.005)
    r = await client.post(LOGIN, json={"username": "khora", "password": "test123"})
    assert (r.status, r.headers["Retry-After"]) == (503, "1")
    assert await r.json() == {
        "success": False,
        "error": "Trop de connexions simultanées. Réessayez dans quelques instants.",
        "code": "LOGIN_BUSY",
    }
    assert (await first).status == 200  # the one admitted was served
