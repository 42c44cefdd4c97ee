"""Per-user request limits, kept in PostgreSQL so that every process and every restart sees the same state.

A rate with a burst (the generic cell rate algorithm): `per_minute` requests a minute, at most `burst` of them
at once, then one every 60/`per_minute` s; one row per user and action holds when their next request is due,
updated in one statement. The per-minute windows before let a user spend a minute's requests in its first
second (and twice that across a minute's edge): thirty chats with megabytes of files each, all at once, while
the other users waited behind them (bench/attacks.py).
"""

from __future__ import annotations

import math
import time
from typing import Any

from shared.errors import RateLimited
from shared.metrics import RATE_LIMITED

# Admit this request if the user's next one was due no later than $4 s from now (the burst's tolerance), and move
# that moment one interval ($3 s) on; refused, how long until it will be, from the row as this statement's snapshot
# saw it (a concurrent request may have moved it or, for a user's first requests, made it: the wait said is then
# short or unknown, never a wrong admission).
HIT_SQL = """
WITH previous AS (
    SELECT due_at FROM rate_limits WHERE user_id = $1 AND action = $2
), hit AS (
    INSERT INTO rate_limits AS limits (user_id, action, due_at)
    VALUES ($1, $2, NOW() + make_interval(secs => $3))
    ON CONFLICT (user_id, action) DO UPDATE
        SET due_at = GREATEST(limits.due_at, NOW()) + make_interval(secs => $3)
        WHERE limits.due_at <= NOW() + make_interval(secs => $4)
    RETURNING due_at
)
SELECT EXISTS (SELECT FROM hit) AS admitted,
       extract(epoch FROM (SELECT due_at FROM previous) - NOW())::float8 - $4 AS wait_s
"""

ACTION_LABELS = {"chat": "messages", "conversation_create": "créations de conversation", "export": "exports"}


# Per pool (one database), (user, action) -> until when (monotonic) they are refused: a refused user stays refused
# until their next request is due, so the requests refused meanwhile need no round trip (a flood of refusals was
# a flood of statements). Forgotten once past; bounded by the users refused within their wait.
MAX_REMEMBERED = 10_000
_REFUSED_UNTIL: dict[int, tuple[Any, dict[tuple[int, str], float]]] = {}  # id(pool) -> (the pool, its refusals)


def _refusals(pool: Any) -> dict[tuple[int, str], float]:
    entry = _REFUSED_UNTIL.get(id(pool))
    if entry is None or entry[0] is not pool:
        for key in [key for key, (other, _) in _REFUSED_UNTIL.items() if other.is_closing()]:
            del _REFUSED_UNTIL[key]  # a closed pool's refusals: nobody asks them again
        entry = _REFUSED_UNTIL[id(pool)] = (pool, {})
    return entry[1]


async def check_rate(pool: Any, *, user_id: int, action: str, per_minute: int, burst: int = 0) -> None:
    """Count one request; RateLimited (429 `RATE_LIMITED` with Retry-After) past `per_minute`, or past `burst`
    at once (0, or more than `per_minute`: a minute's worth at once). `per_minute` 0: no limit."""
    if per_minute <= 0:
        return
    burst = min(burst, per_minute) if burst > 0 else per_minute
    label = ACTION_LABELS.get(action, "requêtes")
    refused = _refusals(pool)
    now = time.monotonic()
    until = refused.get((user_id, action))
    if until is not None:
        if now < until:
            RATE_LIMITED.labels(action, "memory").inc()
            raise RateLimited(label=label, per_minute=per_minute, burst=burst, retry_after_s=_seconds(until - now))
        del refused[(user_id, action)]
    interval_s = 60 / per_minute
    row = await pool.fetchrow(HIT_SQL, user_id, action, interval_s, (burst - 1) * interval_s)
    if not row["admitted"]:
        wait_s = max(0.0, row["wait_s"] if row["wait_s"] is not None else interval_s)
        if len(refused) >= MAX_REMEMBERED:
            for key in [key for key, ends in refused.items() if ends <= now]:
                del refused[key]
        refused[(user_id, action)] = now + wait_s
        RATE_LIMITED.labels(action, "database").inc()
        raise RateLimited(label=label, per_minute=per_minute, burst=burst, retry_after_s=_seconds(wait_s))


def _seconds(wait_s: float) -> int:
    return max(1, math.ceil(wait_s))
