"""asyncpg pool lifecycle and the database failures that mean "unavailable", not "bug"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from shared.keys import AppKeys, SchemaCheck
from shared.logs import get_logger
from shared.migrations import ensure_database_current
from shared.settings import Settings

log = get_logger("wibot.db")

# Failures of the database connection itself: the request fails with a 503, the pool recovers by itself.
DB_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    # Seen when the server kills a pooled connection while it is handed out ("cannot switch to state");
    # the pool drops that connection and the next request gets a fresh one.
    asyncpg.InternalClientError,
)


def _jsonb_text(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_jsonb_text, decoder=orjson.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection goes back to the pool with. asyncpg's default runs `pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL` on every release: a second round trip for every query (measured: each chat statement
    followed by one). Nothing here leaves such state on a pooled connection (session settings are set once, at
    connect; LISTEN and the ingestion's advisory lock live on connections of their own), and an open transaction
    is still rolled back by asyncpg before this is called."""


async def create_pool(settings: Settings, *, application_name: str) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        settings.dsn,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        command_timeout=settings.db_command_timeout_s,
        init=_init_connection,
        reset=_keep_session,
        # The spec's columns are TIMESTAMP WITHOUT TIME ZONE: pin the session to UTC so NOW() stores UTC
        # whatever the server's or the database's default timezone is.
        server_settings={"timezone": "UTC", "application_name": application_name},
    )
    assert pool is not None
    return pool


async def create_pool_when_ready(settings: Settings, *, application_name: str) -> asyncpg.Pool:
    """At start-up the database may still be starting (make run, docker compose): wait for it a while."""
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + settings.db_startup_wait_s, 0.2
    while True:
        try:
            return await create_pool(settings, application_name=application_name)
        except DB_UNAVAILABLE_ERRORS as exc:
            if loop.time() + delay > deadline:
                raise
            log.warning("database_not_ready", exc=repr(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def pool_context(settings: Settings, *, application_name: str) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx that opens the pool at start-up (refusing a database that is behind) and closes it."""

    async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool_when_ready(settings, application_name=application_name)
        schema = SchemaCheck()
        try:
            await ensure_database_current(pool)
            schema.current = True
        except DB_UNAVAILABLE_ERRORS as exc:
            # A lazy pool (DB_POOL_MIN=0) starts without the database: /readyz checks once it answers.
            log.warning("schema_check_deferred", exc=repr(exc))
        except BaseException:
            await pool.close()
            raise
        app[AppKeys.DB] = pool
        app[AppKeys.SCHEMA] = schema
        try:
            yield
        finally:
            await pool.close()

    return _pool_ctx


def utc_now() -> datetime:
    """Naive UTC, the representation of the TIMESTAMP columns."""
    return datetime.now(UTC).replace(tzinfo=None)


def current_month(now: datetime | None = None) -> date:
    """First day of the current UTC month (the `month` key of user_token_usage)."""
    now = now or datetime.now(UTC)
    return date(now.year, now.month, 1)
