"""The application base every service shares: request id, access log, error envelope, body parsing."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import structlog
import uvloop
from aiohttp import web
from pydantic import BaseModel, ValidationError

from shared.db import DB_UNAVAILABLE_ERRORS, pool_context
from shared.errors import SERVER_ERROR_MESSAGE, ApiError, DomainError, error_envelope
from shared.keys import AppKeys, RequestKeys
from shared.logs import get_logger
from shared.metrics import DATABASE_ERRORS, metrics, observe_request
from shared.migrations import missing_migrations
from shared.sessions import sessions_context
from shared.settings import Settings

log = get_logger("wibot.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ModelT = TypeVar("ModelT", bound=BaseModel)

REQUEST_ID_HEADER = "X-Request-ID"
# Accept a caller's id only when it is short and printable, so it cannot forge log lines.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

DB_UNAVAILABLE_MESSAGE = "Service temporairement indisponible. Réessayez dans quelques instants."
SCHEMA_BEHIND_MESSAGE = "Base de données à mettre à jour : lancez `make migrate`."

# aiohttp raises these itself (router, body size); the client must still get our envelope, in French.
_HTTP_MESSAGES = {
    404: "Ressource introuvable",
    405: "Méthode non autorisée pour cette ressource",
    413: "Requête trop volumineuse",
}


def json_response(model: BaseModel, *, status: int = 200) -> web.Response:
    return web.Response(
        body=model.__pydantic_serializer__.to_json(model),
        status=status,
        content_type="application/json",
        charset="utf-8",
    )


def json_body_response(value: Any, *, status: int = 200) -> web.Response:
    """A JSON response of plain data (orjson: UTF-8 as is, compact), as `json_response` is of a model."""
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json", charset="utf-8")


def envelope_response(status: int, message: str, code: str | None = None) -> web.Response:
    return json_body_response(error_envelope(message, code), status=status)


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
    except (ApiError, DomainError) as failure:
        exc = failure if isinstance(failure, ApiError) else failure.api_error()
        log.warning("request_failed", status=exc.status, error=exc.message, code=exc.code, path=request.path)
        response = envelope_response(exc.status, exc.message, exc.code)
        response.headers.update(exc.headers)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = _HTTP_MESSAGES.get(exc.status, exc.reason)
        log.warning("request_failed", status=exc.status, error=message, path=request.path)
        response = envelope_response(exc.status, message)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except DB_UNAVAILABLE_ERRORS as exc:
        DATABASE_ERRORS.inc()
        log.error("request_failed", status=503, error="database unavailable", exc=repr(exc), path=request.path)
        return envelope_response(503, DB_UNAVAILABLE_MESSAGE, "DB_UNAVAILABLE")
    except Exception:
        log.exception("request_failed", status=500, path=request.path)
        return envelope_response(500, SERVER_ERROR_MESSAGE)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or a 400/413 envelope. Size is bounded by client_max_size."""
    raw = await request.read()  # raises HTTPRequestEntityTooLarge past client_max_size
    if not raw:
        raise ApiError(400, "Corps de requête manquant : un objet JSON est attendu")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = _read_strictly_refused(raw)
    if not isinstance(data, dict):
        raise ApiError(400, "Corps de requête invalide : un objet JSON est attendu")
    return data


def _read_strictly_refused(raw: bytes) -> Any:
    """What orjson refuses, read again by json, so that each answer stays what it was: a lone surrogate escape
    (valid JSON) reaches validation and its field-level message; bad UTF-8 and bad JSON keep their own."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "Corps de requête invalide : encodage UTF-8 attendu") from None
    except (ValueError, RecursionError):  # JSONDecodeError, and integers past Python's 4,300-digit limit
        raise ApiError(400, "Corps de requête invalide : JSON mal formé") from None


async def parse_body(request: web.Request, model: type[ModelT]) -> ModelT:
    return validate(model, await read_json_object(request))


def validate(model: type[ModelT], data: dict[str, Any]) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, describe_validation_error(exc), "VALIDATION_ERROR") from None


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem, in French, naming the field: enough for a user or a curl script to fix it."""
    error = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in error["loc"]) or "corps"
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return f"Champ obligatoire manquant : {field}"
    if kind in {"string_type", "string_sub_type"}:
        return f"Le champ {field} doit être une chaîne de caractères"
    if kind == "string_too_short":
        return f"Le champ {field} ne peut pas être vide"
    if kind == "string_too_long":
        return f"Le champ {field} dépasse {ctx.get('max_length')} caractères"
    if kind.startswith("uuid"):
        return f"Le champ {field} doit être un UUID valide (ex. 550e8400-e29b-41d4-a716-446655440000)"
    if kind in {"unstorable_text", "string_unicode"}:
        return f"Le champ {field} contient un caractère non autorisé (caractère nul ou substitut UTF-16 isolé)"
    if kind == "literal_error":
        return f"Valeur non autorisée pour {field} (attendu : {ctx.get('expected')})"
    if kind in {"list_type", "model_type", "dict_type"}:
        return f"Le champ {field} n'a pas le bon type"
    if kind in {"int_type", "int_parsing", "bool_type", "bool_parsing", "greater_than_equal", "less_than_equal"}:
        return f"Valeur invalide pour {field}"
    return f"Champ invalide : {field}"


def base_app(settings: Settings, *, service: str) -> web.Application:
    """A service's Application: our middlewares, the body limit, settings and the DB pool in place."""
    app = web.Application(
        middlewares=[request_context_middleware, error_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[AppKeys.SETTINGS] = settings
    app[AppKeys.SERVICE] = service
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
    return json_body_response({"success": True, "status": "ready"})


def new_event_loop(settings: Settings) -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if settings.event_loop == "uvloop" else asyncio.new_event_loop()


# How every service's server runs, in production as in the tests (pytest-aiohttp's TestServer always cancels):
# a client that leaves cancels its handler, so the model call, an extraction job or a retrieval it started stops
# instead of running to its end for nobody (aiohttp's own default is not to cancel). tests/test_server_process.py
# starts a real process and shows it.
SERVER_OPTIONS: dict[str, Any] = {"handler_cancellation": True}


def serve(
    create_app: Callable[[Settings], web.Application], *, service: str, default_port: int, epilog: str | None = None
) -> None:
    """`python -m services.<name> [--host H] [--port P]`: one service, alone, in the foreground."""
    import argparse
    import sys

    from shared.logs import configure_logging
    from shared.migrations import DatabaseBehind
    from shared.settings import load_settings_or_exit

    parser = argparse.ArgumentParser(
        prog=f"python -m services.{service}",
        description=f"WIBOT {service} service",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    args = parser.parse_args()
    settings = load_settings_or_exit()
    configure_logging(level=settings.log_level, fmt=settings.log_format, service=service)
    loop = new_event_loop(settings)
    event_loop = type(loop).__module__.partition(".")[0]  # "uvloop" or "asyncio": what runs, not what was asked
    log.info("service_starting", service=service, host=args.host, port=args.port, event_loop=event_loop)
    try:
        web.run_app(
            create_app(settings),
            host=args.host,
            port=args.port,
            access_log=None,
            print=None,
            loop=loop,
            **SERVER_OPTIONS,
        )
    except DatabaseBehind as exc:
        log.error("database_behind", missing=exc.missing)
        print(f"{service}: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
