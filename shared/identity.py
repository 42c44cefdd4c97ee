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
    accreditation_level: str = "N1"  # Safeguard: N0 … N4, from the database like the role

    @property
    def accreditation(self) -> int:
        """The level as a number (N3 → 3); an unreadable level counts as N0 (no access)."""
        level = self.accreditation_level
        return int(level[1]) if len(level) == 2 and level[0] == "N" and level[1] in "01234" else 0

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"
