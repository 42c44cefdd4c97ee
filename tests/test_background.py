"""shared/background.py: loops cancelled at close, work that must finish awaited (within a bound), a shielded
call that survives its caller's cancellation."""

from __future__ import annotations

import asyncio

from shared.background import Background


async def test_shielded_work_runs_to_its_end_when_its_caller_is_cancelled():
    background, finished = Background(), asyncio.Event()

    async def settle() -> str:
        await asyncio.sleep(0.05)
        finished.set()
        return "saved"

    caller = asyncio.create_task(background.shielded(settle()))
    await asyncio.sleep(0.01)
    caller.cancel()  # the client left
    await asyncio.gather(caller, return_exceptions=True)
    assert caller.cancelled() and background.pending == 1
    assert await background.drain(within_s=5)
    assert finished.is_set() and background.pending == 0


async def test_close_cancels_loops_and_waits_for_work_within_its_bound():
    background, ticks = Background(), []

    async def loop() -> None:
        while True:
            ticks.append(1)
            await asyncio.sleep(0.01)

    async def forever() -> None:
        await asyncio.Event().wait()

    looping = background.loop(loop(), name="ticker")
    quick = background.finish(asyncio.sleep(0.02, result="done"))
    stuck = background.finish(forever())
    await asyncio.sleep(0.03)
    await background.close(within_s=0.2)
    assert looping.cancelled() and ticks
    assert quick.result() == "done"
    assert stuck.cancelled()  # past the bound: given up, not waited for ever
    assert background.pending == 0


async def test_a_failure_nobody_awaited_is_read_not_reported_as_lost(caplog):
    background = Background()

    async def fails() -> None:
        raise RuntimeError("boom")

    background.finish(fails())
    assert await background.drain(within_s=1)
    await asyncio.sleep(0)  # done callbacks run
    assert "never retrieved" not in caplog.text
