"""Quota alerts: crossing 80, 90 and 100 % of the monthly quota gives one event per threshold and month.

The event is a structured log line (`quota_alert`) and, when QUOTA_ALERT_WEBHOOK_URL is set, a JSON POST
(e.g. to an n8n webhook that mails the user's manager). "Once" holds across processes: the quota_alerts
table records what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import aiohttp
import asyncpg

from services.chat.quota import Usage
from shared import get_logger

log = get_logger("wibot.alerts")

THRESHOLDS = (80, 90, 100)

RECORD_ALERTS_SQL = """
INSERT INTO quota_alerts (user_id, month, threshold)
SELECT $1, $2, threshold FROM unnest($3::smallint[]) AS threshold
ON CONFLICT (user_id, month, threshold) DO NOTHING
RETURNING threshold
"""


class AlertSender:
    """Posts alerts in the background: a slow or dead webhook never delays a chat answer."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    @contextlib.asynccontextmanager
    async def opened(cls, url: str | None) -> AsyncIterator[AlertSender]:
        sender = cls(url)
        if url:
            sender.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        try:
            yield sender
        finally:
            await sender.close()

    def send(self, payload: dict[str, Any]) -> None:
        if self.url is None or self.session is None:
            return
        task = asyncio.create_task(self._post(payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, payload: dict[str, Any]) -> None:
        assert self.session is not None and self.url is not None
        try:
            async with self.session.post(self.url, json=payload) as response:
                if response.status >= 400:
                    log.warning("quota_alert_webhook_failed", status=response.status, threshold=payload["threshold"])
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("quota_alert_webhook_failed", exc=repr(exc), threshold=payload["threshold"])

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self.session is not None:
            await self.session.close()


async def notify_quota_thresholds(
    pool: asyncpg.Pool, sender: AlertSender, *, user_id: int, username: str, month: date, usage: Usage
) -> list[int]:
    """Best effort, after the exchange is saved: an alert that fails is logged, the chat still answers."""
    try:
        return await _notify(pool, sender, user_id=user_id, username=username, month=month, usage=usage)
    except Exception:
        log.exception("quota_alert_failed", user_id=user_id)
        return []


async def _notify(
    pool: asyncpg.Pool, sender: AlertSender, *, user_id: int, username: str, month: date, usage: Usage
) -> list[int]:
    """Thresholds crossed for the first time this month (usually none: no query below 80 %)."""
    if usage.quota_tokens <= 0:
        return []
    reached = [t for t in THRESHOLDS if usage.used_tokens * 100 >= t * usage.quota_tokens]
    if not reached:
        return []
    new = sorted(row["threshold"] for row in await pool.fetch(RECORD_ALERTS_SQL, user_id, month, reached))
    for threshold in new:
        details = {
            "user_id": user_id,
            "username": username,
            "threshold": threshold,
            "used_tokens": usage.used_tokens,
            "quota_tokens": usage.quota_tokens,
            "month": month.isoformat(),
        }
        log.warning("quota_alert", **details)
        sender.send({"event": "quota_threshold", **details})
    return new
