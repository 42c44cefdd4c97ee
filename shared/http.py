"""The application base every service shares: its middlewares, body limit, settings, pool, and probes."""

from __future__ import annotations

import asyncio

from aiohttp import web

from shared.db import DB_UNAVAILABLE_ERRORS, pool_context
from shared.keys import AppKeys
from shared.logs import get_logger
from shared.metrics import metrics
from shared.middlewares import DB_UNAVAILABLE_MESSAGE, error_middleware, request_context_middleware
from shared.migrations import missing_migrations
from shared.pacing import RefusalPacer
from shared.responses import envelope_response, json_body_response
from shared.sessions import sessions_context
from shared.settings import Settings

log = get_logger("wibot.http")

SCHEMA_BEHIND_MESSAGE = "Base de données à mettre à jour : lancez `make migrate`."


def base_app(settings: Settings, *, service: str) -> web.Application:
    """A service's Application: our middlewares, the body limit, settings and the DB pool in place."""
    app = web.Application(
        middlewares=[request_context_middleware, error_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[AppKeys.SETTINGS] = settings
    app[AppKeys.SERVICE] = service
    app[AppKeys.PACER] = RefusalPacer(free_refusals=settings.refusals_before_pacing, hold_s=settings.refusal_pacing_s)
    app.cleanup_ctx.append(pool_context(settings, application_name=f"wibot-{service}"))
    app.cleanup_ctx.append(sessions_context(settings, service=service))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def healthz(request: web.Request) -> web.Response:
    """The process is up and serving (liveness)."""
    return json_body_response({"success": True, "status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """The configuration is complete, the database answers and has our migrations (readiness): 503 otherwise."""
    for problem in request.app.get(AppKeys.NOT_READY, []):
        return envelope_response(503, problem.message, problem.code)
    schema = request.app[AppKeys.SCHEMA]
    try:
        async with asyncio.timeout(2):
            await request.app[AppKeys.DB].fetchval("SELECT 1")
            missing = [] if schema.current else await missing_migrations(request.app[AppKeys.DB])
    except TimeoutError:
        log.warning("not_ready", exc="timeout")
        return envelope_response(503, DB_UNAVAILABLE_MESSAGE, "DB_UNAVAILABLE")
    except DB_UNAVAILABLE_ERRORS as exc:
        log.warning("not_ready", exc=repr(exc))
        return envelope_response(503, DB_UNAVAILABLE_MESSAGE, "DB_UNAVAILABLE")
    if missing:
        log.error("not_ready", reason="database_behind", missing=missing, fix="make migrate")
        return envelope_response(503, SCHEMA_BEHIND_MESSAGE, "SCHEMA_BEHIND")
    schema.current = True
    details = request.app.get(AppKeys.READY_DETAILS)
    return json_body_response({"success": True, "status": "ready", **({"details": details} if details else {})})
