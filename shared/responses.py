"""JSON responses: a model, plain data, or the error envelope."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel

from shared.errors import error_envelope


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
