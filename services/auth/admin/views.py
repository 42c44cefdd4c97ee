"""Admin API (role admin only): the same steps as the `users` command, over HTTP."""

from __future__ import annotations

from dataclasses import asdict

from aiohttp import web

from services.auth import users
from services.auth.keys import HASHER
from shared import AppKeys, authenticated, current_month, json_response, parse_body
from shared.contracts import (
    AdminCreateUserRequest,
    AdminDeleteResponse,
    AdminDeleteUserRequest,
    AdminUpdateUserRequest,
    AdminUser,
    AdminUserResponse,
    AdminUsersResponse,
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
    return json_response(AdminUserResponse(user=admin_user(record)))


@authenticated(admin=True)
async def delete_user(request: web.Request) -> web.Response:
    body = await parse_body(request, AdminDeleteUserRequest)
    user_id, username = await users.delete_user(request.app[AppKeys.DB], user_id=body.user_id)
    request.app[AppKeys.SESSIONS].forget(user_id)
    return json_response(AdminDeleteResponse(deleted=DeletedUser(user_id=user_id, username=username)))
