"""Typed application and request keys shared by every service (service-specific ones live in the service)."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from shared.identity import CurrentUser
from shared.settings import Settings


class AppKeys:
    DB = web.AppKey("db", asyncpg.Pool)
    SETTINGS = web.AppKey("settings", Settings)
    SERVICE = web.AppKey("service", str)


class RequestKeys:
    REQUEST_ID = web.RequestKey("request_id", str)
    USER = web.RequestKey("current_user", CurrentUser)
    # Set as soon as known (login included) so the access log can name the user.
    USER_ID = web.RequestKey("user_id", int)
