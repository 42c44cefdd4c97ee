"""Rules more than one service applies, written once: the per-user conversation cap (the chat's first message and
the conversations API both create conversations) and where a user's quota comes from (the usage endpoint and the
admin API both say it)."""

from __future__ import annotations

from typing import Literal

import asyncpg

COUNT_CONVERSATIONS_SQL = "SELECT count(*) FROM conversations WHERE user_id = $1"

QuotaSource = Literal["month", "standing", "default"]


async def at_conversation_cap(conn: asyncpg.Connection | asyncpg.Pool, *, user_id: int, limit: int) -> bool:
    """The user holds `limit` conversations already (0: no cap): a new one would be refused."""
    return bool(limit) and await conn.fetchval(COUNT_CONVERSATIONS_SQL, user_id) >= limit


def quota_in_force(month_quota: int | None, standing_quota: int | None, default_quota: int) -> tuple[int, QuotaSource]:
    """This month's quota and where it comes from: `month` when this month's row says something else than the
    standing quota (an admin changed this month only), else `standing` (the user's own), else `default`."""
    standing_or_default = standing_quota if standing_quota is not None else default_quota
    if month_quota is not None and month_quota != standing_or_default:
        return month_quota, "month"
    return standing_or_default, "standing" if standing_quota is not None else "default"
