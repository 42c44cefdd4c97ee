"""One owner for the tasks a service runs beside its requests (hail's BackgroundTaskManager is the model).

Two kinds: *loops* (sweepers, listeners, scheduled syncs), cancelled at shutdown; and *work that must finish*
(a settlement retried until the database answers, a reply whose client left and still has to be saved), which
shutdown waits for within a bound before cancelling what is left. Nothing of it lives in a module global.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from shared.logs import get_logger

log = get_logger("wibot.background")

T = TypeVar("T")


class Background:
    def __init__(self) -> None:
        self._loops: set[asyncio.Task[None]] = set()
        self._finishing: set[asyncio.Future[Any]] = set()

    def loop(self, coroutine: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """A loop that runs until shutdown cancels it."""
        task = asyncio.create_task(coroutine, name=name)
        self._loops.add(task)
        task.add_done_callback(self._loop_ended)
        return task

    def finish(self, work: Awaitable[T]) -> asyncio.Future[T]:
        """Work that must run to its end whatever happens to the request that started it."""
        future = asyncio.ensure_future(work)
        self._finishing.add(future)
        future.add_done_callback(self._work_ended)
        return future

    async def shielded(self, work: Awaitable[T]) -> T:
        """`work`'s result; if the caller is cancelled (its client left), the work still runs to its end."""
        return await asyncio.shield(self.finish(work))

    @property
    def pending(self) -> int:
        return len(self._finishing)

    async def drain(self, *, within_s: float) -> bool:
        """Wait for the work that must finish; True when none is left."""
        pending = set(self._finishing)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=within_s)
        return not pending

    async def close(self, *, within_s: float = 30.0) -> None:
        """At shutdown: loops cancelled, then the work that must finish given `within_s`, the rest cancelled."""
        for task in list(self._loops):
            task.cancel()
        for task in list(self._loops):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not await self.drain(within_s=within_s):
            log.error("background_work_abandoned", tasks=len(self._finishing))
            left = list(self._finishing)
            for future in left:
                future.cancel()
            await asyncio.gather(*left, return_exceptions=True)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        self._loops.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background_loop_died", task=task.get_name(), exc=repr(task.exception()))

    def _work_ended(self, future: asyncio.Future[Any]) -> None:
        self._finishing.discard(future)
        # Read here, so that an outcome nobody awaited (the client left) is never reported as "never retrieved";
        # the request that awaited it has already logged it.
        if not future.cancelled():
            future.exception()
