"""Monthly token quota: reserve before the model call; after it, charge what the answer cost (saved or not), or
refund if there was no answer.

Each reservation is a row (token_reservations) written in the same statement as the quota update, so that
settling (save_exchange) or refunding it happens exactly once, even when the database's answer is lost
(a restart, a killed connection): a refund of an unknown or already-settled reservation changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import date
from uuid import UUID, uuid4

import asyncpg

from services.chat import queries
from services.chat.errors import QuotaExceeded
from shared import DB_UNAVAILABLE_ERRORS, get_logger
from shared.background import Background
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


def quota_exceeded(quota_tokens: int) -> QuotaExceeded:
    QUOTA_REJECTIONS.inc()
    return QuotaExceeded(quota_tokens)


def estimate_prompt_tokens(contents: list[str]) -> int:
    return sum(tokens_for_chars(len(text)) for text in contents)


def tokens_for_chars(chars: int) -> int:
    """The estimate for one message of `chars` characters."""
    return math.ceil(chars / CHARS_PER_TOKEN_ESTIMATE) + TOKENS_PER_MESSAGE_OVERHEAD


async def reserve_quota(
    pool: asyncpg.Pool,
    background: Background,
    *,
    user_id: int,
    month: date,
    prompt_tokens: int,
    max_tokens: int,
    default_quota: int,
) -> Reservation:
    """Hold prompt + reply budget atomically, or raise QuotaExceeded. The reply budget shrinks to what remains."""
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
            await refund(pool, background, reservation)
            raise
        if recorded is not None:
            return reservation
        # Someone else took the room between our read and our update: read again.
    raise quota_exceeded(quota_tokens)


class Budget:
    """What one chat request holds on its user's quota, from before its first costly step until it is settled:
    the reservation grows before an attachment is embedded (`cover`) and fits the prompt once it is known
    (`fit`), whatever the embeddings did not use then going to the reply."""

    def __init__(
        self, pool: asyncpg.Pool, background: Background, reservation: Reservation, *, max_tokens: int
    ) -> None:
        self.pool, self.background = pool, background
        self.reservation = reservation
        self.max_tokens = max_tokens
        self.embedding_tokens = 0  # what this request's attachments' embeddings cost (charged whatever happens)

    async def room(self) -> int:
        """Tokens the quota could still add to this request's reservation."""
        return (await self._usage()).remaining

    async def cover(self, tokens: int) -> bool:
        """Hold `tokens` more for an embedding about to be made; False when the quota has no such room."""
        return await self._grow(tokens, partly=False) == tokens

    async def fit(self, prompt_tokens: int) -> Reservation:
        """The reservation made exactly what this prompt needs: the reply's budget up to max_tokens, the excess
        given back, or grown when the prompt came out larger than foreseen (429 when the quota cannot)."""
        left_for_reply = self.reservation.tokens - self.embedding_tokens - prompt_tokens
        if left_for_reply < self.max_tokens:  # the reply would be short: as much more as the quota holds
            left_for_reply += await self._grow(self.max_tokens - left_for_reply, partly=True)
        if left_for_reply < MIN_COMPLETION_TOKENS:
            raise quota_exceeded((await self._usage()).quota_tokens)
        completion = min(self.max_tokens, left_for_reply)
        needed = prompt_tokens + self.embedding_tokens + completion
        if needed < self.reservation.tokens:
            await self.pool.execute(
                queries.SHRINK_RESERVATION_SQL, self.reservation.reservation_id, self.reservation.tokens - needed
            )
        self.reservation = replace(self.reservation, tokens=needed, max_completion_tokens=completion)
        return self.reservation

    async def _grow(self, tokens: int, *, partly: bool) -> int:
        """Tokens added to the reservation: `tokens`, or (`partly`) as many of them as the quota holds; 0 when
        the quota has no room (or the reservation is gone)."""
        held = self.reservation
        added = await self.pool.fetchval(
            queries.GROW_RESERVATION_SQL, held.user_id, held.month, held.reservation_id, tokens, partly
        )
        if not added:
            return 0
        self.reservation = replace(held, tokens=held.tokens + added)
        return int(added)

    async def _usage(self) -> Usage:
        held = self.reservation
        row = await self.pool.fetchrow(queries.READ_OR_CREATE_USAGE_SQL, held.user_id, held.month, 0)
        return Usage(row["used_tokens"], row["quota_tokens"]) if row else Usage(0, 0)

    @contextlib.asynccontextmanager
    async def given_back_on_failure(self) -> AsyncIterator[None]:
        """The block works towards an answer; if it fails, is refused or its client leaves, the reservation is
        given back (but for what was already spent embedding this request's attachments, which is charged)."""
        try:
            yield
        except BaseException:
            await self._give_back()
            raise

    @contextlib.asynccontextmanager
    async def spent_from_the_call(self, prompt_tokens: int) -> AsyncIterator[None]:
        """The block calls the model with a prompt of `prompt_tokens` (estimated). If the call fails, the
        reservation is given back as before it; if the client leaves once it started (the handler is cancelled),
        the prompt is charged: the model has read it, whether or not its reply reaches anyone. The one rule of
        both ways to answer: a stream whose client leaves mid-reply is settled with the text produced so far."""
        try:
            yield
        except asyncio.CancelledError:
            tokens = self.embedding_tokens + prompt_tokens
            await charge_unsaved(self.pool, self.background, self.reservation, tokens=tokens, reason="client_left")
            raise
        except BaseException:
            await self._give_back()
            raise

    async def _give_back(self) -> None:
        if self.embedding_tokens:
            await charge_unsaved(
                self.pool, self.background, self.reservation, tokens=self.embedding_tokens, reason="no_answer"
            )
        else:
            await refund(self.pool, self.background, self.reservation)


