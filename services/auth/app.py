"""Application factory of the auth service."""

from __future__ import annotations

from aiohttp import web

from services.auth import admin, views
from services.auth.keys import HASHER
from services.auth.passwords import PasswordHasher
from shared import Settings, base_app

DEFAULT_PORT = 8001


def create_app(settings: Settings) -> web.Application:
    app = base_app(settings, service="auth")
    app[HASHER] = PasswordHasher(settings.bcrypt_rounds)
    app.router.add_post("/webhook/auth/login", views.login)
    app.router.add_get("/webhook/auth/me", views.me)
    app.router.add_post("/webhook/auth/logout", views.logout)
    admin_users = app.router.add_resource("/webhook/wibot/admin/users")
    admin_users.add_route("GET", admin.list_users)
    admin_users.add_route("POST", admin.create_user)
    admin_users.add_route("PUT", admin.update_user)
    admin_users.add_route("DELETE", admin.delete_user)
    return app
