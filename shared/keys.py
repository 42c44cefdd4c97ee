"""Typed application and request keys shared by every service (service-specific ones live in the service)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from aiohttp import web

from shared.identity import CurrentUser
from shared.pacing import RefusalPacer
from shared.sessions import SESSIONS
from shared.settings import Settings


@dataclass
class SchemaCheck:
    """Whether the database was seen with every migration this code needs (checked at start, else by /readyz)."""

    current: bool = False


@dataclass(frozen=True)
class NotReady:
    """A configuration problem that keeps a service out of the load balancer (/readyz 503) until fixed."""

    message: str  # French, for the envelope
    code: str


class AppKeys:
    DB = web.AppKey("db", asyncpg.Pool)
    NOT_READY = web.AppKey("not_ready", list[NotReady])
    SCHEMA = web.AppKey("schema", SchemaCheck)
    SETTINGS = web.AppKey("settings", Settings)
    SERVICE = web.AppKey("service", str)
    # What /readyz adds to its answer about how the service runs (e.g. chat's knowledge-base vector path).
    READY_DETAILS = web.AppKey("ready_details", dict[str, str])
    SESSIONS = SESSIONS
    PACER = web.AppKey("pacer", RefusalPacer)


class RequestKeys:
    REQUEST_ID = web.RequestKey("request_id", str)
    USER = web.RequestKey("current_user", CurrentUser)
    # Set as soon as known (login included) so the access log can name the user.
    USER_ID = web.RequestKey("user_id", int)