async def refund(pool: asyncpg.Pool, background: Background, reservation: Reservation) -> None:
    """Give the reservation back (the model did not answer)."""
    await _until_done(pool, background, reservation, "refund", queries.REFUND_TOKENS_SQL, reservation.reservation_id)


async def charge_unsaved(
    pool: asyncpg.Pool, background: Background, reservation: Reservation, *, tokens: int, reason: str
) -> None:
    """The model answered but the exchange was not saved: charge its tokens all the same, and record why."""
    log.warning("charged_without_save", user_id=reservation.user_id, tokens=tokens, reason=reason)
    await _until_done(
        pool, background, reservation, "charge", queries.CHARGE_UNSAVED_SQL, reservation.reservation_id, tokens, reason
    )


async def _until_done(
    pool: asyncpg.Pool, background: Background, reservation: Reservation, what: str, sql: str, *args: object
) -> None:
    """Run a settling statement now; if the database is unreachable (that may be why we settle), retry it in the
    background until it answers: a reservation must end as a refund or a charge, never stay held."""
    try:
        # Shielded: a cancelled request (client gone) must still settle its reservation.
        await asyncio.shield(pool.execute(sql, *args))
    except LOST_ANSWER_ERRORS as exc:
        log.warning(f"{what}_deferred", user_id=reservation.user_id, tokens=reservation.tokens, exc=repr(exc))
        background.finish(_retry_later(pool, reservation, what, sql, *args))


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


async def sweep_stale_reservations(pool: asyncpg.Pool, *, older_than_s: float) -> int:
    """Refund reservations whose request died with its process (crash, kill -9); returns tokens given back."""
    rows = await pool.fetch(queries.SWEEP_STALE_RESERVATIONS_SQL, older_than_s)
    for row in rows:
        log.warning("stale_reservation_refunded", user_id=row["user_id"], tokens=row["tokens"])
    STALE_RESERVATIONS.inc(len(rows))
    return sum(row["tokens"] for row in rows)
