"""Application factory of the chat service."""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from services.chat import views
from services.chat.resources import chat_resources
from shared import AppKeys, Settings, base_app, get_logger
from shared.contracts import ChatRequest, ChatResponse, RagIngestRequest, RagIngestResponse
from shared.keys import NotReady
from shared.openapi import Route, add_routes

log = get_logger("wibot.chat")

DEFAULT_PORT = 8002

ROUTES = [
    Route(
        "POST",
        "/webhook/wibot/chat",
        views.chat,
        "Envoie un message à WIBOT (mémoire, fichiers, quota)",
        ChatResponse,
        request=ChatRequest,
        errors=(400, 409, 413, 415, 422, 429, 502, 503, 504),
        tags=("chat",),
        streams={
            # One SSE event (schemathesis and OpenAPI 3.2 read it so): its name and its JSON data.
            "text/event-stream": {
                "type": "object",
                "description": "SSE (ou `stream: true`) : `event: delta` {content}…, puis `event: done` (le corps"
                " JSON habituel) ou `event: error` (l'enveloppe d'erreur) ; commentaires `: ping` toutes les 15 s",
                "properties": {"event": {"enum": ["delta", "done", "error"]}, "data": {"type": "string"}},
                "required": ["event", "data"],
            },
            # One line of n8n's JSON lines.
            "application/x-ndjson": {
                "type": "object",
                "description": "Lignes JSON de n8n : {type: begin}, {type: item, content}…, {type: end, result}"
                " ou {type: error, content, error}",
                "properties": {
                    "type": {"enum": ["begin", "item", "end", "error"]},
                    "content": {"type": "string"},
                    "metadata": {"type": "object"},
                },
                "required": ["type", "metadata"],
            },
        },
    ),
    Route(
        "POST",
        "/webhook/wibot/rag/ingest",
        views.rag_ingest,
        "Indexe les documents de la base de connaissances (administrateurs)",
        RagIngestResponse,
        request=RagIngestRequest,
        errors=(400, 401, 403, 409, 502, 503, 504),
        tags=("knowledge",),
    ),
]


def create_app(settings: Settings) -> web.Application:
    app = base_app(settings, service="chat")
    app[AppKeys.NOT_READY] = model_configuration_problems(settings)
    app.cleanup_ctx.append(chat_resources(settings))
    add_routes(app, ROUTES)
    return app


LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def model_configuration_problems(settings: Settings) -> list[NotReady]:
    """Production mode without a key: every chat would fail, so the service says it is not ready. A model
    server on this machine (make run's fake, Ollama, vLLM) needs no key."""
    host = urlsplit(settings.mistral_server_url).hostname or ""
    has_key = settings.mistral_api_key is not None and settings.mistral_api_key.get_secret_value().strip() != ""
    if not has_key and host not in LOOPBACK_HOSTS:
        log.error(
            "model_not_configured",
            server_url=settings.mistral_server_url,
            fix="set MISTRAL_API_KEY (or MISTRAL_SERVER_URL to a local model server)",
        )
        return [NotReady("Service IA non configuré : clé MISTRAL_API_KEY manquante.", "LLM_NOT_CONFIGURED")]
    return []
