"""Admin API (role admin only): the same steps as the `users` command, over HTTP."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime

from aiohttp import web

from services.auth import users
from services.auth.keys import HASHER
from shared import AppKeys, audit, authenticated, current_month, current_user, json_response, parse_body, validate
from shared.contracts import (
    AdminCreateUserRequest,
    AdminDeleteResponse,
    AdminDeleteUserRequest,
    AdminUpdateUserRequest,
    AdminUser,
    AdminUserResponse,
    AdminUsersResponse,
    AuditQuery,
    AuditResponse,
    AuditRow,
    DeletedUser,
)


def admin_user(record: users.UserRecord) -> AdminUser:
    return AdminUser.model_validate(asdict(record))


@authenticated(admin=True)
async def list_users(request: web.Request) -> web.Response:
    settings = request.app[AppKeys.SETTINGS]
    records = await users.list_users(
        request.app[AppKeys.DB], month=current_month(), default_quota=settings.default_quota_tokens
    )
    return json_response(AdminUsersResponse(users=[admin_user(r) for r in records]))


@authenticated(admin=True)
async def create_user(request: web.Request) -> web.Response:
    body = await parse_body(request, AdminCreateUserRequest)
    settings = request.app[AppKeys.SETTINGS]
    record = await users.create_user(
        request.app[AppKeys.DB],
        request.app[HASHER],
        username=body.username,
        password=body.password,
        email=body.email,
        role=body.role,
        quota_tokens=body.quota_tokens,
        standing_quota_tokens=body.standing_quota_tokens,
        accreditation_level=body.accreditation_level,
        month=current_month(),
        default_quota=settings.default_quota_tokens,
    )
    granted = {
        "role": record.role,
        "accreditation_level": record.accreditation_level,
        "quota_tokens": body.quota_tokens,
    }
    await audit.record(
        request.app[AppKeys.DB], audit.USER_CREATED, actor_id=current_user(request).user_id,
        target=str(record.user_id), request=request, details=granted,
    )  # fmt: skip
    return json_response(AdminUserResponse(user=admin_user(record)))


@authenticated(admin=True)
async def update_user(request: web.Request) -> web.Response:
    body = await parse_body(request, AdminUpdateUserRequest)
    settings = request.app[AppKeys.SETTINGS]
    record = await users.update_user(
        request.app[AppKeys.DB],
        user_id=body.user_id,
        month=current_month(),
        default_quota=settings.default_quota_tokens,
        quota_tokens=body.quota_tokens,
        add_tokens=body.add_tokens,
        role=body.role,
        is_active=body.is_active,
        accreditation_level=body.accreditation_level,
        standing_quota_tokens=body.standing_quota_tokens,
    )
    # This process refuses the old role or the deactivated user at once; the others when notified.
    request.app[AppKeys.SESSIONS].forget(body.user_id)
    changed = body.model_dump(exclude={"user_id"}, exclude_none=True)
    action = audit.USER_DEACTIVATED if body.is_active is False else audit.USER_CHANGED
    await audit.record(
        request.app[AppKeys.DB], action, actor_id=current_user(request).user_id,
        target=str(body.user_id), request=request, details=changed,
    )  # fmt: skip
    return json_response(AdminUserResponse(user=admin_user(record)))


@authenticated(admin=True)
async def delete_user(request: web.Request) -> web.Response:
    body = await parse_body(request, AdminDeleteUserRequest)
    user_id, username = await users.delete_user(request.app[AppKeys.DB], user_id=body.user_id)
    request.app[AppKeys.SESSIONS].forget(user_id)
    actor_id = current_user(request).user_id
    await audit.record(
        request.app[AppKeys.DB], audit.USER_DELETED, actor_id=actor_id, target=str(user_id), request=request
    )
    return json_response(AdminDeleteResponse(deleted=DeletedUser(user_id=user_id, username=username)))


@authenticated(admin=True)
async def audit_trail(request: web.Request) -> web.Response:
    query = validate(AuditQuery, dict(request.query))
    rows = await audit.read(
        request.app[AppKeys.DB], actor_id=query.user_id, action=query.action, since=_naive_utc(query.since),
        until=_naive_utc(query.until), before_id=query.before_id, limit=query.limit,
    )  # fmt: skip
    next_before_id = rows[-1]["audit_id"] if len(rows) == query.limit else None
    return json_response(
        AuditResponse(rows=[AuditRow.model_validate(row) for row in rows], next_before_id=next_before_id)
    )


def _naive_utc(value: datetime | None) -> datetime | None:
    """The TIMESTAMP columns hold naive UTC."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)
