"""Routes declared once: registered on the app AND described in the OpenAPI 3.1 document from the same
pydantic contracts (nothing is written twice)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared.contracts import ErrorResponse
from shared.middlewares import Handler

ERROR_DESCRIPTIONS = {
    400: "Requête invalide",
    401: "Token invalide ou expiré",
    403: "Accès refusé",
    404: "Introuvable",
    409: "Conflit",
    413: "Requête trop volumineuse",
    429: "Quota dépassé ou trop de tentatives",
    502: "Service IA en erreur",
    503: "Service indisponible",
    504: "Service IA trop lent",
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    response: type[BaseModel]
    request: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: type[BaseModel] | None = None  # default: every {name} in the path is a UUID
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)  # media type → schema of one event or line
    errors: tuple[int, ...] = ()
    authenticated: bool = True
    tags: tuple[str, ...] = field(default_factory=tuple)


def add_routes(app: web.Application, routes: list[Route]) -> None:
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)


def build_openapi(routes: list[Route], *, title: str, version: str) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [(ErrorResponse, "serialization")]
    for route in routes:
        models.append((route.response, "serialization"))
        if route.request is not None:
            models.append((route.request, "validation"))
    _, defs = models_json_schema(list(dict.fromkeys(models)), ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation(route: Route) -> dict[str, Any]:
    errors = (*route.errors, 401) if route.authenticated else route.errors
    responses: dict[str, Any] = {
        "200": {"description": "Succès", "content": {"application/json": {"schema": _ref(route.response)}}}
    }
    for media_type, schema in route.streams.items():
        responses["200"]["content"][media_type] = {"schema": schema}
    for status in sorted({*errors, 500}):
        responses[str(status)] = {
            "description": ERROR_DESCRIPTIONS.get(status, "Erreur serveur"),
            "content": {"application/json": {"schema": _ref(ErrorResponse)}},
        }
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": _operation_id(route),
        "tags": list(route.tags),
        "responses": responses,
    }
    if route.authenticated:
        operation["security"] = [{"bearer": []}]
    path_schemas = route.path_params.model_json_schema()["properties"] if route.path_params else {}
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": path_schemas.get(name, {"type": "string", "format": "uuid"}),
        }
        for name in _path_params(route.path)
    ]
    if route.streams:
        parameters.append(
            {
                "name": "Accept",
                "in": "header",
                "required": False,
                "description": "Réponse en flux : " + ", ".join(route.streams) + " (sinon un seul corps JSON)",
                "schema": {"type": "string", "enum": ["application/json", *route.streams]},
            }
        )
    if route.query is not None:
        schema = route.query.model_json_schema()
        required = set(schema.get("required", []))
        parameters += [
            {"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema["properties"].items()
        ]
    if parameters:
        operation["parameters"] = parameters
    if route.request is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(route.request)}},
        }
    return operation


def _operation_id(route: Route) -> str:
    slug = route.path.strip("/").replace("/", "_").replace("{", "").replace("}", "")
    return f"{route.method.lower()}_{slug}"


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
