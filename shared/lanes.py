"""Admission to a resource every user of a process shares (the extraction workers, the database's retrieval
statements): a bounded number of jobs admitted, in all and per user, refused at once beyond (never a queue
without end), and one user's jobs running on a share of the resource only, so that another user's job never
waits behind all of theirs. `TimeBudget`: how long, over time, one user's jobs may keep it busy."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass


class LaneFull(Exception):
    """As many jobs admitted as allowed (`per_user`: as many of this user's)."""

    def __init__(self, *, per_user: bool) -> None:
        super().__init__("per user" if per_user else "per process")
        self.per_user = per_user


@dataclass(slots=True)
class UserLane:
    owner: int
    running: asyncio.Semaphore  # the share of the resource this user's jobs may hold at once
    jobs: int = 0  # admitted and not finished


class Lanes:
    """`max_jobs` jobs admitted at most (0: no bound), `max_jobs_per_user` of one user's (0: no bound), of which
    `running_per_user` run at once, and `running` at once in all (0: as many as admitted). A job without an
    owner (the operators') is bound by the totals only."""

    def __init__(self, *, running_per_user: int, max_jobs: int = 0, max_jobs_per_user: int = 0, running: int = 0):
        self.running_per_user, self.max_jobs, self.max_jobs_per_user = running_per_user, max_jobs, max_jobs_per_user
        self._running = asyncio.Semaphore(running) if running else None
        self.jobs = 0  # admitted and not finished, all users together
        self.submitted = 0  # jobs ever admitted
        self._per_user: dict[int, UserLane] = {}

    @contextlib.asynccontextmanager
    async def slot(self, owner: int | None) -> AsyncIterator[None]:
        """Admitted at once or LaneFull; the block runs once its user's (and the process's) share allows."""
        lane = self._admit(owner)
        self.jobs += 1
        self.submitted += 1
        try:
            async with contextlib.AsyncExitStack() as shares:
                if lane is not None:
                    await shares.enter_async_context(lane.running)
                if self._running is not None:
                    await shares.enter_async_context(self._running)
                yield
        finally:
            self.jobs -= 1
            if lane is not None:
                lane.jobs -= 1
                if lane.jobs == 0:
                    del self._per_user[lane.owner]

    def _admit(self, owner: int | None) -> UserLane | None:
        if self.max_jobs and self.jobs >= self.max_jobs:
            raise LaneFull(per_user=False)
        if owner is None:
            return None
        lane = self._per_user.get(owner)
        if lane is None:
            lane = self._per_user[owner] = UserLane(owner, asyncio.Semaphore(self.running_per_user))
        if self.max_jobs_per_user and lane.jobs >= self.max_jobs_per_user:
            raise LaneFull(per_user=True)
        lane.jobs += 1
        return lane


class OutOfTime(Exception):
    """The user's jobs have kept the resource busy as long as their budget allows for now."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(retry_after_s)
        self.retry_after_s = retry_after_s


# Users whose balance is below full, kept at most: past it, those back to full are forgotten (they owe nothing).
TRACKED_USERS = 1024


class TimeBudget:
    """Each user's jobs may keep the resource busy `seconds_per_minute` on average, a minute's worth at most at
    once. Checked before a job is admitted (refused while the balance is not positive) and charged once the job
    ends, however it ends: a job's time is only known afterwards, so one job may overdraw, and the next waits for
    the balance to come back. 0: no budget."""

    def __init__(self, seconds_per_minute: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = seconds_per_minute
        self.rate = seconds_per_minute / 60
        self._clock = clock
        self._balances: dict[int, tuple[float, float]] = {}  # owner -> (balance, when it was that)

    def check(self, owner: int) -> None:
        """OutOfTime while `owner`'s balance is not positive, with the seconds until it is."""
        if not self.capacity:
            return
        balance = self._balance(owner)
        if balance <= 0:
            raise OutOfTime(max(1, math.ceil(-balance / self.rate)))

    def charge(self, owner: int, seconds: float) -> None:
        if not self.capacity:
            return
        self._balances[owner] = (self._balance(owner) - seconds, self._clock())
        if len(self._balances) > TRACKED_USERS:
            for full in [user for user in self._balances if self._balance(user) >= self.capacity]:
                del self._balances[full]

    def _balance(self, owner: int) -> float:
        balance, at = self._balances.get(owner, (self.capacity, 0.0))
        return min(self.capacity, balance + (self._clock() - at) * self.rate)
