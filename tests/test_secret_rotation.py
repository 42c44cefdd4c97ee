"""Rotating JWT_SECRET without logging everyone out: the former key goes to JWT_SECRET_PREVIOUS, which verifies
tokens it signed (until they expire) and never signs one."""

from __future__ import annotations

import secrets

import jwt
import pytest
from pydantic import ValidationError

from services.auth.app import create_app as auth_app
from shared import Settings, issue_token
from tests.conftest import make_settings

OLD, NEW, OTHER = (secrets.token_urlsafe(48) for _ in range(3))


def token(user_id: int, secret: str) -> str:
    return issue_token(user_id=user_id, username="khora", role="user", secret=secret, ttl_seconds=3600)


def me(client, value: str):
    return client.get("/webhook/auth/me", headers={"Authorization": f"Bearer {value}"})


async def test_tokens_of_the_previous_key_stay_valid_during_the_rotation(make_client, database_url, factory):
    user_id = await factory.user("khora", "test123")
    rotating = await make_client(auth_app(make_settings(database_url, jwt_secret=NEW, jwt_secret_previous=OLD)))
    assert (await me(rotating, token(user_id, OLD))).status == 200  # issued before the rotation
    assert (await me(rotating, token(user_id, NEW))).status == 200
    assert (await me(rotating, token(user_id, OTHER))).status == 401  # any other key: refused

    # New tokens are signed with the new key only.
    r = await rotating.post("/webhook/auth/login", json={"username": "khora", "password": "test123"})
    issued = (await r.json())["token"]
    assert jwt.decode(issued, NEW, algorithms=["HS256"])["user_id"] == user_id
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(issued, OLD, algorithms=["HS256"])


async def test_once_the_previous_key_is_removed_its_tokens_are_refused(make_client, database_url, factory):
    user_id = await factory.user("khora")
    rotated = await make_client(auth_app(make_settings(database_url, jwt_secret=NEW)))
    assert (await me(rotated, token(user_id, OLD))).status == 401
    assert (await me(rotated, token(user_id, NEW))).status == 200


async def test_a_logout_holds_whichever_key_signed_the_token(make_client, database_url, factory):
    user_id = await factory.user("khora")
    rotating = await make_client(auth_app(make_settings(database_url, jwt_secret=NEW, jwt_secret_previous=OLD)))
    old = token(user_id, OLD)
    r = await rotating.post("/webhook/auth/logout", headers={"Authorization": f"Bearer {old}"})
    assert r.status == 200
    assert (await me(rotating, old)).status == 401


def test_the_previous_key_obeys_the_same_rules_and_empty_means_none():
    with pytest.raises(ValidationError, match="jwt_secret_previous"):
        Settings(_env_file=None, jwt_secret=NEW, jwt_secret_previous="x" * 40)  # type: ignore[call-arg]
    settings = Settings(_env_file=None, jwt_secret=NEW, jwt_secret_previous="")  # type: ignore[call-arg]
    assert settings.verification_secrets == [NEW]
