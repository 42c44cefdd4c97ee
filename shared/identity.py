"""Who is calling: the authenticated user a view receives."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CurrentUser:
    user_id: int
    username: str
    role: str
    token_key: str  # what identifies the bearer token this request came with (logout revokes it)
    token_expires_at: int  # its exp claim, epoch seconds

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"
