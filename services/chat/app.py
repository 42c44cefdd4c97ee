"""Application factory of the chat service."""

from __future__ import annotations

from aiohttp import web

from services.chat import views
from services.chat.alerts import alerts_context
from services.chat.keys import PROMPT_TEMPLATE
from services.chat.llm import llm_context
from services.chat.prompt import load_prompt_template
from shared import Settings, base_app
from shared.contracts import ChatRequest, ChatResponse
from shared.openapi import Route, add_routes

DEFAULT_PORT = 8002

ROUTES = [
    Route(
        "POST",
        "/webhook/wibot/chat",
        views.chat,
        "Envoie un message à WIBOT (mémoire, fichiers, quota)",
        ChatResponse,
        request=ChatRequest,
        errors=(400, 403, 413, 429, 502, 503, 504),
        tags=("chat",),
    ),
]


def create_app(settings: Settings) -> web.Application:
    app = base_app(settings, service="chat")
    app[PROMPT_TEMPLATE] = load_prompt_template(settings.system_prompt_file)
    app.cleanup_ctx.append(llm_context(settings))
    app.cleanup_ctx.append(alerts_context(settings))
    add_routes(app, ROUTES)
    return app
