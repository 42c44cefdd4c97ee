"""JWT issue/verify (pure functions) and the one decorator that hands a view its authenticated user."""

from __future__ import annotations

import functools
import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import jwt
from aiohttp import web

from shared.errors import INVALID_TOKEN_MESSAGE, ApiError
from shared.identity import CurrentUser
from shared.keys import AppKeys, RequestKeys
from shared.middlewares import Handler
from shared.sessions import SessionCache, SessionUser

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["exp", "iat", "user_id"]
MAX_USER_ID = 2_147_483_647

# What each request must know fresh, not as the token says it: a deleted, deactivated or demoted user, a
# logged-out token, a token of an earlier generation (password change, deactivation) all lose access at once,
# not 8 hours later when the token expires. Read from the process's copy (shared/sessions.py); this query
# only for a user the process has not served yet, or while the copy may be behind.
SESSION_USER_SQL = """
SELECT u.user_id, u.username, u.role, u.accreditation_level,
       EXISTS (SELECT 1 FROM revoked_tokens r WHERE r.token_sha256 = $2) AS revoked,
       a.generation,
       floor(extract(epoch FROM a.not_before))::bigint AS not_before
FROM users u
LEFT JOIN user_token_revocations a ON a.user_id = u.user_id
WHERE u.user_id = $1 AND u.is_active IS TRUE
"""


def issue_token(
    *,
    user_id: int,
    username: str,
    role: str,
    secret: str,
    ttl_seconds: int,
    now: int | None = None,
    generation: int = 0,
) -> str:
    """The spec's payload {user_id, username, role, iat, exp}, plus `jti` (this token, for logout) and `gen`
    (the user's token generation, for revoking every token at once). Clients ignore claims they do not know."""
    issued_at = int(time.time()) if now is None else now
    payload = {
        "user_id": user_id,
        "username": username,
        "role": role,
        "iat": issued_at,
        "exp": issued_at + ttl_seconds,
        "jti": uuid.uuid4().hex,
        "gen": generation,
    }
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def invalid_token() -> ApiError:
    return ApiError(401, INVALID_TOKEN_MESSAGE, "INVALID_TOKEN")


def decode_token(token: str, secret: str | Sequence[str]) -> dict[str, Any]:
    """Claims of a valid token; every way a token can be wrong is the same 401.

    Several secrets: the current one, then the previous one during a rotation (JWT_SECRET_PREVIOUS), tried for
    the signature only; everything else about the token is checked whichever signed it.
    """
    secrets = [secret] if isinstance(secret, str) else list(secret)
    claims: dict[str, Any] | None = None
    for candidate in secrets:
        try:
            claims = jwt.decode(token, candidate, algorithms=[ALGORITHM], options={"require": REQUIRED_CLAIMS})
            break  # pragma: no mutate (continue would only try the other keys, keeping these claims)
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError:
            raise invalid_token() from None
    if claims is None:
        raise invalid_token()
    user_id = claims.get("user_id")
    # bool is an int in Python; a token saying user_id=true is not ours. users.user_id is an int4.
    if not isinstance(user_id, int) or isinstance(user_id, bool) or not 0 < user_id <= MAX_USER_ID:
        raise invalid_token()
    return claims


def bearer_token(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    # A JWT is ASCII; a header of other bytes (decoded with surrogates) is just another invalid token.
    # PyJWT refuses any token these last two tests let through: swapping their `or`s is equivalent (no mutate).
    if scheme.lower() != "bearer" or not token or not token.isascii() or not token.isprintable():  # pragma: no mutate
        raise invalid_token()
    return token


def token_key(token: str, claims: dict[str, Any]) -> str:
    """What logout revokes: the token's `jti`, never its text. PyJWT accepts the same signature spelt in other
    base64url ways (a trailing `=`, other unused low bits): hashing the text would let such a copy through.
    Tokens issued without a jti (before it existed) are keyed on their canonical form, whose signature is
    re-encoded from the bytes PyJWT verified."""
    jti = claims.get("jti")
    if isinstance(jti, str) and jti:
        return hashlib.sha256(f"jti:{jti}".encode()).hexdigest()
    signing_input, _, signature = token.rpartition(".")
    canonical = jwt.utils.base64url_encode(jwt.utils.base64url_decode(signature)).decode()
    return hashlib.sha256(f"{signing_input}.{canonical}".encode()).hexdigest()


async def load_session_user(
    pool: asyncpg.Pool, sessions: SessionCache, claims: dict[str, Any], token: str
) -> CurrentUser:
    key = token_key(token, claims)
    if sessions.is_revoked(key):
        raise invalid_token()
    user = sessions.user(claims["user_id"])
    if user is None:
        read_at_epoch = sessions.epoch
        row = await pool.fetchrow(SESSION_USER_SQL, claims["user_id"], key)
        if row is None or row["revoked"]:
            raise invalid_token()
        user = SessionUser.of(row)
        sessions.keep(user, read_at_epoch=read_at_epoch)
    generation = claims.get("gen", 0)
    if user.generation is not None and (not isinstance(generation, int) or generation < user.generation):
        raise invalid_token()
    # Tokens older than the last revocation (whole seconds; the generation also covers that very second).
    if user.not_before is not None and claims["iat"] < user.not_before:
        raise invalid_token()
    return CurrentUser(
        user_id=user.user_id,
        username=user.username,
        role=user.role,
        token_key=key,
        token_expires_at=int(claims["exp"]),
        accreditation_level=user.accreditation_level,
    )


def authenticated(*, admin: bool = False) -> Callable[[Handler], Handler]:
    """Decorator for views: 401 unless a valid token of an active user; 403 if `admin` and not an admin."""

    def decorate(view: Handler) -> Handler:
        @functools.wraps(view)  # pragma: no mutate (nothing reads the view's name)
        async def wrapper(request: web.Request) -> web.StreamResponse:
            settings = request.app[AppKeys.SETTINGS]
            token = bearer_token(request)
            claims = decode_token(token, settings.verification_secrets)
            user = await load_session_user(request.app[AppKeys.DB], request.app[AppKeys.SESSIONS], claims, token)
            if admin and not user.is_admin:
                raise ApiError(403, "Accès réservé aux administrateurs", "FORBIDDEN")
            request[RequestKeys.USER] = user
            request[RequestKeys.USER_ID] = user.user_id
            return await view(request)

        return wrapper

    return decorate


def current_user(request: web.Request) -> CurrentUser:
    return request[RequestKeys.USER]
