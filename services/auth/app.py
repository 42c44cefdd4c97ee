"""Application factory of the auth service (it also serves the OpenAPI document and the docs page)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from services.auth import admin, analytics, docs, safeguard, views
from services.auth.keys import HASHER
from services.auth.legacy import warn_about_plain_text_passwords
from services.auth.passwords import PasswordHasher
from shared import Settings, base_app
from shared.contracts import (
    AdminCreateUserRequest,
    AdminDeleteResponse,
    AdminDeleteUserRequest,
    AdminUpdateUserRequest,
    AdminUserResponse,
    AdminUsersResponse,
    AnalyticsQuery,
    AnalyticsResponse,
    LoginRequest,
    LoginResponse,
    MeResponse,
    SafeguardActionRequest,
    SafeguardActionResponse,
    SafeguardDetailResponse,
    SafeguardHistoryQuery,
    SafeguardListQuery,
    SafeguardListResponse,
    SafeguardPath,
    SuccessResponse,
)
from shared.openapi import Route, add_routes

DEFAULT_PORT = 8001
ADMIN_USERS = "/webhook/wibot/admin/users"
SAFEGUARD = "/webhook/wibot/safeguard"

ROUTES = [
    Route(
        "POST",
        "/webhook/auth/login",
        views.login,
        "Connexion : renvoie un JWT (8 h)",
        LoginResponse,
        request=LoginRequest,
        errors=(400, 401, 413, 429),
        authenticated=False,
        tags=("auth",),
    ),
    Route("GET", "/webhook/auth/me", views.me, "L'utilisateur du token", MeResponse, tags=("auth",)),
    Route("POST", "/webhook/auth/logout", views.logout, "Révoque le token utilisé", SuccessResponse, tags=("auth",)),
    Route(
        "GET",
        ADMIN_USERS,
        admin.list_users,
        "Liste des utilisateurs (admin)",
        AdminUsersResponse,
        errors=(403,),
        tags=("admin",),
    ),
    Route(
        "POST",
        ADMIN_USERS,
        admin.create_user,
        "Crée un utilisateur (admin)",
        AdminUserResponse,
        request=AdminCreateUserRequest,
        errors=(400, 403, 409),
        tags=("admin",),
    ),
    Route(
        "PUT",
        ADMIN_USERS,
        admin.update_user,
        "Modifie quota, rôle, activation (admin)",
        AdminUserResponse,
        request=AdminUpdateUserRequest,
        errors=(400, 403, 404, 409),
        tags=("admin",),
    ),
    Route(
        "DELETE",
        ADMIN_USERS,
        admin.delete_user,
        "Supprime un utilisateur et ses données (admin)",
        AdminDeleteResponse,
        request=AdminDeleteUserRequest,
        errors=(400, 403, 404, 409),
        tags=("admin",),
    ),
    Route(
        "GET",
        "/webhook/wibot/analytics",
        analytics.analytics,
        "Statistiques de la page Supervision (admin)",
        AnalyticsResponse,
        query=AnalyticsQuery,
        errors=(400, 403),
        tags=("admin",),
    ),
    Route(
        "GET",
        f"{SAFEGUARD}/requests",
        safeguard.list_requests,
        "Demandes Safeguard en attente (N1+)",
        SafeguardListResponse,
        query=SafeguardListQuery,
        errors=(400, 403),
        tags=("safeguard",),
    ),
    Route(
        "GET",
        f"{SAFEGUARD}/history",
        safeguard.history,
        "Demandes Safeguard traitées (N1+)",
        SafeguardListResponse,
        query=SafeguardHistoryQuery,
        errors=(400, 403),
        tags=("safeguard",),
    ),
    Route(
        "GET",
        f"{SAFEGUARD}/request/{{approval_id}}",
        safeguard.detail,
        "Une demande Safeguard (N1+)",
        SafeguardDetailResponse,
        path_params=SafeguardPath,
        errors=(400, 403, 404, 503),
        tags=("safeguard",),
    ),
    Route(
        "POST",
        f"{SAFEGUARD}/approve",
        safeguard.approve,
        "Approuve une demande (niveau ≥ celui de la demande)",
        SafeguardActionResponse,
        request=SafeguardActionRequest,
        errors=(400, 403, 404, 409, 503),
        tags=("safeguard",),
    ),
    Route(
        "POST",
        f"{SAFEGUARD}/reject",
        safeguard.reject,
        "Refuse une demande (niveau ≥ celui de la demande)",
        SafeguardActionResponse,
        request=SafeguardActionRequest,
        errors=(400, 403, 404, 409, 503),
        tags=("safeguard",),
    ),
]


def create_app(settings: Settings) -> web.Application:
    app = base_app(settings, service="auth")
    app[HASHER] = hasher = PasswordHasher(
        settings.bcrypt_rounds, workers=settings.bcrypt_workers, max_pending=settings.bcrypt_max_pending
    )
    app.on_cleanup.append(lambda _app: asyncio.to_thread(hasher.close))
    app.cleanup_ctx.append(safeguard.safeguard_context(settings))
    app.on_startup.append(warn_about_plain_text_passwords)
    add_routes(app, ROUTES)
    docs.add_docs_routes(app)
    return app
