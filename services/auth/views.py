"""Workflow auth_login: validate input → check the credentials (local passwords, or the directory: AUTH_MODE) →
issue JWT → respond."""

from __future__ import annotations

import unicodedata

import asyncpg
from aiohttp import web

from services.auth import queries, users
from services.auth.directory import check_with_directory
from services.auth.keys import HASHER
from services.auth.legacy import MIGRATE_COMMAND
from services.auth.passwords import PasswordHasher, fits_bcrypt, is_bcrypt_hash
from shared import (
    ApiError,
    AppKeys,
    RequestKeys,
    Settings,
    audit,
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


class LoginRefused(ApiError):
    """The one 401 of a failed login; `user_id` when the username is someone's, `reason` when the directory gave
    one (for the audit trail only)."""

    def __init__(self, user_id: int | None = None, reason: str | None = None) -> None:
        super().__init__(401, INVALID_CREDENTIALS, "INVALID_CREDENTIALS")
        self.user_id, self.reason = user_id, reason


async def login(request: web.Request) -> web.Response:
    body = await parse_body(request, LoginRequest)
    pool = request.app[AppKeys.DB]
    try:
        _, address = audit.request_origin(request)
        user, generation = await check_credentials(request.app, body.username, body.password, caller=address)
    except LoginRefused as refused:  # the username as typed is never kept: it may be a password typed too soon
        target = str(refused.user_id) if refused.user_id is not None else None
        details = {"reason": refused.reason} if refused.reason else None
        await audit.record(pool, audit.LOGIN_FAILED, actor_id=None, target=target, request=request, details=details)
        raise
    request[RequestKeys.USER_ID] = user.id
    token = generate_token(request.app[AppKeys.SETTINGS], user, generation=generation)
    await audit.record(pool, audit.LOGIN, actor_id=user.id, target=str(user.id), request=request)
    return json_response(LoginResponse(token=token, user=user))


async def check_credentials(
    app: web.Application, username: str, password: str, *, caller: str | None = None
) -> tuple[LoginUser, int]:
    """AUTH_MODE local: WIBOT's passwords; directory/both: local accounts first, apart from the directory (a local
    admin — the break-glass account — never waits behind it, nor is locked out by a directory entry of its name),
    then services/auth/directory decides."""
    pool, hasher = app[AppKeys.DB], app[HASHER]
    mode = app[AppKeys.SETTINGS].auth_mode
    if mode == "local":
        return await verify_credentials(pool, hasher, username, password)
    admins_only = mode == "directory"
    local_refusal: LoginRefused | None = None
    try:
        return await verify_credentials(pool, hasher, username, password, admins_only=admins_only, known_only=True)
    except NoLocalPassword:
        pass
    except LoginRefused as refused:  # a wrong local password: the directory may still know this name
        local_refusal = refused

    async def local(admins_only: bool) -> tuple[LoginUser, int]:
        return await verify_credentials(pool, hasher, username, password, admins_only=admins_only)

    return await check_with_directory(
        app,
        username,
        password,
        local if local_refusal is None else None,
        lambda reason: local_refusal or LoginRefused(reason=reason),
        lambda: hasher.verify(password, None),
        caller=caller,
    )


class NoLocalPassword(Exception):
    """No local account with a password WIBOT keeps goes by this name (`known_only`): nothing was checked."""


async def verify_credentials(
    pool: asyncpg.Pool,
    hasher: PasswordHasher,
    username: str,
    password: str,
    *,
    admins_only: bool = False,
    known_only: bool = False,
) -> tuple[LoginUser, int]:
    """The local user and their token generation; one 401 whatever was wrong: unknown user, inactive user, wrong
    password, password over 72 bytes, a directory account (no local password), not an admin (`admins_only`).
    `known_only`: NoLocalPassword, at no cost, instead of the 401 when no such local account exists."""
    if not fits_bcrypt(password):  # refused before the lookup: its timing must not depend on the user
        if known_only:
            raise NoLocalPassword
        raise LoginRefused
    # Spelt as new usernames are stored (NFKC: "rt_ﬁ" is "rt_fi"), found whatever its case.
    row = await pool.fetchrow(queries.LOGIN_USER_SQL, username, unicodedata.normalize("NFKC", username))
    if row is not None and (row["from_directory"] or (admins_only and row["role"] != "admin")):
        row = None  # checked all the same below, against no hash: the same time as a wrong password
    stored = row["password_hash"] if row else None
    if row is not None and not is_bcrypt_hash(stored or ""):
        # An n8n install's plain text: never compared as such; costs what a wrong password costs.
        log.warning("legacy_password_login", user_id=row["user_id"], hint=f"run {MIGRATE_COMMAND}")
        stored = None
    if known_only and stored is None:
        raise NoLocalPassword
    if not await hasher.verify(password, stored):
        raise LoginRefused(row["user_id"] if row is not None else None)
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
    await audit.record(request.app[AppKeys.DB], audit.LOGOUT, actor_id=user.user_id, request=request)
    return json_response(SuccessResponse())
