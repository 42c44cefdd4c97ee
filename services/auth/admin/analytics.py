"""Workflow analytics (the Supervision page): parse the period → compute the figures in SQL → respond.

Admin only. Every figure is computed by PostgreSQL in one statement (queries.ANALYTICS_SQL); Python only
names them. Dates are UTC: `today` starts at UTC midnight and byDay has one entry per UTC calendar day the
period touches (24h → 2 days, 7d → 8, 30d → 31), oldest first, zero-filled, so its counts add up to `total`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import asyncpg
import orjson
from aiohttp import web

from services.auth.admin import queries
from shared import AppKeys, authenticated, current_month, json_response, validate
from shared.contracts import (
    AnalyticsQuery,
    AnalyticsResponse,
    AnalyticsStats,
    ConversationStats,
    DayStats,
    FileStats,
    MessageStats,
    ModeStats,
    RagStats,
    TokenStats,
    UserStats,
)

PERIODS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}


@authenticated(admin=True)
async def analytics(request: web.Request) -> web.Response:
    query = validate(AnalyticsQuery, dict(request.query))
    settings = request.app[AppKeys.SETTINGS]
    stats = await compute_stats(
        request.app[AppKeys.DB], period=query.period, default_quota=settings.default_quota_tokens
    )
    return json_response(AnalyticsResponse(period=query.period, stats=stats))


def percentage(used: int, quota: int) -> float:
    return round(used * 100 / quota, 1) if quota > 0 else 0.0


async def compute_stats(
    pool: asyncpg.Pool, *, period: str, default_quota: int, now: datetime | None = None
) -> AnalyticsStats:
    now = now or datetime.now(UTC)
    start = (now - PERIODS[period]).replace(tzinfo=None)  # TIMESTAMP columns hold naive UTC
    today: date = now.date()
    row = await pool.fetchrow(queries.ANALYTICS_SQL, start, start.date(), today, current_month(now), default_quota)
    return AnalyticsStats(
        tokens=TokenStats(used=row["used"], quota=row["quota"], percentage=percentage(row["used"], row["quota"])),
        messages=MessageStats(
            total=row["total"],
            today=row["today"],
            byDay=[DayStats(**day) for day in orjson.loads(row["by_day"])],
        ),
        modes=ModeStats(flash=row["flash"], code=row["code"], redaction=row["redaction"]),
        conversations=ConversationStats(total=row["conversations"], active=row["active_conversations"]),
        users=UserStats(total=row["users"], directory=row["directory_users"]),
        files=FileStats(total=row["files"], messagesWithFiles=row["with_files"]),
        rag=RagStats(queries=row["rag"]),
    )
