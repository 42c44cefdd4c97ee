"""The middlewares every service runs: request id and access log (outermost), then the error envelope."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from shared.db import DB_UNAVAILABLE_ERRORS
from shared.errors import SERVER_ERROR_MESSAGE, ApiError, DomainError
from shared.keys import AppKeys, RequestKeys
from shared.logs import get_logger
from shared.metrics import DATABASE_ERRORS, observe_request
from shared.responses import envelope_response

log = get_logger("wibot.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-ID"
# nginx's code for a client that closed the connection before the answer: not a failure of ours (a 500 in the
# access log and the metrics, before, for every abandoned request).
CLIENT_CLOSED_REQUEST = 499
# Accept a caller's id only when it is short and printable, so it cannot forge log lines.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

DB_UNAVAILABLE_MESSAGE = "Service temporairement indisponible. Réessayez dans quelques instants."
DB_UNAVAILABLE_RETRY_AFTER_S = 5  # a restart or a failover of PostgreSQL: seconds, not minutes


def database_unavailable() -> ApiError:
    return ApiError(
        503, DB_UNAVAILABLE_MESSAGE, "DB_UNAVAILABLE", headers={"Retry-After": str(DB_UNAVAILABLE_RETRY_AFTER_S)}
    )


def client_failure(exc: BaseException, *, path: str) -> ApiError:
    """What a client is told of a failure, logged once here: the one mapping of the error middleware and of a
    stream's last event (services/chat/writer.py), whose status line is already sent."""
    if isinstance(exc, ApiError | DomainError):
        failure = exc if isinstance(exc, ApiError) else exc.api_error()
        log.warning("request_failed", status=failure.status, error=failure.logged, code=failure.code, path=path)
        return failure
    if isinstance(exc, DB_UNAVAILABLE_ERRORS):
        DATABASE_ERRORS.inc()
        log.error("request_failed", status=503, error="database unavailable", exc=repr(exc), path=path)
        return database_unavailable()
    log.error("request_failed", status=500, exc_info=exc, path=path)
    return ApiError(500, SERVER_ERROR_MESSAGE)


# aiohttp raises these itself (router, body size); the client must still get our envelope, in French.
_HTTP_MESSAGES = {
    404: "Ressource introuvable",
    405: "Méthode non autorisée pour cette ressource",
    413: "Requête trop volumineuse",
}


@web.middleware
async def request_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: request id in, request id out, one access-log line per request."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
    request[RequestKeys.REQUEST_ID] = request_id
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers[REQUEST_ID_HEADER] = request_id
        return response
    except asyncio.CancelledError:
        status = CLIENT_CLOSED_REQUEST
        raise
    finally:
        elapsed = time.perf_counter() - started
        observe_request(request.app[AppKeys.SERVICE], request, status, elapsed)
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=status,
            duration_ms=round(elapsed * 1000, 2),
            user_id=request.get(RequestKeys.USER_ID),
        )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes `{"success": false, "error", "code"?}`, logged once."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = _HTTP_MESSAGES.get(exc.status, exc.reason)
        log.warning("request_failed", status=exc.status, error=message, path=request.path)
        response = envelope_response(exc.status, message)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:
        failure = client_failure(exc, path=request.path)
        user_id = request.get(RequestKeys.USER_ID)
        if failure.status == 429 and user_id is not None and AppKeys.PACER in request.app:
            await request.app[AppKeys.PACER].pace(user_id)
        response = envelope_response(failure.status, failure.message, failure.code)
        response.headers.update(failure.headers)
        return response
