"""Pooled connections go back without asyncpg's reset statement (shared/db.py): one round trip per query, not
two. What that reset guaranteed must hold anyway."""

from __future__ import annotations

import asyncio

import pytest

from shared import create_pool
from tests.conftest import make_settings


@pytest.fixture
async def pool(database_url):
    pool = await create_pool(make_settings(database_url, db_pool_min=1, db_pool_max=1), application_name="test-pool")
    yield pool
    await pool.close()


async def test_a_query_costs_one_statement_not_two(pool):
    """Every statement the (only) connection sends is logged: the 10 queries, and no reset after each."""
    sent: list[str] = []
    async with pool.acquire() as conn:
        conn.add_query_logger(lambda record: sent.append(record.query))
    for _ in range(10):
        assert await pool.fetchval("SELECT 1") == 1
    assert sent == ["SELECT 1"] * 10


async def test_a_transaction_interrupted_midway_is_rolled_back_before_the_connection_is_reused(pool, db):
    await db.execute("CREATE TABLE IF NOT EXISTS pool_probe (n int)")
    await db.execute("TRUNCATE pool_probe")

    async def write_then_stall() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO pool_probe VALUES (1)")
            await asyncio.sleep(3600)

    task = asyncio.create_task(write_then_stall())
    while (
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'"
            " AND datname = current_database() AND application_name = 'test-pool'"
        )
        == 0
    ):
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    async with pool.acquire() as conn:  # the same, only connection
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT count(*) FROM pool_probe") == 0
        assert await conn.fetchval("SHOW timezone") == "UTC"  # the session's settings are those of its start
    await db.execute("DROP TABLE pool_probe")
