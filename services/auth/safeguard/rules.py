"""What the gateway decides itself: who may see Safeguard, what a request shows, who may decide it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from services.auth.safeguard.errors import AccreditationTooLow, RequestNotPending, SafeguardForbidden
from shared.contracts import SafeguardRequest
from shared.identity import CurrentUser
from shared.logs import get_logger

log = get_logger("wibot.safeguard")

_SECURITY_LEVEL = re.compile(r"^L([0-9])$")
# A request whose level cannot be read is approved by nobody.
UNREADABLE_LEVEL = 99


def require_access(user: CurrentUser) -> None:
    if user.accreditation < 1:
        raise SafeguardForbidden


def required_level(request: dict[str, Any]) -> int:
    match = _SECURITY_LEVEL.match(str(request.get("security_level", "")))
    return int(match.group(1)) if match else UNREADABLE_LEVEL


def seconds_left(request: dict[str, Any], now: datetime) -> int | None:
    """Whole seconds until `expires_at` (0 once past); None when the date cannot be read."""
    try:
        expires = datetime.fromisoformat(str(request.get("expires_at")))
    except ValueError:
        return None
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return max(0, int((expires - now).total_seconds()))


def describe(request: dict[str, Any], user: CurrentUser, now: datetime) -> SafeguardRequest | None:
    """The request as the page shows it, or None when it is not one (no id, no readable expiry)."""
    remaining = seconds_left(request, now)
    if remaining is None or not isinstance(request.get("approval_id"), str):
        log.warning("safeguard_request_unreadable", approval_id=str(request.get("approval_id"))[:128])
        return None
    status = str(request.get("status", "pending"))
    fields = {
        **request,
        "security_level": str(request.get("security_level", "")),
        "status": status,
        "expires_at": str(request["expires_at"]),
        "time_remaining_seconds": remaining,
        "can_approve": status == "pending" and remaining > 0 and user.accreditation >= required_level(request),
    }
    return SafeguardRequest.model_validate(fields)


def check_can_decide(held: SafeguardRequest, user: CurrentUser) -> None:
    if held.status != "pending" or held.time_remaining_seconds <= 0:
        raise RequestNotPending(held.status)
    if not held.can_approve:
        raise AccreditationTooLow(user.accreditation_level, held.security_level)
