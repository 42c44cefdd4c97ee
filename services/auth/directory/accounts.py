"""The local account of a directory user: created (or linked) at their first directory login, kept in step with
the directory at every login and by the sync (username, e-mail, role and level from their groups).

Linked by the entry's stable id, never by name: a rename in the directory keeps the user's conversations. A local
account of the same name (staff who had WIBOT passwords before the directory) is linked at the first directory
login and keeps its history, but never a local admin's (break-glass accounts stay local: that login is a 409).
Role and level changes reach every process through the session copy's notifications: the next request of a user
removed from the admin group is a user's request — except the last active admin's: a directory that no longer
lists anyone in its admin group (a renamed group, a wrong LDAP_ADMIN_GROUPS, an entry gone) never leaves WIBOT
without an administrator; that admin keeps the role, and it is logged as an error and counted
(wibot_directory_last_admin_kept_total). Linking a local account to a directory entry ends the sessions opened
with its local password.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from services.auth.directory.client import Directory, DirectoryAccount, normalise_dn
from services.auth.errors import AccountConflict
from services.auth.queries import LOCK_ACTIVE_ADMINS_SQL, REVOKE_ALL_TOKENS_SQL
from shared import Settings, audit, get_logger
from shared.metrics import DIRECTORY_LAST_ADMIN_KEPT

log = get_logger("wibot.directory")

NO_LOCAL_PASSWORD = "!directory"  # noqa: S105 - a marker, no bcrypt hash: never matches any password
LEVELS_HIGHEST_FIRST = ("N4", "N3", "N2", "N1", "N0")
SYNC_LOCK = 7302029  # pg advisory lock key of the sync
SYNC_BATCH = 200

UPDATE_LINKED_SQL = """
UPDATE users SET username = $2, email = COALESCE($3, email), role = $4, accreditation_level = $5
WHERE directory_id = $1
RETURNING user_id, username, role, is_active
"""
LINKED_ROLE_SQL = "SELECT user_id, role, is_active FROM users WHERE directory_id = $1"
LINK_LOCAL_SQL = """
UPDATE users SET directory_id = $1, password_hash = $6, email = COALESCE($3, email), role = $4,
                 accreditation_level = $5
