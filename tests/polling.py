"""Waiting, in a test, for a condition that something running elsewhere makes true (a job started, a NOTIFY
received, a connection closed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(condition: Callable[[], bool], *, within_s: float = 20.0) -> None:
    """Polls `condition` until it holds; fails (TimeoutError) after `within_s`."""
    async with asyncio.timeout(within_s):
        while not condition():
            await asyncio.sleep(0.01)
