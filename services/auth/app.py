"""Application factory of the auth service: login (views.py), and beside it the admin pages (admin/), the Safeguard
gateway (safeguard/) and the OpenAPI document with its docs page (docs.py)."""

from __future__ import annotations

from aiohttp import web

from services.auth import admin, docs, safeguard, views
from services.auth.directory import directory_context
from services.auth.legacy import warn_about_plain_text_passwords
from services.auth.resources import auth_resources
from shared import Settings, base_app
from shared.contracts import LoginRequest, LoginResponse, MeResponse, SuccessResponse
from shared.openapi import Route, add_routes

DEFAULT_PORT = 8001

LOGIN_ROUTES = [
    Route(
        "POST",
        "/webhook/auth/login",
        views.login,
        "Connexion : renvoie un JWT (8 h)",
        LoginResponse,
        request=LoginRequest,
        errors=(400, 401, 409, 413, 429, 503),
        authenticated=False,
        tags=("auth",),
    ),
    Route("GET", "/webhook/auth/me", views.me, "L'utilisateur du token", MeResponse, tags=("auth",)),
    Route("POST", "/webhook/auth/logout", views.logout, "Révoque le token utilisé", SuccessResponse, tags=("auth",)),
]
ROUTES = [*LOGIN_ROUTES, *admin.ROUTES, *safeguard.ROUTES]


def create_app(settings: Settings) -> web.Application:
    app = base_app(settings, service="auth")
    app.cleanup_ctx.append(auth_resources(settings))
    app.cleanup_ctx.append(directory_context(settings))
    app.on_startup.append(warn_about_plain_text_passwords)
    add_routes(app, ROUTES)
    docs.add_docs_routes(app)
    return app
