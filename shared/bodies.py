"""Request bodies: read as one JSON object, validated by a pydantic model, every problem a French 400."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from shared.errors import ApiError

ModelT = TypeVar("ModelT", bound=BaseModel)

# linux/tcp_states.h: the peer's FIN has arrived (its side of the connection is closed), ours is still open.
TCP_CLOSE_WAIT = 8


class ClientLeft(asyncio.CancelledError):
    """The client closed the connection before its body was parsed: ended as aiohttp ends a handler whose client
    left (logged and counted 499), a moment before aiohttp itself would have seen it."""


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or a 400/413 envelope. Size is bounded by client_max_size."""
    raw = await request.read()  # raises HTTPRequestEntityTooLarge past client_max_size
    if client_has_left(request):
        raise ClientLeft
    if not raw:
        raise ApiError(400, "Corps de requête manquant : un objet JSON est attendu")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = _read_strictly_refused(raw)
    if not isinstance(data, dict):
        raise ApiError(400, "Corps de requête invalide : un objet JSON est attendu")
    return data


def client_has_left(request: web.Request) -> bool:
    """Whether the client closed its side of the connection. aiohttp sees a client's FIN only once it has read
    the bytes before it: a client that sent megabytes and left (an upload cancelled while it waited its turn, a
    gateway's timeout) had its body parsed, checked and sent to an extraction worker for nobody, then the worker
    killed (bench/attacks.py, extraction). The kernel knows at once (TCP_INFO's state, one system call); where it
    cannot tell (not TCP, not Linux), the body is parsed as before. A client that half-closes and still waits for
    its answer is treated as gone: aiohttp treats it so too once it reads the FIN."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return True
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6) or not hasattr(socket, "TCP_INFO"):
        return False
    try:
        state: int = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return False
    return state == TCP_CLOSE_WAIT


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
