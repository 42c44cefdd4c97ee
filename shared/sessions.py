"""Who may use a token, known in each process without a database round trip.

An authenticated request needs three facts: its token was not logged out; it is not older than its user's last
revocation (password change, deactivation); the user is active, with this role and accreditation. Each process
keeps them in memory: the keys of revoked, unexpired tokens (all of them, loaded at start) and the users it has
served (each loaded on first use). Migration 0012's triggers notify `wibot_sessions` of every change to them,
so a logout or a deactivation made anywhere reaches every process within milliseconds. Until the copy is
loaded, and from a lost connection until it is reloaded, each request asks the database as before.

Payloads: `u:<user_id>` (forget that user), `r:<token key>:<expiry epoch>` (a revoked token), `*` (reload
all, after a TRUNCATE).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from shared.listen import Follower, follow
from shared.logs import get_logger
from shared.settings import Settings

log = get_logger("wibot.sessions")

CHANNEL = "wibot_sessions"
MAX_USERS = 100_000  # a site has a few thousand: past this, start over rather than grow without bound
PRUNE_EVERY_S = 3600
NEVER = 2**62  # pragma: no mutate (an expiry read as "not before the end of time": any far-off value will do)

REVOKED_TOKENS_SQL = """
SELECT token_sha256, floor(extract(epoch FROM expires_at))::bigint AS expires_at
FROM revoked_tokens
WHERE expires_at > (now() AT TIME ZONE 'UTC')
"""


@dataclass(frozen=True, slots=True)  # pragma: no mutate (a record nobody mutates: the flags are hygiene)
class SessionUser:
    """An active user as authentication sees them (what SESSION_USER_SQL reads, minus the token)."""

    user_id: int
    username: str
    role: str
    accreditation_level: str
    generation: int | None
    not_before: int | None

    @classmethod
    def of(cls, row: asyncpg.Record) -> SessionUser:
        return cls(
            user_id=row["user_id"],
            username=row["username"],
            role=row["role"] or "user",
            accreditation_level=row["accreditation_level"] or "N1",
            generation=row["generation"],
            not_before=row["not_before"],
        )


class SessionCache(Follower):
    channel = CHANNEL

    def __init__(self) -> None:
        super().__init__()
        self._revoked: dict[str, int] = {}
        self._users: dict[int, SessionUser] = {}
        # Bumped by every change: a user read from the database is kept only if nothing changed meanwhile
        # (else a read that began before a deactivation could store the user as active after its notification).
        self.epoch = 0  # pragma: no mutate (any start will do: only compared for equality)
        self._pruned_at = time.time()

    def user(self, user_id: int) -> SessionUser | None:
        return self._users.get(user_id) if self.ready else None

    def keep(self, user: SessionUser, *, read_at_epoch: int) -> None:
        # Not mutated: `is` and `>=` are the same test here (the epoch only grows; an unchanged one is the very
        # object that was read); the other comparisons keep a stale user, which the tests catch.
        unchanged = read_at_epoch == self.epoch  # pragma: no mutate
        if self.ready and unchanged:
            if len(self._users) >= MAX_USERS:
                self._users.clear()
            self._users[user.user_id] = user

    def is_revoked(self, token_key: str) -> bool:
        return token_key in self._revoked

    def revoke(self, token_key: str, expires_at: int) -> None:
        self._revoked[token_key] = expires_at
        now = time.time()
        if now - self._pruned_at > PRUNE_EVERY_S:
            self._pruned_at = now
            self._revoked = {key: expiry for key, expiry in self._revoked.items() if expiry > now}

    def forget(self, user_id: int) -> None:
        self.epoch += 1  # pragma: no mutate (only compared for equality: any step is a change)
        self._users.pop(user_id, None)

    @property
    def revoked_count(self) -> int:
        return len(self._revoked)

    async def load(self, connection: asyncpg.Connection) -> None:
        rows = await connection.fetch(REVOKED_TOKENS_SQL)
        self.epoch += 1
        self._users.clear()
        self._revoked = {row["token_sha256"]: row["expires_at"] for row in rows}
        self.ready = True
        self.loaded.set()
        log.info("session_cache_loaded", revoked_tokens=len(self._revoked))

    async def apply(self, connection: asyncpg.Connection, payload: str) -> None:
        kind, _, rest = payload.partition(":")
        if kind == "u" and rest.isdigit():
            self.forget(int(rest))
        elif kind == "r" and rest:
            token_key, _, expires_at = rest.partition(":")
            self.revoke(token_key, int(expires_at) if expires_at.isdigit() else NEVER)
        elif kind == "*":
            self.lost()  # nothing stale is served while the reload runs: the database answers meanwhile
            await self.load(connection)
        else:
            log.warning("session_cache_unknown_change", payload=payload[:100])

    def lost(self) -> None:
        super().lost()
        self.epoch += 1  # pragma: no mutate (not ready until the next load, which moves the epoch again)
        self._users.clear()


SESSIONS = web.AppKey("sessions", SessionCache)


def sessions_context(settings: Settings, *, service: str) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx that follows `wibot_sessions` for the app's life."""

    async def _sessions_ctx(app: web.Application) -> AsyncIterator[None]:
        cache = SessionCache()
        app[SESSIONS] = cache
        task = asyncio.create_task(follow(settings.dsn, cache, application_name=f"wibot-{service}-sessions"))
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return _sessions_ctx
