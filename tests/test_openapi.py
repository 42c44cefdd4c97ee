"""The OpenAPI 3.1 document is generated from the same route tables the services register."""

from __future__ import annotations

from services.auth.app import ROUTES as AUTH_ROUTES
from services.auth.app import create_app as auth_app
from services.chat.app import ROUTES as CHAT_ROUTES
from services.conversations.app import ROUTES as CONVERSATIONS_ROUTES

ALL_ROUTES = [*AUTH_ROUTES, *CHAT_ROUTES, *CONVERSATIONS_ROUTES]


def resolve(document: dict, ref: str) -> dict:
    assert ref.startswith("#/components/schemas/"), ref
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]]


async def test_document_describes_every_registered_route(make_client, settings):
    client = await make_client(auth_app(settings))
    r = await client.get("/webhook/openapi.json")
    assert r.status == 200 and r.content_type == "application/json"
    document = await r.json()
    assert document["openapi"] == "3.1.0"
    described = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    assert described == {(route.method, route.path) for route in ALL_ROUTES}
    login = document["paths"]["/webhook/auth/login"]["post"]
    assert "security" not in login
    request = resolve(document, login["requestBody"]["content"]["application/json"]["schema"]["$ref"])
    assert set(request["required"]) == {"username", "password"}
    response = resolve(document, login["responses"]["200"]["content"]["application/json"]["schema"]["$ref"])
    assert set(response["properties"]) == {"success", "token", "user"}
    chat = document["paths"]["/webhook/wibot/chat"]["post"]
    assert chat["security"] == [{"bearer": []}]
    assert {"400", "401", "409", "413", "415", "422", "429", "502", "503", "504", "500"} <= set(chat["responses"])
    error = resolve(document, chat["responses"]["429"]["content"]["application/json"]["schema"]["$ref"])
    assert set(error["properties"]) == {"success", "error", "code"}
    listing = document["paths"]["/webhook/wibot/conversations"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"limit", "before"}
    # Every $ref points at a schema that exists.
    text = await r.text()
    import re

    for name in set(re.findall(r"#/components/schemas/([A-Za-z0-9_]+)", text)):
        assert name in document["components"]["schemas"], name


async def test_docs_page_and_its_assets_are_served_locally(make_client, settings):
    client = await make_client(auth_app(settings))
    r = await client.get("/docs")
    page = await r.text()
    assert r.status == 200 and "/docs/assets/swagger-ui-bundle.js" in page and "https://" not in page
    r = await client.get("/docs/assets/swagger-ui-bundle.js")
    assert r.status == 200 and len(await r.read()) > 100_000


def test_docs_openapi_json_is_generated_from_the_route_tables():
    """docs/openapi.json is `make openapi`'s output, never edited: one source of truth (the route tables)."""
    from devtools.openapi_dump import OPENAPI_FILE, generate

    assert OPENAPI_FILE.read_text(encoding="utf-8") == generate(), "docs/openapi.json is stale: run `make openapi`"


def test_the_auth_service_does_not_import_the_other_services():
    import subprocess
    import sys

    probe = (
        "import sys, services.auth.app, services.auth.docs;"
        " print(sorted(m for m in sys.modules if m.startswith('services.')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "services.chat" not in out and "services.conversations" not in out, out
