"""Application factory of the conversations service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from services.conversations import data, views
from shared import AppKeys, Settings, base_app
from shared.background import Background
from shared.contracts import (
    ConversationResponse,
    ConversationsResponse,
    CreateConversationRequest,
    DeleteConversationRequest,
    MessagesResponse,
    RenameConversationRequest,
    SuccessResponse,
    TokenUsageResponse,
    UserExportResponse,
)
from shared.openapi import Route, add_routes

DEFAULT_PORT = 8003
TAGS = ("conversations",)

ROUTES = [
    Route(
        "GET",
        "/webhook/wibot/conversations",
        views.list_conversations,
        "Conversations, les plus récentes d'abord",
        ConversationsResponse,
        query=views.ListQuery,
        errors=(400,),
        tags=TAGS,
    ),
    Route(
        "POST",
        "/webhook/wibot/conversations",
        views.create_conversation,
        "Crée une conversation",
        ConversationResponse,
        request=CreateConversationRequest,
        errors=(400, 409, 429),
        tags=TAGS,
    ),
    Route(
        "GET",
        "/webhook/wibot/conversations/{conversation_id}/messages",
        views.conversation_messages,
        "Messages d'une conversation, dans l'ordre",
        MessagesResponse,
        errors=(400, 403),
        tags=TAGS,
    ),
    Route(
        "GET",
        "/webhook/wibot/messages",
        views.messages_by_query,
        "Messages d'une conversation (autre forme)",
        MessagesResponse,
        query=views.MessagesQuery,
        errors=(400, 403),
        tags=TAGS,
    ),
    Route(
        "PATCH",
        "/webhook/wibot/conversation/rename",
        views.rename_conversation,
        "Renomme une conversation",
        ConversationResponse,
        request=RenameConversationRequest,
        errors=(400, 403, 404),
        tags=TAGS,
    ),
    Route(
        "DELETE",
        "/webhook/wibot/conversation/delete",
        views.delete_conversation,
        "Supprime une conversation et ses messages",
        SuccessResponse,
        request=DeleteConversationRequest,
        errors=(400, 403, 404),
        tags=TAGS,
    ),
    Route(
        "GET",
        "/webhook/wibot/user/tokens",
        views.user_tokens,
        "Consommation de tokens du mois",
        TokenUsageResponse,
        tags=TAGS,
    ),
    Route(
        "GET",
        "/webhook/wibot/user/export",
        views.user_export,
        "Toutes les données de l'utilisateur connecté (profil, consommation, conversations et messages), en JSON",
        UserExportResponse,
        errors=(429,),
        tags=TAGS,
    ),
]


def create_app(settings: Settings) -> web.Application:
    app = base_app(settings, service="conversations")
    add_routes(app, ROUTES)
    app.cleanup_ctx.append(retention(settings))
    return app


def retention(settings: Settings) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """The retention purge's schedule (services/conversations/data.py), stopped with the app."""

    @contextlib.asynccontextmanager
    async def _run(app: web.Application) -> AsyncIterator[None]:
        background = Background()
        background.loop(data.scheduled_purge(app[AppKeys.DB], settings), name="retention_purge")
        try:
            yield
        finally:
            await background.close()

    return _run
