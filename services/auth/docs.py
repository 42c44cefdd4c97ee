"""GET /webhook/openapi.json (built from the route tables and contracts) and GET /docs (Swagger UI 5, its
assets served from the swagger-ui-py package: no CDN, works on a closed network)."""

from __future__ import annotations

import functools
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from aiohttp import web

OPENAPI_PATH = "/webhook/openapi.json"
DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"

DOCS_PAGE = f"""<!doctype html>
<html lang="fr">
<head>
  <meta charset="utf-8">
  <title>WIBOT backend – API</title>
  <link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{ASSETS_PATH}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{url: "{OPENAPI_PATH}", dom_id: "#swagger-ui", deepLinking: true}});
  </script>
</body>
</html>
"""


@functools.cache
def openapi_bytes() -> bytes:
    return json.dumps(openapi_document(), ensure_ascii=False).encode()


def openapi_document() -> dict[str, Any]:
    # Imported here: the auth process only loads the other services' modules if someone reads the docs.
    from services.auth.app import ROUTES as AUTH_ROUTES
    from services.chat.app import ROUTES as CHAT_ROUTES
    from services.conversations.app import ROUTES as CONVERSATIONS_ROUTES
    from shared.openapi import build_openapi

    return build_openapi([*AUTH_ROUTES, *CHAT_ROUTES, *CONVERSATIONS_ROUTES], title="WIBOT backend", version="1.0.0")


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=openapi_bytes(), content_type="application/json", charset="utf-8")


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_PAGE, content_type="text/html", charset="utf-8")


def add_docs_routes(app: web.Application) -> None:
    app.router.add_get(OPENAPI_PATH, openapi)
    app.router.add_get(DOCS_PATH, docs_page)
    app.router.add_static(ASSETS_PATH, Path(str(files("swagger_ui") / "static")))
