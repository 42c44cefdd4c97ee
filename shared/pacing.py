"""Refusals paced: a user refused (429) more than REFUSALS_BEFORE_PACING times within PACING_WINDOW_S waits
REFUSAL_PACING_S before each further refusal is sent.

A client that retries at once, or floods, was refused at the rate it could send: every refusal cheap, but each
one a request read, a token verified, a query, on the cores every other user shares (bench/attacks.py: ten
requests at a time refused back to back slowed another user's chats 4x). Held, its refusals arrive at the pace
of its own connections, not of the server's cores; a sleeping request costs no CPU. A person who meets a limit
sends a few requests, never that many: they are answered at once.

Holding is bounded (a held request keeps its connection and its unread body): at most MAX_HELD_PER_USER of one
user's refusals and MAX_HELD in all are held; beyond, the refusal is sent at once. Per process, in memory: each
process paces what it refuses."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from shared.metrics import REFUSALS_PACED

PACING_WINDOW_S = 10.0
MAX_HELD_PER_USER = 32
MAX_HELD = 1_024
# Users remembered at most; the oldest windows are forgotten first (a flood of user ids cannot grow the table).
MAX_TRACKED = 10_000


@dataclass(slots=True)
class RefusalWindow:
    started: float
    refusals: int = 0
    held: int = 0


class RefusalPacer:
    def __init__(self, *, free_refusals: int, hold_s: float) -> None:
        self.free_refusals, self.hold_s = free_refusals, hold_s
        self.held = 0
        self._windows: dict[int, RefusalWindow] = {}

    async def pace(self, user_id: int) -> None:
        """Called as a refusal of `user_id` is about to be sent: returns at once, or after `hold_s`."""
        if self.hold_s <= 0:
            return
        window = self._window(user_id, time.monotonic())
        window.refusals += 1
        if window.refusals <= self.free_refusals or window.held >= MAX_HELD_PER_USER or self.held >= MAX_HELD:
            return
        REFUSALS_PACED.inc()
        window.held += 1
        self.held += 1
        try:
            await asyncio.sleep(self.hold_s)
        finally:
            window.held -= 1
            self.held -= 1

    def _window(self, user_id: int, now: float) -> RefusalWindow:
        window = self._windows.get(user_id)
        if window is None or now - window.started > PACING_WINDOW_S:
            if window is not None and window.held:  # refusals still held: their window goes on
                window.started, window.refusals = now, 0
                return window
            if len(self._windows) >= MAX_TRACKED:
                self._forget_oldest(now)
            window = self._windows[user_id] = RefusalWindow(now)
        return window

    def _forget_oldest(self, now: float) -> None:
        stale = [user for user, w in self._windows.items() if not w.held and now - w.started > PACING_WINDOW_S]
        for user in stale or [user for user, w in self._windows.items() if not w.held][: MAX_TRACKED // 10]:
            del self._windows[user]
