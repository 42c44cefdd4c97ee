"""bcrypt, always off the event loop, and equally slow for users that do not exist."""

from __future__ import annotations

import asyncio

import bcrypt

BCRYPT_MAX_BYTES = 72


def fits_bcrypt(password: str) -> bool:
    # bcrypt 5 raises on longer input instead of truncating it (../shared/FACTS.md).
    return len(password.encode("utf-8")) <= BCRYPT_MAX_BYTES


class PasswordHasher:
    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        # Checked when the user is unknown or inactive, so that case costs what a wrong password costs.
        self._dummy_hash = bcrypt.hashpw(b"wibot-timing-equaliser", bcrypt.gensalt(rounds))

    async def hash(self, password: str) -> str:
        if not fits_bcrypt(password):
            raise ValueError(f"password longer than {BCRYPT_MAX_BYTES} bytes")
        hashed = await asyncio.to_thread(bcrypt.hashpw, password.encode("utf-8"), bcrypt.gensalt(self.rounds))
        return hashed.decode("ascii")

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """False for a wrong password, a missing user (password_hash None) or an unreadable hash."""
        if not fits_bcrypt(password):
            return False
        stored = password_hash.encode("utf-8") if password_hash is not None else self._dummy_hash
        try:
            matches = await asyncio.to_thread(bcrypt.checkpw, password.encode("utf-8"), stored)
        except ValueError:  # a corrupt or foreign hash in the users table
            return False
        return password_hash is not None and matches
