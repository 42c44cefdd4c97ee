"""A person's data and how long it is kept (#30): the export of one user's data, and the retention purge.

`export_user` yields the caller's profile, usage by month and conversations with their messages as one JSON
document, in pieces (a conversation batch at a time: a heavy user's export never sits whole in memory).
`purge_inactive` deletes conversations without activity for RETENTION_DAYS, with their messages and their
attachments' knowledge-base chunks, a bounded batch per transaction; usage counters stay (accounting). One
process at a time across replicas (a session advisory lock): the others skip that round. The audit trail's own
retention (AUDIT_RETENTION_DAYS) is purged in the same round.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from shared import Settings, audit, get_logger
from shared.contracts import format_utc
from shared.db import utc_now
from shared.metrics import RETENTION_PURGED

log = get_logger("wibot.data")

PURGE_LOCK = 7302030  # pg advisory lock key of the retention purge
PURGE_BATCH_CONVERSATIONS = 200
EXPORT_BATCH_CONVERSATIONS = 100

PROFILE_SQL = """
SELECT user_id, username, email, role, accreditation_level, is_active, created_at FROM users WHERE user_id = $1
"""
USAGE_SQL = """
SELECT to_char(month, 'YYYY-MM') AS month, used_tokens, quota_tokens FROM user_token_usage
WHERE user_id = $1 ORDER BY month
"""
CONVERSATIONS_BATCH_SQL = """
SELECT conversation_id, title, created_at, updated_at FROM conversations
WHERE user_id = $1 AND ($2::uuid IS NULL OR conversation_id > $2)
ORDER BY conversation_id LIMIT $3
"""
MESSAGES_OF_SQL = """
SELECT conversation_id, role, content, tokens, mode, attachments, created_at FROM messages
WHERE conversation_id = ANY($1::uuid[])
ORDER BY conversation_id, created_at, message_id
"""

INACTIVE = """
    SELECT conversation_id FROM conversations
    WHERE coalesce(updated_at, created_at) < $1
    ORDER BY coalesce(updated_at, created_at) LIMIT $2
"""
PURGE_BATCH_SQL = f"""
WITH old AS ({INACTIVE} FOR UPDATE SKIP LOCKED),
documents AS (
    DELETE FROM kb_documents WHERE conversation_id IN (SELECT conversation_id FROM old) RETURNING chunk_count
),
removed_messages AS (DELETE FROM messages WHERE conversation_id IN (SELECT conversation_id FROM old) RETURNING 1),
removed AS (DELETE FROM conversations WHERE conversation_id IN (SELECT conversation_id FROM old) RETURNING 1)
SELECT (SELECT count(*) FROM removed) AS conversations, (SELECT count(*) FROM removed_messages) AS messages,
       (SELECT coalesce(sum(chunk_count), 0) FROM documents) AS chunks
"""  # noqa: S608 - a constant's text, no value
DRY_RUN_SQL = f"""
WITH old AS ({INACTIVE})
SELECT (SELECT count(*) FROM old) AS conversations,
       (SELECT count(*) FROM messages WHERE conversation_id IN (SELECT conversation_id FROM old)) AS messages,
       (SELECT coalesce(sum(chunk_count), 0) FROM kb_documents
         WHERE conversation_id IN (SELECT conversation_id FROM old)) AS chunks
"""  # noqa: S608 - a constant's text, no value
AUDIT_ROWS_BEFORE_SQL = """
SELECT count(*) FROM audit_log WHERE at < $1 AND at < (now() AT TIME ZONE 'UTC') - make_interval(days => $2)
"""


async def export_user(pool: asyncpg.Pool, user_id: int, *, exported_at: datetime) -> AsyncIterator[bytes]:
    profile = await pool.fetchrow(PROFILE_SQL, user_id)
    usage = [dict(row) for row in await pool.fetch(USAGE_SQL, user_id)]
    head = {"success": True, "exported_at": format_utc(exported_at), "user": _utc(dict(profile)), "usage": usage}
    yield orjson.dumps(head)[:-1] + b',"conversations":['
    after, first = None, True
    while True:
        conversations = await pool.fetch(CONVERSATIONS_BATCH_SQL, user_id, after, EXPORT_BATCH_CONVERSATIONS)
        if not conversations:
            break
        ids = [row["conversation_id"] for row in conversations]
        messages: dict[Any, list[dict[str, Any]]] = {cid: [] for cid in ids}
        for row in await pool.fetch(MESSAGES_OF_SQL, ids):
            message = _utc(dict(row))
            messages[message.pop("conversation_id")].append(message)
        parts = [
            orjson.dumps(
                _utc(dict(row))
                | {"conversation_id": str(row["conversation_id"])}
                | {"messages": messages[row["conversation_id"]]}
            )
            for row in conversations
        ]
        yield (b"" if first else b",") + b",".join(parts)
        first, after = False, ids[-1]
    yield b"]}"


def _utc(row: dict[str, Any]) -> dict[str, Any]:
    """The spec's date format for every timestamp of a row."""
    return {key: format_utc(value) if isinstance(value, datetime) else value for key, value in row.items()}


@dataclass(frozen=True, slots=True)
class Purged:
    conversations: int = 0
    messages: int = 0
    chunks: int = 0
    audit_rows: int = 0

    def __add__(self, other: Purged) -> Purged:
        return Purged(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values(), strict=True)))


async def purge_inactive(
    pool: asyncpg.Pool, settings: Settings, *, now: datetime, dry_run: bool = False
) -> Purged | None:
    """One purge round; None when another process holds the purge."""
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", PURGE_LOCK):
            return None
        try:
            return await _purge(conn, settings, now=now, dry_run=dry_run)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", PURGE_LOCK)


async def _purge(conn: asyncpg.Connection, settings: Settings, *, now: datetime, dry_run: bool) -> Purged:
    total = Purged()
    audit_before = now - timedelta(days=settings.audit_retention_days)
    if settings.retention_days:
        before = now - timedelta(days=settings.retention_days)
        if dry_run:
            total = Purged(**dict(await conn.fetchrow(DRY_RUN_SQL, before, 2**31 - 1)))
        else:
            while True:  # a batch per transaction: locks held for one batch only
                batch = Purged(**dict(await conn.fetchrow(PURGE_BATCH_SQL, before, PURGE_BATCH_CONVERSATIONS)))
                total += batch
                if batch.conversations < PURGE_BATCH_CONVERSATIONS:
                    break
                await asyncio.sleep(0)
    if dry_run:
        return replace(
            total, audit_rows=await conn.fetchval(AUDIT_ROWS_BEFORE_SQL, audit_before, audit.MIN_RETENTION_DAYS)
        )
    total = replace(total, audit_rows=await audit.purge(conn, before=audit_before))
    for what, count in asdict(total).items():
        RETENTION_PURGED.labels(what).inc(count)
    log.info("retention_purge", retention_days=settings.retention_days, **asdict(total))
    if total != Purged():
        await audit.record(conn, audit.RETENTION_PURGE, actor_id=None, details=asdict(total))
    return total


async def scheduled_purge(pool: asyncpg.Pool, settings: Settings) -> None:
    """Every RETENTION_PURGE_EVERY_S, a purge round (the first soon after start)."""
    while True:
        try:
            if await purge_inactive(pool, settings, now=utc_now()) is None:
                log.info("retention_purge_skipped", reason="another process is purging")
        except Exception:  # never let the schedule die: the next round retries
            log.exception("retention_purge_failed")
        await asyncio.sleep(settings.retention_purge_every_s)
