"""Data steps of the conversations service. They raise domain errors; the views map them to HTTP."""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from services.conversations import queries
from shared.errors import ConversationIdTaken, TooManyConversations
from shared.rules import QuotaSource, at_conversation_cap, quota_in_force

UNTITLED = "Nouvelle conversation"


class ConversationNotFound(Exception):
    pass


class NotYourConversation(Exception):
    pass


class UnknownCursor(Exception):
    pass


async def list_conversations(
    pool: asyncpg.Pool, *, user_id: int, limit: int, before: UUID | None
) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(queries.LIST_CONVERSATIONS_SQL, user_id, limit, before, UNTITLED)
        if not rows and before is not None and await conn.fetchval(queries.CURSOR_EXISTS_SQL, before, user_id) is None:
            raise UnknownCursor
    return list(rows)


async def check_owner(conn: asyncpg.Connection, conversation_id: UUID, user_id: int) -> bool:
    """True if the caller owns it, False if it does not exist; NotYourConversation otherwise."""
    owner = await conn.fetchval(queries.CONVERSATION_OWNER_SQL, conversation_id)
    if owner is None:
        return False
    if owner != user_id:
        raise NotYourConversation
    return True


async def list_messages(pool: asyncpg.Pool, *, conversation_id: UUID, user_id: int) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        if not await check_owner(conn, conversation_id, user_id):
            return []  # the frontend invents conversation ids: an unknown one is simply empty
        return list(await conn.fetch(queries.MESSAGES_SQL, conversation_id))


async def fetch_conversation(conn: asyncpg.Connection, conversation_id: UUID) -> dict[str, Any]:
    row = await conn.fetchrow(queries.CONVERSATION_SQL, conversation_id, UNTITLED)
    if row is None:
        raise ConversationNotFound
    return dict(row)


async def create_conversation(
    pool: asyncpg.Pool, *, user_id: int, conversation_id: UUID | None, title: str | None, max_per_user: int
) -> dict[str, Any]:
    """Idempotent for its owner: creating an existing conversation of yours returns it unchanged."""
    conversation_id = conversation_id or uuid4()
    async with pool.acquire() as conn:
        if await at_conversation_cap(conn, user_id=user_id, limit=max_per_user):
            if not await _owned_unless_taken(conn, conversation_id, user_id):
                raise TooManyConversations(max_per_user)
        created = await conn.fetchval(queries.CREATE_CONVERSATION_SQL, conversation_id, user_id, title)
        if created is None:
            await _owned_unless_taken(conn, conversation_id, user_id)
        return await fetch_conversation(conn, conversation_id)


async def _owned_unless_taken(conn: asyncpg.Connection, conversation_id: UUID, user_id: int) -> bool:
    """check_owner for creation: someone else's id is taken (409), not forbidden."""
    try:
        return await check_owner(conn, conversation_id, user_id)
    except NotYourConversation:
        raise ConversationIdTaken from None


async def rename_conversation(pool: asyncpg.Pool, *, conversation_id: UUID, user_id: int, title: str) -> dict[str, Any]:
    async with pool.acquire() as conn:
        if await conn.fetchval(queries.RENAME_CONVERSATION_SQL, conversation_id, user_id, title) is None:
            await _explain_miss(conn, conversation_id, user_id)
        return await fetch_conversation(conn, conversation_id)


async def delete_conversation(pool: asyncpg.Pool, *, conversation_id: UUID, user_id: int) -> None:
    async with pool.acquire() as conn:
        if await conn.fetchval(queries.DELETE_CONVERSATION_SQL, conversation_id, user_id) is None:
            await _explain_miss(conn, conversation_id, user_id)


async def _explain_miss(conn: asyncpg.Connection, conversation_id: UUID, user_id: int) -> None:
    if not await check_owner(conn, conversation_id, user_id):
        raise ConversationNotFound


async def month_usage(
    pool: asyncpg.Pool, *, user_id: int, month: date, default_quota: int
) -> tuple[int, int, QuotaSource]:
    """Used tokens, quota and where the quota comes from (month, standing or default)."""
    row = await pool.fetchrow(queries.MONTH_USAGE_SQL, user_id, month)
    if row is None:
        return 0, default_quota, "default"
    quota, source = quota_in_force(row["month_quota_tokens"], row["standing_quota_tokens"], default_quota)
    return row["used_tokens"], quota, source