WHERE lower(username) = lower($2) AND directory_id IS NULL AND COALESCE(role, 'user') <> 'admin'
RETURNING user_id, username, role, is_active
"""
# Usernames are unique whatever their case (services/auth/queries.py CREATE_USER_SQL): no row, a name taken.
CREATE_SQL = """
INSERT INTO users (username, password_hash, email, role, accreditation_level, directory_id)
SELECT $2::varchar, $6::varchar, $3::varchar, $4::varchar, $5::varchar, $1::text
WHERE NOT EXISTS (SELECT 1 FROM users WHERE lower(username) = lower($2::varchar))
RETURNING user_id, username, role, is_active
"""
GENERATION_SQL = "SELECT COALESCE((SELECT generation FROM user_token_revocations WHERE user_id = $1), 0)"
LINKED_BATCH_SQL = """
SELECT user_id, directory_id, role, accreditation_level, is_active FROM users
WHERE directory_id IS NOT NULL AND user_id > $1 ORDER BY user_id LIMIT $2
"""
SYNC_UPDATE_SQL = """
UPDATE users SET role = $2, accreditation_level = $3, is_active = is_active AND $4 WHERE user_id = $1
"""


def role_and_level(settings: Settings, groups: frozenset[str]) -> tuple[str, str]:
    """admin when in an admin group; the highest level whose group holds them, else LDAP_DEFAULT_LEVEL."""
    admin = any(normalise_dn(group) in groups for group in settings.ldap_admin_groups)
    granted = {level for level, group in settings.ldap_level_groups.items() if normalise_dn(group) in groups}
    level = next((level for level in LEVELS_HIGHEST_FIRST if level in granted), settings.ldap_default_level)
    return ("admin" if admin else "user"), level


async def sign_in(pool: asyncpg.Pool, settings: Settings, account: DirectoryAccount) -> dict[str, Any]:
    """The local user of this directory account (user_id, username, role, is_active, generation), created or
    brought up to date; AccountConflict when its name is a local admin's or another account's."""
    role, level = role_and_level(settings, account.groups)
    for _ in range(2):  # first logins at once: the one that loses the race finds the account the other created
        try:
            async with pool.acquire() as conn, conn.transaction():
                linked = await conn.fetchrow(LINKED_ROLE_SQL, account.directory_id)
                if linked is not None:
                    role, _ = await keep_an_admin(conn, linked, role=role, active=True)
                values = (account.directory_id, account.username[:100], account.email, role, level, NO_LOCAL_PASSWORD)
                user = await conn.fetchrow(UPDATE_LINKED_SQL, *values[:5])
                created = user is None
                if user is None:
                    user = await conn.fetchrow(LINK_LOCAL_SQL, *values)
                    if user is not None:  # its local password is gone: so are the sessions it opened
                        await conn.execute(REVOKE_ALL_TOKENS_SQL, user["user_id"])
                if user is None:
                    user = await conn.fetchrow(CREATE_SQL, *values)
                if user is None:  # the name is a local admin's, or another directory account's
                    continue
                generation = await conn.fetchval(GENERATION_SQL, user["user_id"])
        except asyncpg.UniqueViolationError:
            continue
        if created:
            log.info("directory_account_linked", user_id=user["user_id"], role=role, accreditation_level=level)
        signed_in: dict[str, Any] = dict(user) | {"generation": generation}
        return signed_in
    raise AccountConflict


async def keep_an_admin(conn: asyncpg.Connection, user: asyncpg.Record, *, role: str, active: bool) -> tuple[str, bool]:
    """The role and activity the directory gives `user`, unless they would leave no active admin: then the admin
    keeps both (inside the caller's transaction: the active admins are locked, so two at once cannot both go)."""
    if not (user["role"] == "admin" and user["is_active"]) or (role == "admin" and active):
        return role, active
    admins = [row["user_id"] for row in await conn.fetch(LOCK_ACTIVE_ADMINS_SQL)]
    if admins != [user["user_id"]]:
        return role, active
    DIRECTORY_LAST_ADMIN_KEPT.inc()
    log.error(
        "directory_last_admin_kept", user_id=user["user_id"], directory_role=role, directory_active=active,
        hint="the directory lists no other active admin: check LDAP_ADMIN_GROUPS and the admin group's members",
    )  # fmt: skip
    return "admin", True


async def sync_accounts(pool: asyncpg.Pool, directory: Directory) -> dict[str, int]:
    """Every linked account re-read: gone or disabled in the directory → deactivated here (tokens refused from the
    next request); groups → role and level. One process at a time; None-like {} when another holds it."""
    settings, counts = directory.settings, {"checked": 0, "deactivated": 0, "changed": 0}
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SYNC_LOCK):
            return {}
        try:
            after = 0
            while rows := await conn.fetch(LINKED_BATCH_SQL, after, SYNC_BATCH):
                after = rows[-1]["user_id"]
                for row in rows:
                    counts["checked"] += 1
                    account = await directory.lookup(row["directory_id"])
                    keep = account is not None and not account.disabled
                    role, level = (
                        role_and_level(settings, account.groups)
                        if account
                        else (row["role"], row["accreditation_level"])
                    )
                    unchanged = (role, level) == (row["role"], row["accreditation_level"])
                    if unchanged and (keep or not row["is_active"]):
                        continue
                    async with conn.transaction():
                        role, keep = await keep_an_admin(conn, row, role=role, active=keep)
                        await conn.execute(SYNC_UPDATE_SQL, row["user_id"], role, level, keep)
                    if row["is_active"] and not keep:
                        counts["deactivated"] += 1
                        details = {"via": "directory_sync", "reason": "gone" if account is None else "disabled"}
                        await audit.record(conn, audit.USER_DEACTIVATED, actor_id=None, target=str(row["user_id"]),
                                           details=details)  # fmt: skip
                    elif (role, level) != (row["role"], row["accreditation_level"]):
                        counts["changed"] += 1
                        await audit.record(conn, audit.USER_CHANGED, actor_id=None, target=str(row["user_id"]),
                                           details={"via": "directory_sync", "role": role, "level": level})  # fmt: skip
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", SYNC_LOCK)
    log.info("directory_sync", **counts)
    return counts


async def scheduled_sync(pool: asyncpg.Pool, directory: Directory) -> None:
    while True:
        await asyncio.sleep(directory.settings.ldap_sync_every_s)
        try:
            await sync_accounts(pool, directory)
        except Exception:  # never let the schedule die: the directory may be down, the next round retries
            log.exception("directory_sync_failed")
