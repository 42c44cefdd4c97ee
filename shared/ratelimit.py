"""Per-user request limits, counted in PostgreSQL so that every process and every restart sees the same count.

A fixed one-minute window per user and action: simple, exact across processes, one round trip. At a minute's
edge a user may pass up to twice the limit within a few seconds; the limit is about abuse, not billing (the
token quota does that).
"""

from __future__ import annotations

import time
from typing import Any

from shared.errors import RateLimited

# Count this hit and forget the user's windows older than the previous minute, in one statement.
HIT_SQL = """
WITH forgotten AS (
    DELETE FROM rate_limit_windows
    WHERE user_id = $1 AND action = $2
      AND window_start < date_trunc('minute', NOW() AT TIME ZONE 'UTC') - INTERVAL '1 minute'
), hit AS (
    INSERT INTO rate_limit_windows (user_id, action, window_start, hits)
    VALUES ($1, $2, date_trunc('minute', NOW() AT TIME ZONE 'UTC'), 1)
    ON CONFLICT (user_id, action, window_start) DO UPDATE SET hits = rate_limit_windows.hits + 1
    RETURNING hits, window_start
)
SELECT hits, GREATEST(1, ceil(left_s))::int AS retry_after_s, left_s
FROM (SELECT hits, extract(epoch FROM window_start + INTERVAL '1 minute' - NOW() AT TIME ZONE 'UTC')::float8
             AS left_s FROM hit) AS window_left
"""

ACTION_LABELS = {"chat": "messages", "conversation_create": "créations de conversation", "export": "exports"}


# Per pool (one database), (user, action) -> when their full window ends (monotonic): a window past its limit
# stays past it until it ends, so the requests refused meanwhile need no write (a flood of refusals was a flood
# of UPDATEs). Forgotten once ended; bounded by the users over a limit within a minute.
MAX_REMEMBERED = 10_000
_FULL_UNTIL: dict[int, tuple[Any, dict[tuple[int, str], float]]] = {}  # id(pool) -> (the pool, its windows)


def _full_windows(pool: Any) -> dict[tuple[int, str], float]:
    entry = _FULL_UNTIL.get(id(pool))
    if entry is None or entry[0] is not pool:
        for key in [key for key, (other, _) in _FULL_UNTIL.items() if other.is_closing()]:
            del _FULL_UNTIL[key]  # a closed pool's windows: nobody asks them again
        entry = _FULL_UNTIL[id(pool)] = (pool, {})
    return entry[1]


async def check_rate(pool: Any, *, user_id: int, action: str, per_minute: int) -> None:
    """Count one request; RateLimited (429 `RATE_LIMITED` with Retry-After) past `per_minute` (0: no limit)."""
    if per_minute <= 0:
        return
    label = ACTION_LABELS.get(action, "requêtes")
    full = _full_windows(pool)
    now = time.monotonic()
    until = full.get((user_id, action))
    if until is not None:
        if now < until:
            raise RateLimited(label=label, per_minute=per_minute, retry_after_s=max(1, round(until - now)))
        del full[(user_id, action)]
    row = await pool.fetchrow(HIT_SQL, user_id, action)
    if row["hits"] > per_minute:
        retry = row["retry_after_s"]
        if len(full) >= MAX_REMEMBERED:
            for key in [key for key, ends in full.items() if ends <= now]:
                del full[key]
        full[(user_id, action)] = now + row["left_s"]  # the window's end (NOW() is its transaction's start)
        raise RateLimited(label=label, per_minute=per_minute, retry_after_s=retry)
