"""What the auth service works with, opened in one start-up sequence whose order is this code and closed in
reverse: the password hasher's threads, then the Safeguard client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from services.auth.keys import HASHER
from services.auth.passwords import PasswordHasher
from services.auth.safeguard.client import SAFEGUARD, safeguard_client
from shared import Settings


def auth_resources(settings: Settings) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def _open(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            hasher = PasswordHasher(
                settings.bcrypt_rounds, workers=settings.bcrypt_workers, max_pending=settings.bcrypt_max_pending
            )
            stack.push_async_callback(asyncio.to_thread, hasher.close)
            app[HASHER] = hasher
            app[SAFEGUARD] = await stack.enter_async_context(safeguard_client(settings))
            yield

    return _open
