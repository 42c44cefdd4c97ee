"""Workflows safeguard_requests and safeguard_actions: a gateway to the Safeguard server (SAFEGUARD_URL).

The Safeguard server holds the AI tool calls that need a human's approval (reset an AD password, close a
ticket…), each with a security level L1–L3. This gateway shows them to staff and relays their decisions:

    list / history / detail:  check access (N1+) → fetch upstream → add time left and can_approve → respond
    approve / reject:         check access → fetch the request → check it is pending and the approver's level
                              reaches its level (HERE, not left to the upstream) → relay → respond

The level compared is the one in the database (like the role), never one a token claims. When the server is
unreachable, the lists say so in an empty answer (as the workflows did) and decisions answer 503: an approval
that did not happen is never reported as done.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from shared import ApiError, Settings, authenticated, current_user, json_response, parse_body, validate
from shared.contracts import (
    SafeguardActionRequest,
    SafeguardActionResponse,
    SafeguardDetailResponse,
    SafeguardHistoryQuery,
    SafeguardListQuery,
    SafeguardListResponse,
    SafeguardPath,
    SafeguardRequest,
)
from shared.http import Handler
from shared.identity import CurrentUser
from shared.logs import get_logger

log = get_logger("wibot.safeguard")

UNAVAILABLE_MESSAGE = "Serveur Safeguard non disponible"
# Upstream answers larger than this are not a list of approvals: refused rather than held in memory.
MAX_UPSTREAM_BYTES = 4 * 1024 * 1024
_SECURITY_LEVEL = re.compile(r"^L([0-9])$")
# A request whose level cannot be read is approved by nobody.
UNREADABLE_LEVEL = 99


class SafeguardUnavailable(Exception):
    """Not configured, unreachable, too slow, or answering something that is not the Safeguard API."""


class SafeguardClient:
    def __init__(self, session: aiohttp.ClientSession | None, base_url: str | None) -> None:
        self._session = session
        self._base_url = (base_url or "").rstrip("/")

    async def pending(self) -> list[dict[str, Any]]:
        return _request_list(await self._call("GET", "/api/safeguard/pending"))

    async def history(self, limit: int) -> list[dict[str, Any]]:
        return _request_list(await self._call("GET", "/api/safeguard/history", params={"limit": str(limit)}))

    async def get(self, approval_id: str) -> dict[str, Any] | None:
        """The request, or None when the server does not know it."""
        status, body = await self._call_with_status("GET", f"/api/safeguard/{approval_id}")
        if status == 404:
            return None
        if status != 200 or not isinstance(body.get("approval_id"), str):
            raise SafeguardUnavailable(f"detail answered {status}")
        return body

    async def decide(self, approval_id: str, action: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return await self._call_with_status("POST", f"/api/safeguard/{approval_id}/{action}", json=payload)

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        status, body = await self._call_with_status(method, path, **kwargs)
        if status != 200:
            raise SafeguardUnavailable(f"{path} answered {status}")
        return body

    async def _call_with_status(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        if self._session is None:
            raise SafeguardUnavailable("SAFEGUARD_URL is not set")
        try:
            async with self._session.request(method, self._base_url + path, **kwargs) as response:
                return response.status, _json_object(await read_whole(response, path))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SafeguardUnavailable(f"{path}: {type(exc).__name__}") from None


async def read_whole(response: aiohttp.ClientResponse, path: str) -> bytes:
    """The whole body, however many writes it arrives in (`content.read(n)` returns only what has arrived),
    refused past MAX_UPSTREAM_BYTES without holding more than that."""
    if (response.content_length or 0) > MAX_UPSTREAM_BYTES:
        raise SafeguardUnavailable(f"{path}: answer larger than {MAX_UPSTREAM_BYTES} bytes")
    body = bytearray()
    async for piece in response.content.iter_chunked(64 * 1024):
        body += piece
        if len(body) > MAX_UPSTREAM_BYTES:
            raise SafeguardUnavailable(f"{path}: answer larger than {MAX_UPSTREAM_BYTES} bytes")
    return bytes(body)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw) if raw else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _request_list(body: dict[str, Any]) -> list[dict[str, Any]]:
    requests = body.get("requests")
    if not isinstance(requests, list):
        raise SafeguardUnavailable("answer without a `requests` list")
    return [item for item in requests if isinstance(item, dict)]


SAFEGUARD = web.AppKey("safeguard", SafeguardClient)


def safeguard_context(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        if not settings.safeguard_url:
            log.warning("safeguard_not_configured", hint="set SAFEGUARD_URL; the Safeguard page shows nothing")
            app[SAFEGUARD] = SafeguardClient(None, None)
            yield
            return
        session = aiohttp.ClientSession(
            headers=settings.safeguard_header, timeout=aiohttp.ClientTimeout(total=settings.safeguard_timeout_s)
        )
        app[SAFEGUARD] = SafeguardClient(session, settings.safeguard_url)
        try:
            yield
        finally:
            await session.close()

    return context


# --- the steps ---------------------------------------------------------------------------------------------


def require_access(user: CurrentUser) -> None:
    if user.accreditation < 1:
        raise ApiError(403, "Accès Safeguard réservé aux niveaux N1 et plus", "FORBIDDEN")


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


def unavailable_list(exc: SafeguardUnavailable) -> web.Response:
    log.warning("safeguard_unavailable", reason=str(exc))
    return json_response(SafeguardListResponse(requests=[], total=0, message=UNAVAILABLE_MESSAGE))


# --- the routes --------------------------------------------------------------------------------------------


@authenticated()
async def list_requests(request: web.Request) -> web.Response:
    user = current_user(request)
    require_access(user)
    validate(SafeguardListQuery, dict(request.query))
    try:
        upstream = await request.app[SAFEGUARD].pending()
    except SafeguardUnavailable as exc:
        return unavailable_list(exc)
    now = datetime.now(UTC)
    described = [describe(item, user, now) for item in upstream]
    pending = [item for item in described if item is not None and item.time_remaining_seconds > 0]
    return json_response(SafeguardListResponse(requests=pending, total=len(pending)))


@authenticated()
async def history(request: web.Request) -> web.Response:
    user = current_user(request)
    require_access(user)
    query = validate(SafeguardHistoryQuery, dict(request.query))
    try:
        upstream = await request.app[SAFEGUARD].history(query.limit)
    except SafeguardUnavailable as exc:
        return unavailable_list(exc)
    now = datetime.now(UTC)
    described = [item for item in (describe(item, user, now) for item in upstream[: query.limit]) if item]
    return json_response(SafeguardListResponse(requests=described, total=len(described)))


@authenticated()
async def detail(request: web.Request) -> web.Response:
    user = current_user(request)
    require_access(user)
    path = validate(SafeguardPath, dict(request.match_info))
    held = await fetch_request(request.app[SAFEGUARD], path.approval_id, user)
    return json_response(SafeguardDetailResponse(request=held))


async def fetch_request(client: SafeguardClient, approval_id: str, user: CurrentUser) -> SafeguardRequest:
    try:
        found = await client.get(approval_id)
    except SafeguardUnavailable as exc:
        log.warning("safeguard_unavailable", reason=str(exc))
        raise ApiError(503, UNAVAILABLE_MESSAGE, "SAFEGUARD_UNAVAILABLE") from None
    described = describe(found, user, datetime.now(UTC)) if found is not None else None
    if described is None:
        raise ApiError(404, "Demande Safeguard introuvable", "NOT_FOUND")
    return described


def check_can_decide(held: SafeguardRequest, user: CurrentUser) -> None:
    if held.status != "pending" or held.time_remaining_seconds <= 0:
        state = "expirée" if held.status == "pending" else f"déjà traitée ({held.status})"
        raise ApiError(409, f"Demande Safeguard {state}", "SAFEGUARD_NOT_PENDING")
    if not held.can_approve:
        raise ApiError(
            403,
            f"Niveau d'accréditation insuffisant : {user.accreditation_level} pour une demande {held.security_level}",
            "ACCREDITATION_TOO_LOW",
        )


async def relay_decision(
    client: SafeguardClient, held: SafeguardRequest, action: str, user: CurrentUser, comment: str | None
) -> SafeguardActionResponse:
    # Both spellings of the decider: the n8n workflow sent `rejector` on rejects, the API `approver`.
    payload: dict[str, Any] = {
        "approver": user.username,
        "approver_level": user.accreditation_level,
        "comment": comment or "",
    }
    if action == "reject":
        payload |= {"rejector": user.username, "rejector_level": user.accreditation_level}
    try:
        status, body = await client.decide(held.approval_id, action, payload)
    except SafeguardUnavailable as exc:
        log.warning("safeguard_unavailable", reason=str(exc), approval_id=held.approval_id, action=action)
        raise ApiError(503, UNAVAILABLE_MESSAGE, "SAFEGUARD_UNAVAILABLE") from None
    if status == 404:
        raise ApiError(404, "Demande Safeguard introuvable", "NOT_FOUND")
    if 400 <= status < 500 or (status == 200 and body.get("success") is False):
        message = body.get("message") or body.get("error")
        refused = str(message)[:300] if message else "décision refusée par le serveur Safeguard"
        raise ApiError(409, f"Safeguard : {refused}", "SAFEGUARD_REFUSED")
    if status != 200:
        log.warning("safeguard_unavailable", reason=f"{action} answered {status}", approval_id=held.approval_id)
        raise ApiError(503, UNAVAILABLE_MESSAGE, "SAFEGUARD_UNAVAILABLE")
    done = "approved" if action == "approve" else "rejected"
    default_message = "Demande approuvée" if action == "approve" else "Demande refusée"
    log.info(
        "safeguard_decision",
        approval_id=held.approval_id,
        action=action,
        security_level=held.security_level,
        user_id=user.user_id,
        accreditation_level=user.accreditation_level,
    )
    return SafeguardActionResponse(
        approval_id=held.approval_id,
        status=str(body.get("status") or done),
        message=str(body.get("message") or default_message),
    )


def decision_route(action: str) -> Handler:
    @authenticated()
    async def decide(request: web.Request) -> web.StreamResponse:
        user = current_user(request)
        require_access(user)
        body = await parse_body(request, SafeguardActionRequest)
        client = request.app[SAFEGUARD]
        held = await fetch_request(client, body.approval_id, user)
        check_can_decide(held, user)
        return json_response(await relay_decision(client, held, action, user, body.comment))

    decide.__name__ = action
    return decide


approve = decision_route("approve")
reject = decision_route("reject")
