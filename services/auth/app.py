"""Application factory of the auth service."""

from __future__ import annotations

from aiohttp import web

from services.auth import views
from services.auth.keys import HASHER
from services.auth.passwords import PasswordHasher
from shared import Settings, base_app

DEFAULT_PORT = 8001


def create_app(settings: Settings) -> web.Application:
    app = base_app(settings, service="auth")
    app[HASHER] = PasswordHasher(settings.bcrypt_rounds)
    app.router.add_post("/webhook/auth/login", views.login)
    return app
