"""Monthly token quota: reserve before the model call, settle after, refund on failure."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import date

import asyncpg

from services.chat import queries
from shared import ApiError
from shared.metrics import QUOTA_REJECTIONS

# Below this many tokens of room for the reply, calling the model is pointless: answer 429 instead.
MIN_COMPLETION_TOKENS = 16
# The pre-call estimate must not undershoot the real count (French prose runs ~4 characters per token,
# code less): 3 characters per token plus a per-message overhead errs on the safe side.
CHARS_PER_TOKEN_ESTIMATE = 3
TOKENS_PER_MESSAGE_OVERHEAD = 4
MAX_RESERVE_ATTEMPTS = 20


@dataclass(frozen=True, slots=True)
class Reservation:
    user_id: int
    month: date
    tokens: int  # held on the user's quota until settled or refunded
    max_completion_tokens: int  # the reply cannot run past what was reserved


@dataclass(frozen=True, slots=True)
class Usage:
    used_tokens: int
    quota_tokens: int

    @property
    def remaining(self) -> int:
        return max(self.quota_tokens - self.used_tokens, 0)


def quota_exceeded(quota_tokens: int) -> ApiError:
    QUOTA_REJECTIONS.inc()
    return ApiError(429, f"Quota tokens mensuel dépassé. Limite : {quota_tokens:,} tokens/mois.", "QUOTA_EXCEEDED")


def estimate_prompt_tokens(contents: list[str]) -> int:
    return sum(math.ceil(len(text) / CHARS_PER_TOKEN_ESTIMATE) + TOKENS_PER_MESSAGE_OVERHEAD for text in contents)


async def reserve_quota(
    pool: asyncpg.Pool, *, user_id: int, month: date, prompt_tokens: int, max_tokens: int, default_quota: int
) -> Reservation:
    """Hold prompt + reply budget atomically, or raise the 429. The reply budget shrinks to what remains."""
    usage = Usage(0, default_quota)
    for _ in range(MAX_RESERVE_ATTEMPTS):
        row = await pool.fetchrow(queries.READ_OR_CREATE_USAGE_SQL, user_id, month, default_quota)
        if row is None:  # lost a first-use race: the row exists now
            continue
        usage = Usage(row["used_tokens"], row["quota_tokens"])
        completion_budget = min(max_tokens, usage.remaining - prompt_tokens)
        if completion_budget < MIN_COMPLETION_TOKENS:
            raise quota_exceeded(usage.quota_tokens)
        tokens = prompt_tokens + completion_budget
        if await pool.fetchrow(queries.RESERVE_TOKENS_SQL, user_id, month, tokens) is not None:
            return Reservation(user_id, month, tokens, completion_budget)
        # Someone else took the room between our read and our update: read again.
    raise quota_exceeded(usage.quota_tokens)


async def refund(pool: asyncpg.Pool, reservation: Reservation) -> None:
    # Shielded: a cancelled request (client gone) must still give its reservation back.
    await asyncio.shield(
        pool.execute(queries.REFUND_TOKENS_SQL, reservation.user_id, reservation.month, reservation.tokens)
    )
