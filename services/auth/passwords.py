"""bcrypt, always off the event loop, and equally slow for users that do not exist."""

from __future__ import annotations

import asyncio
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bcrypt

from services.auth.errors import LoginBusy
from shared.metrics import PASSWORD_CHECKS

BCRYPT_MAX_BYTES = 72
# What bcrypt writes: $2a$/$2b$/$2y$, a two-digit cost, then 53 characters of salt and hash.
BCRYPT_HASH = re.compile(r"^\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}$")


def is_bcrypt_hash(value: str) -> bool:
    return BCRYPT_HASH.fullmatch(value) is not None


def fits_bcrypt(password: str) -> bool:
    # bcrypt 5 raises on longer input instead of truncating it.
    return len(password.encode("utf-8")) <= BCRYPT_MAX_BYTES


# bcrypt threads run at a lower CPU priority: a login storm then uses the cores nobody else needs, and a
# listing or a chat served by the same machine is not starved by it (bench: "listing during a login storm").
BCRYPT_NICENESS = 10


def _lower_thread_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BCRYPT_NICENESS)
    # Not permitted (an unprivileged container): same priority as the rest, still off the loop.
    except OSError:  # pragma: no cover, no mutate (never raised here: equivalent)
        pass


def default_workers() -> int:
    """One core is left to the other routes: a login storm cannot take every core (at least one thread)."""
    # os.cpu_count() is None only where it cannot be known: the fallback is untestable (no mutate).
    return max(1, (os.cpu_count() or 2) - 1)  # pragma: no mutate


class PasswordHasher:
    """bcrypt in `workers` threads; with `max_pending`, a check beyond that many running or waiting is refused
    at once (503 LOGIN_BUSY, Retry-After) instead of joining an unbounded backlog. The operators' CLI sets
    no bound (it hashes what it was asked to, however long it takes)."""

    def __init__(self, rounds: int, *, workers: int | None = None, max_pending: int | None = None) -> None:
        self.rounds = rounds
        self.workers = workers or default_workers()
        self.max_pending = max_pending
        self.pending = 0  # checks and hashes running or waiting for a thread
        self._executor = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="bcrypt", initializer=_lower_thread_priority
        )
        # Checked when the user is unknown or inactive, so that case costs what a wrong password costs.
        self._dummy_hash = bcrypt.hashpw(b"wibot-timing-equaliser", bcrypt.gensalt(rounds))

    async def hash(self, password: str) -> str:
        if not fits_bcrypt(password):
            raise ValueError(f"password longer than {BCRYPT_MAX_BYTES} bytes")
        hashed: bytes = await self._run(bcrypt.hashpw, password.encode("utf-8"), bcrypt.gensalt(self.rounds))
        return hashed.decode("ascii")

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """False for a wrong password, a missing user (password_hash None) or an unreadable hash."""
        if not fits_bcrypt(password):
            return False
        stored = password_hash.encode("utf-8") if password_hash is not None else self._dummy_hash
        PASSWORD_CHECKS.inc()
        try:
            matches = await self._run(bcrypt.checkpw, password.encode("utf-8"), stored)
        except ValueError:  # a corrupt or foreign hash in the users table
            return False
        return password_hash is not None and matches

    async def _run(self, function: Any, *args: bytes) -> Any:
        # pending never passes max_pending (checked and counted in one step of the loop): `==` would do (no mutate)
        if self.max_pending is not None and self.pending >= self.max_pending:  # pragma: no mutate
            raise LoginBusy
        self.pending += 1
        try:
            # bcrypt releases the GIL: its threads run in parallel with each other and with the event loop.
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        finally:
            self.pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False)  # pragma: no mutate (idle threads at shutdown: wait or not, equal)
