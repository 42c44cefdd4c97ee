"""The audit trail (db/migrations/0017-audit-trail.sql): one row per login, logout, admin action, Safeguard decision,
ingestion, export and purge; append-only and hash-chained by the database itself.

`record` writes a row (the database numbers, times and chains it) and logs its id and hash: a copy outside the
database, which is what shows a row removed from the end of the chain. `verify` recomputes the chain and names
the first row edited or removed; `purge` removes rows past their retention, oldest first, in bounded batches, and
leaves the chain verifiable from its new start. `read` is the admin route's and the CLI's page of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from shared.keys import RequestKeys
from shared.logs import get_logger

log = get_logger("wibot.audit")

# Actions, by service: auth (login, logout, admin, Safeguard), chat (knowledge base), conversations (data).
LOGIN, LOGIN_FAILED, LOGOUT = "login", "login_failed", "logout"
USER_CREATED, USER_CHANGED, USER_DELETED = "user_created", "user_changed", "user_deleted"
USER_DEACTIVATED = "user_deactivated"
SAFEGUARD_DECISION, KB_INGESTION = "safeguard_decision", "kb_ingestion"
DATA_EXPORT, RETENTION_PURGE, AUDIT_PURGE = "data_export", "retention_purge", "audit_purge"

RECORD_SQL = """
INSERT INTO audit_log (actor_id, action, target, request_id, client_address, details)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING audit_id, encode(hash, 'hex') AS hash
"""

# Each row's hash recomputed, and its link to the row before it (or to the last purge's anchor) checked.
VERIFY_SQL = """
WITH anchor AS (SELECT hash FROM audit_anchor ORDER BY audit_id DESC LIMIT 1),
chain AS (
    SELECT audit_id, previous_hash, hash, lag(hash) OVER (ORDER BY audit_id) AS before,
           wibot_audit_hash(previous_hash, audit_id, at, actor_id, action, target, request_id, client_address,
                            details) AS recomputed
    FROM audit_log
)
SELECT audit_id, CASE WHEN hash <> recomputed THEN 'edited' ELSE 'row_removed_before' END AS fault
FROM chain
WHERE hash <> recomputed
   OR previous_hash <> coalesce(before, (SELECT hash FROM anchor), '\\x'::bytea)
ORDER BY audit_id
LIMIT 20
"""
HEAD_SQL = "SELECT count(*) AS rows, max(audit_id) AS last_id FROM audit_log"
LAST_HASH_SQL = "SELECT encode(hash, 'hex') FROM audit_log ORDER BY audit_id DESC LIMIT 1"

PURGE_BATCH_SQL = """
WITH removed AS (
    DELETE FROM audit_log
    WHERE audit_id IN (
        SELECT audit_id FROM audit_log
        WHERE at < $1 AND at < (now() AT TIME ZONE 'UTC') - make_interval(days => $3)  -- what the trigger allows
        ORDER BY audit_id LIMIT $2
    )
    RETURNING audit_id, hash
), last AS (
    SELECT audit_id, hash FROM removed ORDER BY audit_id DESC LIMIT 1
), anchored AS (
    INSERT INTO audit_anchor (audit_id, hash) SELECT audit_id, hash FROM last RETURNING audit_id
)
SELECT count(*) AS removed FROM removed
"""

READ_SQL = """
SELECT audit_id, at, actor_id, action, target, request_id, client_address, details, encode(hash, 'hex') AS hash
FROM audit_log
WHERE ($1::integer IS NULL OR actor_id = $1)
  AND ($2::text IS NULL OR action = $2)
  AND ($3::timestamp IS NULL OR at >= $3)
  AND ($4::timestamp IS NULL OR at < $4)
  AND ($5::bigint IS NULL OR audit_id < $5)
ORDER BY audit_id DESC
LIMIT $6
"""

PURGE_BATCH = 1_000
MIN_RETENTION_DAYS = 180  # the database refuses to delete younger rows (the migration's trigger)


def request_origin(request: web.Request | None) -> tuple[str | None, str | None]:
    """(request id, client address): the address nginx saw (X-Real-IP, set by the gateway), else the peer's."""
    if request is None:
        return None, None
    address = request.headers.get("X-Real-IP") or request.remote
    return request.get(RequestKeys.REQUEST_ID), (address[:64] if address else None)


async def record(
    db: asyncpg.Pool | asyncpg.Connection,
    action: str,
    *,
    actor_id: int | None,
    target: str | None = None,
    request: web.Request | None = None,
    details: dict[str, Any] | None = None,
) -> int:
    request_id, address = request_origin(request)
    row = await db.fetchrow(RECORD_SQL, actor_id, action, target, request_id, address, details or {})
    log.info("audit", audit_id=row["audit_id"], action=action, actor_id=actor_id, hash=row["hash"])
    audit_id: int = row["audit_id"]
    return audit_id


@dataclass(frozen=True, slots=True)
class Verification:
    rows: int
    last_id: int | None
    last_hash: str | None
    faults: list[tuple[int, str]]  # (audit_id, "edited" | "row_removed_before")

    @property
    def intact(self) -> bool:
        return not self.faults


async def verify(pool: asyncpg.Pool) -> Verification:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        faults = [(row["audit_id"], row["fault"]) for row in await conn.fetch(VERIFY_SQL)]
        head = await conn.fetchrow(HEAD_SQL)
        last_hash = await conn.fetchval(LAST_HASH_SQL)
    return Verification(head["rows"], head["last_id"], last_hash, faults)


async def purge(pool: asyncpg.Pool | asyncpg.Connection, *, before: datetime, batch: int = PURGE_BATCH) -> int:
    """Rows older than `before`, oldest first, `batch` per transaction; returns how many."""
    total = 0
    while True:
        removed: int = await pool.fetchval(PURGE_BATCH_SQL, before, batch, MIN_RETENTION_DAYS)
        total += removed
        if removed < batch:
            return total


async def read(
    db: asyncpg.Pool | asyncpg.Connection,
    *,
    actor_id: int | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Newest first; the next page starts `before_id` the last row's id."""
    rows = await db.fetch(READ_SQL, actor_id, action, since, until, before_id, limit)
    return [dict(row) for row in rows]
