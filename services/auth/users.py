"""Managing people: the steps behind both the `users` command and the admin API (one implementation)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

import asyncpg

from services.auth import queries
from services.auth.errors import DirectoryAccount, LastAdmin, UserError, UserExists, UserNotFound
from services.auth.passwords import BCRYPT_MAX_BYTES, PasswordHasher, fits_bcrypt
from services.auth.usernames import InvalidUsername, normalize_username
from shared.rules import quota_in_force

ROLES = ("user", "admin")
# Safeguard accreditation, lowest first: N0 sees nothing, Nk may approve requests up to level Lk.
ACCREDITATION_LEVELS = ("N0", "N1", "N2", "N3", "N4")
DEFAULT_ACCREDITATION = "N1"
MIN_PASSWORD_CHARS = 6


@dataclass(frozen=True, slots=True)
class UserRecord:
    user_id: int
    username: str
    email: str | None
    role: str
    is_active: bool
    created_at: datetime
    used_tokens: int
    quota_tokens: int
    standing_quota_tokens: int | None
    quota_source: str
    accreditation_level: str
    source: str  # local, or directory (AUTH_MODE directory/both: services/auth/directory)


def check_accreditation(level: str) -> None:
    if level not in ACCREDITATION_LEVELS:
        raise UserError(f"Niveau d'accréditation inconnu : {level} (attendu : {', '.join(ACCREDITATION_LEVELS)})")


def check_role(role: str) -> None:
    if role not in ROLES:
        raise UserError(f"Rôle inconnu : {role} (attendu : {', '.join(ROLES)})")


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserError(f"Le mot de passe doit contenir au moins {MIN_PASSWORD_CHARS} caractères")
    if not fits_bcrypt(password):
        raise UserError(f"Le mot de passe ne peut pas dépasser {BCRYPT_MAX_BYTES} octets")


async def list_users(pool: asyncpg.Pool, *, month: date, default_quota: int) -> list[UserRecord]:
    rows = await pool.fetch(queries.ADMIN_USERS_SQL, month, None)
    return [user_record(row, default_quota) for row in rows]


async def get_user(
    conn: asyncpg.Connection | asyncpg.Pool, user_id: int, *, month: date, default_quota: int
) -> UserRecord:
    row = await conn.fetchrow(queries.ADMIN_USERS_SQL, month, user_id)
    if row is None:
        raise UserNotFound(f"Utilisateur inconnu : {user_id}")
    return user_record(row, default_quota)


def user_record(row: asyncpg.Record, default_quota: int) -> UserRecord:
    fields = dict(row)
    month_quota = fields.pop("month_quota_tokens")
    quota, source = quota_in_force(month_quota, fields["standing_quota_tokens"], default_quota)
    return UserRecord(**fields, quota_tokens=quota, quota_source=source)


async def user_id_by_name(pool: asyncpg.Pool, username: str) -> int:
    user_id: int | None = await pool.fetchval(queries.USER_ID_BY_NAME_SQL, username)
    if user_id is None:
        raise UserNotFound(f"Utilisateur inconnu : {username}")
    return user_id


async def create_user(
    pool: asyncpg.Pool,
    hasher: PasswordHasher,
    *,
    username: str,
    password: str,
    email: str | None = None,
    role: str = "user",
    quota_tokens: int | None = None,
    standing_quota_tokens: int | None = None,
    accreditation_level: str = DEFAULT_ACCREDITATION,
    month: date,
    default_quota: int,
) -> UserRecord:
    try:
        username = normalize_username(username)
    except InvalidUsername as exc:
        raise UserError(str(exc)) from None
    check_role(role)
    check_accreditation(accreditation_level)
    check_new_password(password)
    password_hash = await hasher.hash(password)  # before the transaction: no connection held while hashing
    async with pool.acquire() as conn, conn.transaction():
        user_id = await conn.fetchval(
            queries.CREATE_USER_SQL, username, password_hash, email, role, accreditation_level
        )
        if user_id is None:
            raise UserExists(f"L'utilisateur {username} existe déjà")
        if standing_quota_tokens is not None:
            await conn.execute(queries.UPDATE_STANDING_QUOTA_SQL, user_id, standing_quota_tokens)
        if quota_tokens is not None:
            await conn.execute(queries.SET_MONTH_QUOTA_SQL, user_id, month, quota_tokens, default_quota, 0)
        return await get_user(conn, user_id, month=month, default_quota=default_quota)


async def set_password(pool: asyncpg.Pool, hasher: PasswordHasher, *, user_id: int, password: str) -> None:
    """New password; every token issued before it stops working."""
    check_new_password(password)
    password_hash = await hasher.hash(password)
    async with pool.acquire() as conn, conn.transaction():
        user = await conn.fetchrow(queries.LOCK_USER_SQL, user_id)
        if user is None:
            raise UserNotFound(f"Utilisateur inconnu : {user_id}")
        if user["from_directory"]:
            raise DirectoryAccount
        await conn.execute(queries.SET_PASSWORD_SQL, user_id, password_hash)
        await conn.execute(queries.REVOKE_ALL_TOKENS_SQL, user_id)


async def _lock_user(conn: asyncpg.Connection, user_id: int, *, keep_an_admin: bool) -> asyncpg.Record:
    """Lock the user (admins first, in id order); with keep_an_admin, refuse to remove the last active one."""
    admins = [row["user_id"] for row in await conn.fetch(queries.LOCK_ACTIVE_ADMINS_SQL)]
    user = await conn.fetchrow(queries.LOCK_USER_SQL, user_id)
    if user is None:
        raise UserNotFound(f"Utilisateur inconnu : {user_id}")
    if keep_an_admin and admins == [user_id]:
        raise LastAdmin
    return user


async def update_user(
    pool: asyncpg.Pool,
    *,
    user_id: int,
    month: date,
    default_quota: int,
    quota_tokens: int | None = None,
    add_tokens: int | None = None,
    role: str | None = None,
    is_active: bool | None = None,
    accreditation_level: str | None = None,
    standing_quota_tokens: int | Literal["default"] | None = None,
) -> UserRecord:
    """Each given field changes; the others stay. A standing quota applies to every month that starts (and to
    this month if the user has not used it yet); `quota_tokens`/`add_tokens` change this month only."""
    if role is not None:
        check_role(role)
    if accreditation_level is not None:
        check_accreditation(accreditation_level)
    async with pool.acquire() as conn, conn.transaction():
        await _lock_user(conn, user_id, keep_an_admin=role == "user" or is_active is False)
        if role is not None:
            await conn.execute(queries.UPDATE_ROLE_SQL, user_id, role)
        if accreditation_level is not None:
            await conn.execute(queries.UPDATE_ACCREDITATION_SQL, user_id, accreditation_level)
        if standing_quota_tokens is not None:
            standing = None if standing_quota_tokens == "default" else standing_quota_tokens
            await conn.execute(queries.UPDATE_STANDING_QUOTA_SQL, user_id, standing)
        if is_active is not None:
            await conn.execute(queries.UPDATE_ACTIVE_SQL, user_id, is_active)
            if not is_active:
                await conn.execute(queries.REVOKE_ALL_TOKENS_SQL, user_id)
        if quota_tokens is not None or add_tokens:
            await conn.execute(
                queries.SET_MONTH_QUOTA_SQL, user_id, month, quota_tokens, default_quota, add_tokens or 0
            )
        return await get_user(conn, user_id, month=month, default_quota=default_quota)


async def delete_user(pool: asyncpg.Pool, *, user_id: int) -> tuple[int, str]:
    """The user, their conversations, messages and usage, in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        await _lock_user(conn, user_id, keep_an_admin=True)
        await conn.execute(queries.DELETE_USER_MESSAGES_SQL, user_id)
        await conn.execute(queries.DELETE_USER_CONVERSATIONS_SQL, user_id)
        await conn.execute(queries.DELETE_USER_USAGE_SQL, user_id)
        deleted = await conn.fetchrow(queries.DELETE_USER_SQL, user_id)
    return deleted["user_id"], deleted["username"]


async def revoke_token(pool: asyncpg.Pool, *, token_key: str, user_id: int, expires_at: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(queries.PURGE_EXPIRED_REVOCATIONS_SQL)
        await conn.execute(queries.REVOKE_TOKEN_SQL, token_key, user_id, expires_at)
