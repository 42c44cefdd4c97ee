"""shared/listen.py against the real server: a follower hears changes in commit order, proves with its own
echoes that notifications still come back, and is `lost` when they stop (its users then ask the database)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.listen import Follower, follow


class Recorder(Follower):
    channel = "wibot_test_listen"

    def __init__(self) -> None:
        super().__init__()
        self.applied: list[str] = []
        self.loads = 0
        self.losses = 0

    async def load(self, connection: asyncpg.Connection) -> None:
        self.loads += 1
        self.ready = True
        self.loaded.set()

    async def apply(self, connection: asyncpg.Connection, payload: str) -> None:
        self.applied.append(payload)

    def lost(self) -> None:
        super().lost()
        self.losses += 1


async def test_changes_arrive_in_commit_order_and_echoes_pass_by(database_url, db):
    follower = Recorder()
    task = asyncio.create_task(follow(database_url, follower, application_name="test-listen"))
    try:
        await asyncio.wait_for(follower.loaded.wait(), 10)
        for n in range(5):
            await db.execute("SELECT pg_notify($1, $2)", Recorder.channel, f"change {n}")
        # another process's echo and marker on the channel are not changes
        await db.execute("SELECT pg_notify($1, 'echo:not-mine'), pg_notify($1, 'sync:not-mine')", Recorder.channel)
        await asyncio.wait_for(follower.caught_up(db), 10)
        assert follower.applied == [f"change {n}" for n in range(5)]
        assert (follower.loads, follower.losses, follower.ready) == (1, 0, True)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.production_loop
async def test_a_follower_whose_echo_does_not_come_back_is_lost_then_reloads(database_url, monkeypatch):
    """The connection stays open but the heartbeat's echo never arrives (here: sent where nobody listens, as
    notifications vanish behind a pooler in transaction mode): after HEARTBEAT_TIMEOUT_S the copy is lost."""
    monkeypatch.setattr("shared.listen.HEARTBEAT_S", 0.2)
    monkeypatch.setattr("shared.listen.HEARTBEAT_TIMEOUT_S", 0.5)
    monkeypatch.setattr("shared.listen.RECONNECT_DELAY_S", 0.1)
    follower = Recorder()
    task = asyncio.create_task(follow(database_url, follower, application_name="test-listen"))
    try:
        await asyncio.wait_for(follower.loaded.wait(), 10)
        follower.channel = "wibot_test_listen_elsewhere"  # type: ignore[misc] # its next echoes go astray
        async with asyncio.timeout(10):
            while follower.losses == 0:
                await asyncio.sleep(0.01)
        assert not follower.ready or follower.loads >= 2  # lost; reconnected and reloaded since, perhaps
        follower.channel = Recorder.channel  # type: ignore[misc]
        async with asyncio.timeout(10):
            while follower.loads < 2 or not follower.ready:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
