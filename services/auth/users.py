"""Managing people without SQL: the steps behind the `users` command (and, later, the admin API)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.auth import queries
from services.auth.passwords import BCRYPT_MAX_BYTES, PasswordHasher, fits_bcrypt

ROLES = ("user", "admin")
MIN_PASSWORD_CHARS = 6


class UserError(Exception):
    """A management request that cannot be carried out; the message is for the operator."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    user_id: int
    username: str
    email: str | None
    role: str
    is_active: bool
    created_at: datetime


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserError(f"Le mot de passe doit contenir au moins {MIN_PASSWORD_CHARS} caractères")
    if not fits_bcrypt(password):
        raise UserError(f"Le mot de passe ne peut pas dépasser {BCRYPT_MAX_BYTES} octets")


async def create_user(
    pool: asyncpg.Pool,
    hasher: PasswordHasher,
    *,
    username: str,
    password: str,
    email: str | None = None,
    role: str = "user",
) -> UserRecord:
    username = username.strip()
    if not 1 <= len(username) <= 100:
        raise UserError("Le nom d'utilisateur doit contenir entre 1 et 100 caractères")
    if role not in ROLES:
        raise UserError(f"Rôle inconnu : {role} (attendu : {', '.join(ROLES)})")
    check_new_password(password)
    password_hash = await hasher.hash(password)
    row = await pool.fetchrow(queries.CREATE_USER_SQL, username, password_hash, email, role)
    if row is None:
        raise UserError(f"L'utilisateur {username} existe déjà")
    return UserRecord(**dict(row))


async def set_password(pool: asyncpg.Pool, hasher: PasswordHasher, *, username: str, password: str) -> None:
    check_new_password(password)
    password_hash = await hasher.hash(password)
    if await pool.fetchval(queries.SET_PASSWORD_SQL, username, password_hash) is None:
        raise UserError(f"Utilisateur inconnu : {username}")


async def deactivate_user(pool: asyncpg.Pool, *, username: str) -> None:
    if await pool.fetchval(queries.DEACTIVATE_USER_SQL, username) is None:
        raise UserError(f"Utilisateur inconnu : {username}")


async def list_users(pool: asyncpg.Pool) -> list[UserRecord]:
    return [UserRecord(**dict(row)) for row in await pool.fetch(queries.LIST_USERS_SQL)]


async def user_exists(pool: asyncpg.Pool, username: str) -> bool:
    return await pool.fetchval(queries.USER_EXISTS_SQL, username) is not None
