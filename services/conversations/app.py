"""Application factory of the conversations service."""

from __future__ import annotations

from aiohttp import web

from services.conversations import views
from shared import Settings, base_app

DEFAULT_PORT = 8003


def create_app(settings: Settings) -> web.Application:
    app = base_app(settings, service="conversations")
    app.router.add_get("/webhook/wibot/conversations", views.list_conversations)
    app.router.add_post("/webhook/wibot/conversations", views.create_conversation)
    app.router.add_get("/webhook/wibot/conversations/{conversation_id}/messages", views.conversation_messages)
    app.router.add_get("/webhook/wibot/messages", views.messages_by_query)
    app.router.add_patch("/webhook/wibot/conversation/rename", views.rename_conversation)
    app.router.add_delete("/webhook/wibot/conversation/delete", views.delete_conversation)
    app.router.add_get("/webhook/wibot/user/tokens", views.user_tokens)
    return app
