"""Follow a PostgreSQL NOTIFY channel for the life of the process: an in-memory copy kept current.

A follower LISTENs first, then loads everything, so a change committed while it loads is applied after it.
After a lost connection it reconnects and loads everything again (notifications sent meanwhile are gone);
until it has, the follower is `lost` (not `ready`) and its users ask the database instead.

Payloads are the follower's, but for `sync:<nonce>`: a marker that `caught_up` sends and waits for, so a caller
knows that every change committed before it has been applied here (NOTIFY delivers in commit order); and
`echo:<nonce>`, which the follower sends itself: once before loading (notifications do reach this connection:
behind a pooler in transaction mode they would not, and the copy would never learn of a change), then after
every HEARTBEAT_S without news (a connection cut without a word delivers nothing: it must answer within
HEARTBEAT_TIMEOUT_S). Without its echo the follower is `lost` and its users ask the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from typing import ClassVar

import asyncpg

from shared.logs import get_logger

log = get_logger("wibot.listen")

RECONNECT_DELAY_S = 1.0
HEARTBEAT_S = 10.0
HEARTBEAT_TIMEOUT_S = 5.0
QUIET = ""  # never a payload here
SYNC_PREFIX = "sync:"
ECHO_PREFIX = "echo:"
MAX_RECONNECT_DELAY_S = 10.0


class Follower:
    """An in-memory copy of some tables: subclasses name the channel and say how to load it and apply a change."""

    channel: ClassVar[str]

    def __init__(self) -> None:
        self.ready = False
        self.loaded = asyncio.Event()
        self._syncs: dict[str, asyncio.Future[None]] = {}

    async def load(self, connection: asyncpg.Connection) -> None:
        """Everything, from scratch (at start and after every reconnection); then set `ready` and `loaded`."""
        raise NotImplementedError

    async def apply(self, connection: asyncpg.Connection, payload: str) -> None:
        """One notified change."""
        raise NotImplementedError

    def lost(self) -> None:
        """The copy may be missing changes from now on, until the next `load`."""
        self.ready = False

    async def caught_up(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        """Returns once this copy has applied every change committed before the call (tests and tools: a change
        made elsewhere is otherwise applied a few milliseconds later)."""
        await self.loaded.wait()
        nonce = uuid.uuid4().hex
        waiter = asyncio.get_running_loop().create_future()
        self._syncs[nonce] = waiter
        try:
            await connection.execute("SELECT pg_notify($1, $2)", self.channel, SYNC_PREFIX + nonce)
            await waiter
        finally:
            self._syncs.pop(nonce, None)

    def _synced(self, nonce: str) -> None:
        waiter = self._syncs.pop(nonce, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def follow(dsn: str, follower: Follower, *, application_name: str) -> None:
    """Runs until cancelled: (re)connect, LISTEN, load, apply each change in the order it was committed."""
    channel = follower.channel
    delay = RECONNECT_DELAY_S
    while True:
        connection: asyncpg.Connection | None = None
        try:
            connection = await asyncpg.connect(
                dsn, server_settings={"application_name": application_name, "timezone": "UTC"}
            )
            changes: asyncio.Queue[str] = asyncio.Queue()
            closed = asyncio.Event()
            await connection.add_listener(channel, functools.partial(_queue_payload, changes))
            connection.add_termination_listener(functools.partial(_set_on_close, closed))
            markers = await _echo(connection, channel, changes, closed)
            await follower.load(connection)
            for nonce in markers:  # sync markers seen before the load: the load covered what preceded them
                follower._synced(nonce)
            delay = RECONNECT_DELAY_S
            await _apply_changes(connection, follower, changes, closed)
            raise ConnectionError("listener connection lost")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database went away: the follower's users ask the database until reloaded
            follower.lost()
            log.warning("listener_disconnected", channel=channel, error=repr(exc)[:200], retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RECONNECT_DELAY_S)
        finally:
            if connection is not None and not connection.is_closed():
                with contextlib.suppress(Exception):
                    await connection.close(timeout=2)


async def _echo(
    connection: asyncpg.Connection, channel: str, changes: asyncio.Queue[str], closed: asyncio.Event
) -> list[str]:
    """Sends an echo and waits for it; returns the sync markers seen meanwhile (other changes are dropped: the
    load that follows reads everything)."""
    nonce = ECHO_PREFIX + uuid.uuid4().hex
    await connection.execute("SELECT pg_notify($1, $2)", channel, nonce)
    deadline = asyncio.get_running_loop().time() + HEARTBEAT_TIMEOUT_S
    markers: list[str] = []
    while True:
        payload = await _next_change(changes, closed, deadline - asyncio.get_running_loop().time())
        if payload is None:
            raise ConnectionError("listener connection lost")
        if payload == QUIET:
            raise ConnectionError("notifications do not come back on this connection (a pooler in transaction mode?)")
        if payload == nonce:
            return markers
        if payload.startswith(SYNC_PREFIX):
            markers.append(payload.removeprefix(SYNC_PREFIX))


async def _apply_changes(
    connection: asyncpg.Connection, follower: Follower, changes: asyncio.Queue[str], closed: asyncio.Event
) -> None:
    """Until the connection closes or stops answering: each change in commit order, an echo after every quiet
    HEARTBEAT_S (echoes and markers of other processes on the channel pass by)."""
    clock = asyncio.get_running_loop().time
    echo: str | None = None
    deadline = 0.0
    while not closed.is_set():
        payload = await _next_change(changes, closed, HEARTBEAT_S if echo is None else deadline - clock())
        if payload is None:
            return
        if payload == QUIET:
            if echo is not None:
                raise ConnectionError("notifications stopped coming back")
            echo, deadline = ECHO_PREFIX + uuid.uuid4().hex, clock() + HEARTBEAT_TIMEOUT_S
            await connection.execute("SELECT pg_notify($1, $2)", follower.channel, echo)
        elif payload.startswith(ECHO_PREFIX):
            if payload == echo:
                echo = None
        elif payload.startswith(SYNC_PREFIX):
            follower._synced(payload.removeprefix(SYNC_PREFIX))
        else:
            await follower.apply(connection, payload)


def _queue_payload(changes: asyncio.Queue[str], _connection: object, _pid: int, _channel: str, payload: str) -> None:
    changes.put_nowait(payload)


def _set_on_close(closed: asyncio.Event, _connection: object) -> None:
    closed.set()


async def _next_change(changes: asyncio.Queue[str], closed: asyncio.Event, within_s: float) -> str | None:
    """The next payload; QUIET after `within_s` seconds without one; None once the connection is closed."""
    if not changes.empty():
        return changes.get_nowait()
    getter = asyncio.ensure_future(changes.get())
    waiter = asyncio.ensure_future(closed.wait())
    try:
        done, _ = await asyncio.wait({getter, waiter}, timeout=max(within_s, 0), return_when=asyncio.FIRST_COMPLETED)
        if not done:
            return QUIET
    finally:
        for task in (getter, waiter):
            if not task.done():
                task.cancel()
    return getter.result() if getter in done else None
