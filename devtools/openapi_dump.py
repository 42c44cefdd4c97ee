"""`make openapi`: writes docs/openapi.json, the API of all three services, from their route tables and the
contracts. Generated, never edited (a test fails when it is stale); the auth service serves it as is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.auth.app import ROUTES as AUTH_ROUTES
from services.chat.app import ROUTES as CHAT_ROUTES
from services.conversations.app import ROUTES as CONVERSATIONS_ROUTES
from shared.openapi import build_openapi

OPENAPI_FILE = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def document() -> dict[str, Any]:
    return build_openapi([*AUTH_ROUTES, *CHAT_ROUTES, *CONVERSATIONS_ROUTES], title="WIBOT backend", version="1.0.0")


def generate() -> str:
    return json.dumps(document(), ensure_ascii=False, indent=1) + "\n"


if __name__ == "__main__":
    OPENAPI_FILE.write_text(generate(), encoding="utf-8")
    print(f"Wrote {OPENAPI_FILE.relative_to(Path.cwd()) if OPENAPI_FILE.is_relative_to(Path.cwd()) else OPENAPI_FILE}")
