"""Databases of the n8n WIBOT keep passwords in plain text in `password_hash` (its login compared them as is).

They are never compared as plain text here: such a row's login fails like a wrong password and is logged, the
service warns at start-up, and `python -m services.auth users migrate-passwords` hashes them in place.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from services.auth import queries
from services.auth.passwords import BCRYPT_HASH, PasswordHasher, fits_bcrypt
from shared import DB_UNAVAILABLE_ERRORS, AppKeys, get_logger

log = get_logger("wibot.auth")

MIGRATE_COMMAND = "python -m services.auth users migrate-passwords"
BATCH_SIZE = 100


async def warn_about_plain_text_passwords(app: web.Application) -> None:
    try:
        count = await app[AppKeys.DB].fetchval(queries.COUNT_PLAIN_TEXT_PASSWORDS_SQL, BCRYPT_HASH.pattern)
    except DB_UNAVAILABLE_ERRORS:  # a lazy pool without its database yet: the count waits for the next start
        return
    if count:
        log.warning("plain_text_passwords", users=count, hint=f"these users cannot log in: run {MIGRATE_COMMAND}")


@dataclass
class PasswordMigration:
    hashed: int = 0
    too_long: int = 0  # over bcrypt's 72 bytes: left as they are, their users need a new password
    changed_meanwhile: int = 0


async def migrate_passwords(
    pool: asyncpg.Pool, hasher: PasswordHasher, *, batch_size: int = BATCH_SIZE
) -> PasswordMigration:
    """Hash every plain-text password in place, a batch at a time (each batch one transaction). Idempotent:
    bcrypt hashes are never selected, so a second run does nothing."""
    result, after = PasswordMigration(), 0
    while rows := await pool.fetch(queries.PLAIN_TEXT_PASSWORDS_BATCH_SQL, BCRYPT_HASH.pattern, after, batch_size):
        after = rows[-1]["user_id"]
        hashable = [row for row in rows if fits_bcrypt(row["password_hash"])]
        result.too_long += len(rows) - len(hashable)
        hashes = await asyncio.gather(*(hasher.hash(row["password_hash"]) for row in hashable))
        async with pool.acquire() as conn, conn.transaction():
            for row, new_hash in zip(hashable, hashes, strict=True):
                # Compare-and-set: a password changed since the batch was read is left alone.
                updated = await conn.fetchval(
                    queries.REPLACE_PLAIN_TEXT_PASSWORD_SQL, row["user_id"], new_hash, row["password_hash"]
                )
                if updated:
                    result.hashed += 1
                else:
                    result.changed_meanwhile += 1
    log.info("passwords_migrated", **vars(result))
    return result
