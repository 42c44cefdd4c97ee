"""Workflow auth_login: validate input → get user → verify password → issue JWT → respond."""

from __future__ import annotations

import unicodedata

import asyncpg
from aiohttp import web

from services.auth import queries, users
from services.auth.keys import HASHER
from services.auth.legacy import MIGRATE_COMMAND
from services.auth.passwords import PasswordHasher, fits_bcrypt, is_bcrypt_hash
from shared import (
    ApiError,
    AppKeys,
    RequestKeys,
    Settings,
    authenticated,
    current_user,
    get_logger,
    issue_token,
    json_response,
    parse_body,
)
from shared.contracts import LoginRequest, LoginResponse, LoginUser, MeResponse, SuccessResponse

log = get_logger("wibot.auth")

INVALID_CREDENTIALS = "Identifiants invalides"


async def login(request: web.Request) -> web.Response:
    body = await parse_body(request, LoginRequest)
    user, generation = await verify_credentials(
        request.app[AppKeys.DB], request.app[HASHER], body.username, body.password
    )
    request[RequestKeys.USER_ID] = user.id
    token = generate_token(request.app[AppKeys.SETTINGS], user, generation=generation)
    return json_response(LoginResponse(token=token, user=user))


async def verify_credentials(
    pool: asyncpg.Pool, hasher: PasswordHasher, username: str, password: str
) -> tuple[LoginUser, int]:
    """The user and their token generation; one 401 whatever was wrong: unknown user, inactive user, wrong
    password, password over 72 bytes."""
    if not fits_bcrypt(password):  # refused before the lookup: its timing must not depend on the user
        raise ApiError(401, INVALID_CREDENTIALS, "INVALID_CREDENTIALS")
    # Spelt as new usernames are stored (NFKC: "rt_ﬁ" is "rt_fi"), found whatever its case.
    row = await pool.fetchrow(queries.LOGIN_USER_SQL, username, unicodedata.normalize("NFKC", username))
    stored = row["password_hash"] if row else None
    if row is not None and not is_bcrypt_hash(stored or ""):
        # An n8n install's plain text: never compared as such; costs what a wrong password costs.
        log.warning("legacy_password_login", user_id=row["user_id"], hint=f"run {MIGRATE_COMMAND}")
        stored = None
    if not await hasher.verify(password, stored):
        raise ApiError(401, INVALID_CREDENTIALS, "INVALID_CREDENTIALS")
    assert row is not None
    return LoginUser(id=row["user_id"], username=row["username"], role=row["role"] or "user"), row["generation"]


def generate_token(settings: Settings, user: LoginUser, *, generation: int) -> str:
    return issue_token(
        user_id=user.id,
        username=user.username,
        role=user.role,
        secret=settings.jwt_secret.get_secret_value(),
        ttl_seconds=settings.jwt_ttl_seconds,
        generation=generation,
    )


@authenticated()
async def me(request: web.Request) -> web.Response:
    user = current_user(request)
    return json_response(MeResponse(user=LoginUser(id=user.user_id, username=user.username, role=user.role)))


@authenticated()
async def logout(request: web.Request) -> web.Response:
    """Revokes the token this request came with (other sessions of the user stay open)."""
    user = current_user(request)
    await users.revoke_token(
        request.app[AppKeys.DB], token_key=user.token_key, user_id=user.user_id, expires_at=user.token_expires_at
    )
    # Refused by this process from the next request; by the others as soon as they are notified.
    request.app[AppKeys.SESSIONS].revoke(user.token_key, user.token_expires_at)
    return json_response(SuccessResponse())
