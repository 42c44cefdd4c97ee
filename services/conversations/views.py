"""Routes of workflows get_conversations and get_messages, plus the newer frontend's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from aiohttp import web
from pydantic import Field

from services.conversations import data, store
from shared import (
    FORBIDDEN_CONVERSATION_MESSAGE,
    ApiError,
    AppKeys,
    audit,
    authenticated,
    current_month,
    current_user,
    json_response,
    parse_body,
    validate,
)
from shared.contracts import (
    Conversation,
    ConversationResponse,
    ConversationsResponse,
    CreateConversationRequest,
    DeleteConversationRequest,
    Message,
    MessagesResponse,
    RenameConversationRequest,
    Request,
    SuccessResponse,
    TokenUsageResponse,
)
from shared.db import utc_now
from shared.ratelimit import check_rate


class ListQuery(Request):
    limit: int = Field(50, ge=1, le=100)
    before: UUID | None = None  # conversation_id of the last item already shown


class MessagesQuery(Request):
    conversationId: UUID


class ConversationPath(Request):
    conversation_id: UUID


@contextmanager
def domain_errors() -> Iterator[None]:
    try:
        yield
    except store.NotYourConversation:
        raise ApiError(403, FORBIDDEN_CONVERSATION_MESSAGE, "FORBIDDEN") from None
    except store.ConversationNotFound:
        raise ApiError(404, "Conversation introuvable", "NOT_FOUND") from None
    except store.UnknownCursor:
        raise ApiError(400, "Paramètre before invalide : conversation inconnue", "VALIDATION_ERROR") from None


@authenticated()
async def list_conversations(request: web.Request) -> web.Response:
    query = validate(ListQuery, dict(request.query))
    with domain_errors():
        rows = await store.list_conversations(
            request.app[AppKeys.DB], user_id=current_user(request).user_id, limit=query.limit, before=query.before
        )
    return json_response(ConversationsResponse(conversations=[Conversation.model_validate(dict(r)) for r in rows]))


async def _messages(request: web.Request, conversation_id: UUID) -> web.Response:
    with domain_errors():
        rows = await store.list_messages(
            request.app[AppKeys.DB], conversation_id=conversation_id, user_id=current_user(request).user_id
        )
    return json_response(MessagesResponse(messages=[Message.model_validate(dict(r)) for r in rows]))


@authenticated()
async def conversation_messages(request: web.Request) -> web.Response:
    path = validate(ConversationPath, {"conversation_id": request.match_info["conversation_id"]})
    return await _messages(request, path.conversation_id)


@authenticated()
async def messages_by_query(request: web.Request) -> web.Response:
    query = validate(MessagesQuery, dict(request.query))
    return await _messages(request, query.conversationId)


@authenticated()
async def create_conversation(request: web.Request) -> web.Response:
    body = await parse_body(request, CreateConversationRequest)
    settings, user_id = request.app[AppKeys.SETTINGS], current_user(request).user_id
    pool = request.app[AppKeys.DB]
    await check_rate(
        pool, user_id=user_id, action="conversation_create", per_minute=settings.conversation_creations_per_minute
    )
    with domain_errors():
        row = await store.create_conversation(
            pool,
            user_id=user_id,
            conversation_id=body.conversation_id,
            title=body.title,
            max_per_user=settings.max_conversations_per_user,
        )
    return json_response(ConversationResponse(conversation=Conversation.model_validate(row)))


@authenticated()
async def rename_conversation(request: web.Request) -> web.Response:
    body = await parse_body(request, RenameConversationRequest)
    with domain_errors():
        row = await store.rename_conversation(
            request.app[AppKeys.DB],
            conversation_id=body.conversationId,
            user_id=current_user(request).user_id,
            title=body.title,
        )
    return json_response(ConversationResponse(conversation=Conversation.model_validate(row)))


@authenticated()
async def delete_conversation(request: web.Request) -> web.Response:
    body = await parse_body(request, DeleteConversationRequest)
    with domain_errors():
        await store.delete_conversation(
            request.app[AppKeys.DB], conversation_id=body.conversationId, user_id=current_user(request).user_id
        )
    return json_response(SuccessResponse())


@authenticated()
async def user_tokens(request: web.Request) -> web.Response:
    settings = request.app[AppKeys.SETTINGS]
    used, quota, source = await store.month_usage(
        request.app[AppKeys.DB],
        user_id=current_user(request).user_id,
        month=current_month(),
        default_quota=settings.default_quota_tokens,
    )
    return json_response(token_usage(used, quota, source))


def token_usage(used: int, quota: int, source: str) -> TokenUsageResponse:
    exact = used * 100 / quota if quota > 0 else 100.0
    status = "good" if exact < 50 else "medium" if exact <= 80 else "critical"
    return TokenUsageResponse(
        used_tokens=used,
        quota_tokens=quota,
        tokens_remaining=max(quota - used, 0),
        tokens_percentage=round(exact, 2),
        status=status,
        quota_source=source,
    )


@authenticated()
async def user_export(request: web.Request) -> web.StreamResponse:
    """The caller's own data as one JSON document, streamed; each export is in the audit trail."""
    pool, settings, user = request.app[AppKeys.DB], request.app[AppKeys.SETTINGS], current_user(request)
    await check_rate(pool, user_id=user.user_id, action="export", per_minute=settings.data_exports_per_minute)
    await audit.record(pool, audit.DATA_EXPORT, actor_id=user.user_id, target=str(user.user_id), request=request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "Content-Disposition": f'attachment; filename="wibot-export-{user.user_id}.json"',
            "Cache-Control": "no-store",
        }
    )
    pieces = data.export_user(pool, user.user_id, exported_at=utc_now())
    first = await anext(pieces)  # before the status is sent: a database failure is still the usual envelope
    await response.prepare(request)
    await response.write(first)
    async for piece in pieces:
        await response.write(piece)
    await response.write_eof()
    return response
