"""Chat step `admit_chat`, before the request's body is even read: a user may have CHAT_CONCURRENT_PER_USER chats
in progress in a process (429 `CHAT_BUSY` beyond, at once), CHAT_REQUESTS_PER_MINUTE (429 `RATE_LIMITED`), and
a user whose quota has no room for a reply is refused (429 `QUOTA_EXCEEDED`), and so is a body too heavy for files
read without a worker from a user whose extraction time is spent (429 `EXTRACTION_BUSY`), before their megabytes
of JSON and files are parsed. What costs nothing to check
is checked before what costs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import asyncpg

from services.chat import queries
from services.chat.attachments import check_extraction_time
from services.chat.errors import ChatBusy
from services.chat.quota import MIN_COMPLETION_TOKENS, quota_exceeded
from shared import Settings, current_month
from shared.lanes import LaneFull, Lanes
from shared.ratelimit import check_rate

if TYPE_CHECKING:
    from services.chat.resources import Chat

# CHAT_CONCURRENT_PER_USER=0: no limit (every admitted chat runs at once).
UNLIMITED = 1_000_000


def chat_lanes(settings: Settings) -> Lanes:
    per_user = settings.chat_concurrent_per_user
    return Lanes(running_per_user=per_user or UNLIMITED, max_jobs_per_user=per_user)


@contextlib.asynccontextmanager
async def admit_chat(chat: Chat, user_id: int, *, body_bytes: int | None) -> AsyncIterator[None]:
    """The block runs as one of the user's chats in progress, once their quota was seen to have room (and their
    extraction time, for a body of `body_bytes` too heavy to hold only files read without a worker)."""
    try:
        async with chat.chats.slot(user_id):
            settings = chat.settings
            await check_rate(
                chat.pool, user_id=user_id, action="chat",
                per_minute=settings.chat_requests_per_minute, burst=settings.chat_burst,
            )  # fmt: skip
            check_extraction_time(chat.extractor, settings, user_id, body_bytes)
            await check_quota_room(chat.pool, settings, user_id)
            yield
    except LaneFull:
        raise ChatBusy(chat.settings.chat_concurrent_per_user) from None


@contextlib.asynccontextmanager
async def prepared_in_turn(chat: Chat, user_id: int) -> AsyncIterator[None]:
    """The block (reading the body, preparing the turn: what a chat costs the event loop and the database) runs
    for one of a user's chats at a time; the others wait, costing nothing, and their model calls still overlap.
    The event loop gives each ready task its turn: a user with four chats being prepared took four turns for each
    of another user's one (bench/attacks.py, retrieval: 3.5x their idle p99; one at a time: under 2x)."""
    async with chat.preparing.slot(user_id):
        yield


async def check_quota_room(pool: asyncpg.Pool, settings: Settings, user_id: int) -> None:
    """A read, no write: the reservation (workflow.reserve_budget) makes the row and holds the tokens."""
    row = await pool.fetchrow(queries.QUOTA_ROOM_SQL, user_id, current_month(), settings.default_quota_tokens)
    if row["quota_tokens"] - row["used_tokens"] < MIN_COMPLETION_TOKENS:
        raise quota_exceeded(row["quota_tokens"])
