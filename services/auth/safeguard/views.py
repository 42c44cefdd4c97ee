"""The Safeguard routes: list, history, detail, approve, reject."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from services.auth.safeguard.client import SAFEGUARD, SafeguardClient, SafeguardUnavailable
from services.auth.safeguard.errors import UNAVAILABLE_MESSAGE, DecisionRefused, RequestNotFound, SafeguardDown
from services.auth.safeguard.rules import check_can_decide, describe, require_access
from shared import AppKeys, audit, authenticated, current_user, json_response, parse_body, validate
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
from shared.identity import CurrentUser
from shared.logs import get_logger
from shared.middlewares import Handler

log = get_logger("wibot.safeguard")


def unavailable_list(exc: SafeguardUnavailable) -> web.Response:
    log.warning("safeguard_unavailable", reason=str(exc))
    return json_response(SafeguardListResponse(requests=[], total=0, message=UNAVAILABLE_MESSAGE))


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
        raise SafeguardDown from None
    described = describe(found, user, datetime.now(UTC)) if found is not None else None
    if described is None:
        raise RequestNotFound
    return described


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
        raise SafeguardDown from None
    if status == 404:
        raise RequestNotFound
    if 400 <= status < 500 or (status == 200 and body.get("success") is False):
        message = body.get("message") or body.get("error")
        refused = str(message)[:300] if message else "décision refusée par le serveur Safeguard"
        raise DecisionRefused(refused)
    if status != 200:
        log.warning("safeguard_unavailable", reason=f"{action} answered {status}", approval_id=held.approval_id)
        raise SafeguardDown
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
        decided = await relay_decision(client, held, action, user, body.comment)
        await audit.record(
            request.app[AppKeys.DB], audit.SAFEGUARD_DECISION, actor_id=user.user_id, target=held.approval_id,
            request=request, details={"decision": action, "security_level": held.security_level},
        )  # fmt: skip
        return json_response(decided)

    decide.__name__ = action
    return decide


approve = decision_route("approve")
reject = decision_route("reject")
