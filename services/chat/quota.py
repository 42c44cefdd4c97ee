"""Monthly token quota: reserve before the model call; after it, charge what the answer cost (saved or not), or
refund if there was no answer.

Each reservation is a row (token_reservations) written in the same statement as the quota update, so that
settling (save_exchange) or refunding it happens exactly once, even when the database's answer is lost
(a restart, a killed connection): a refund of an unknown or already-settled reservation changes nothing.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import date
from uuid import UUID, uuid4

import asyncpg

from services.chat import queries
from shared import DB_UNAVAILABLE_ERRORS, ApiError, get_logger
from shared.metrics import QUOTA_REJECTIONS, STALE_RESERVATIONS

log = get_logger("wibot.quota")

# The database did not answer in time, or not at all: whether the statement ran is unknown.
LOST_ANSWER_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *DB_UNAVAILABLE_ERRORS)

# Below this many tokens of room for the reply, calling the model is pointless: answer 429 instead.
MIN_COMPLETION_TOKENS = 16
# The pre-call estimate must not undershoot the real count (French prose runs ~4 characters per token,
# code less): 3 characters per token plus a per-message overhead errs on the safe side.
CHARS_PER_TOKEN_ESTIMATE = 3
TOKENS_PER_MESSAGE_OVERHEAD = 4
MAX_RESERVE_ATTEMPTS = 20


@dataclass(frozen=True, slots=True)  # pragma: no mutate (slots: memory only, nothing sets attributes)
class Reservation:
    reservation_id: UUID
    user_id: int
    month: date
    tokens: int  # held on the user's quota until settled or refunded
    max_completion_tokens: int  # the reply cannot run past what was reserved


@dataclass(frozen=True, slots=True)  # pragma: no mutate (slots: memory only, nothing sets attributes)
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
    quota_tokens = default_quota  # what a 429 names if every attempt lost its race
    for _ in range(MAX_RESERVE_ATTEMPTS):
        row = await pool.fetchrow(queries.READ_OR_CREATE_USAGE_SQL, user_id, month, default_quota)
        if row is None:  # lost a first-use race: the row exists now
            continue
        usage = Usage(row["used_tokens"], row["quota_tokens"])
        quota_tokens = usage.quota_tokens
        completion_budget = min(max_tokens, usage.remaining - prompt_tokens)
        if completion_budget < MIN_COMPLETION_TOKENS:
            raise quota_exceeded(usage.quota_tokens)
        reservation = Reservation(uuid4(), user_id, month, prompt_tokens + completion_budget, completion_budget)
        try:
            recorded = await pool.fetchval(
                queries.RESERVE_TOKENS_SQL, user_id, month, reservation.tokens, reservation.reservation_id
            )
        except LOST_ANSWER_ERRORS:
            # The answer was lost, not necessarily the reservation: give it back if it was made.
            await refund(pool, reservation)
            raise
        if recorded is not None:
            return reservation
        # Someone else took the room between our read and our update: read again.
    raise quota_exceeded(quota_tokens)


async def refund(pool: asyncpg.Pool, reservation: Reservation) -> None:
    """Give the reservation back (the model did not answer)."""
    await _until_done(pool, reservation, "refund", queries.REFUND_TOKENS_SQL, reservation.reservation_id)


async def charge_unsaved(pool: asyncpg.Pool, reservation: Reservation, *, tokens: int, reason: str) -> None:
    """The model answered but the exchange was not saved: charge its tokens all the same, and record why."""
    log.warning("charged_without_save", user_id=reservation.user_id, tokens=tokens, reason=reason)
    await _until_done(
        pool, reservation, "charge", queries.CHARGE_UNSAVED_SQL, reservation.reservation_id, tokens, reason
    )


async def _until_done(pool: asyncpg.Pool, reservation: Reservation, what: str, sql: str, *args: object) -> None:
    """Run a settling statement now; if the database is unreachable (that may be why we settle), retry it in the
    background until it answers: a reservation must end as a refund or a charge, never stay held."""
    try:
        # Shielded: a cancelled request (client gone) must still settle its reservation.
        await asyncio.shield(pool.execute(sql, *args))
    except LOST_ANSWER_ERRORS as exc:
        log.warning(f"{what}_deferred", user_id=reservation.user_id, tokens=reservation.tokens, exc=repr(exc))
        task = asyncio.get_running_loop().create_task(_retry_later(pool, reservation, what, sql, *args))
        _deferred_refunds.add(task)
        task.add_done_callback(_deferred_refunds.discard)


_deferred_refunds: set[asyncio.Task[None]] = set()
REFUND_RETRY_FOR_S = 600.0


async def _retry_later(pool: asyncpg.Pool, reservation: Reservation, what: str, sql: str, *args: object) -> None:
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + REFUND_RETRY_FOR_S, 0.2
    while loop.time() < deadline:
        await asyncio.sleep(delay)
        try:
            await pool.execute(sql, *args)
        except LOST_ANSWER_ERRORS:
            delay = min(delay * 2, 5.0)
            continue
        log.info(f"{what}_recovered", user_id=reservation.user_id, tokens=reservation.tokens)
        return
    log.error(f"{what}_lost", user_id=reservation.user_id, tokens=reservation.tokens, month=str(reservation.month))


async def wait_for_deferred_refunds(within_s: float = 5.0) -> bool:
    """Wait for the refunds and charges retried in the background (at shutdown, their last chance); True when
    none is left."""
    pending = set(_deferred_refunds)
    if pending:
        _, pending = await asyncio.wait(pending, timeout=within_s)
    return not pending


async def sweep_stale_reservations(pool: asyncpg.Pool, *, older_than_s: float) -> int:
    """Refund reservations whose request died with its process (crash, kill -9); returns tokens given back."""
    rows = await pool.fetch(queries.SWEEP_STALE_RESERVATIONS_SQL, older_than_s)
    for row in rows:
        log.warning("stale_reservation_refunded", user_id=row["user_id"], tokens=row["tokens"])
    STALE_RESERVATIONS.inc(len(rows))
    return sum(row["tokens"] for row in rows)
