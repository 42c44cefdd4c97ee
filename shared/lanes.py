"""Admission to a resource every user of a process shares (the extraction workers, the database's retrieval
statements): a bounded number of jobs admitted, in all and per user, refused at once beyond (never a queue
without end), and one user's jobs running on a share of the resource only, so that another user's job never
waits behind all of theirs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
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
