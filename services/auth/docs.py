"""GET /webhook/openapi.json and GET /docs (Swagger UI 5, its assets served from the swagger-ui-py package: no
CDN, works on a closed network). The document is docs/openapi.json, generated from every service's route table
by `make openapi` (devtools/openapi_dump.py): this service does not import the others."""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path

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


OPENAPI_FILE = Path(__file__).resolve().parent.parent.parent / "docs" / "openapi.json"


@functools.cache
def openapi_bytes() -> bytes:
    return OPENAPI_FILE.read_bytes()


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=openapi_bytes(), content_type="application/json", charset="utf-8")


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_PAGE, content_type="text/html", charset="utf-8")


def add_docs_routes(app: web.Application) -> None:
    app.router.add_get(OPENAPI_PATH, openapi)
    app.router.add_get(DOCS_PATH, docs_page)
    app.router.add_static(ASSETS_PATH, Path(str(files("swagger_ui") / "static")))
