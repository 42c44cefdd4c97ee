"""Workflow chat_main, one step per node of the n8n diagram it replaces (`run_chat` reads top to bottom).

verify token (the view's decorator) → validate → load memory (ownership) → read attachments → consult the
knowledge base (large attachments indexed, passages retrieved) → prepare context → reserve quota → call model
(no answer: refund) → save exchange (not saved: charged all the same) → respond.
The quota is reserved once the prompt is known (its size, extracted files included, is the estimate); no
database connection is held while the model works. How the model is called is the one thing a streamed
reply changes (services/chat/streaming.py passes its own `call_model`); every other step is this one.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from uuid import UUID

import asyncpg
from mistralai.client import Mistral

from services.chat import alerts, llm, queries, quota
from services.chat.attachments import Extractor, ReadFile, check_files, read_attachments
from services.chat.knowledge.base import KnowledgeBase
from services.chat.knowledge.consult import consult_knowledge
from services.chat.knowledge.retrieval import Passage, Scope
from services.chat.prompt import PromptTemplates
from services.chat.quota import Reservation, Usage
from shared import ApiError, CurrentUser, Settings, current_month
from shared.contracts import ChatRequest, ChatResponse
from shared.errors import conversation_id_taken, too_many_conversations
from shared.metrics import TOKENS_SPENT
from shared.ratelimit import check_rate


class CallModel(Protocol):
    """The model step: the whole reply at once (llm.complete) or streamed to the client (streaming.py)."""

    def __call__(self, *, model: str, messages: list[dict[str, str]], max_tokens: int) -> Awaitable[llm.ModelReply]: ...


@dataclass(frozen=True, slots=True)  # pragma: no mutate (records nobody mutates: the flags are hygiene)
class ChatDeps:
    """What the workflow works with, taken from the application once per request."""

    settings: Settings
    pool: asyncpg.Pool
    llm_client: Mistral
    prompts: PromptTemplates
    alert_sender: alerts.AlertSender
    extractor: Extractor
    knowledge: KnowledgeBase


async def run_chat(
    deps: ChatDeps, user: CurrentUser, body: ChatRequest, received_at: datetime, call_model: CallModel | None = None
) -> ChatResponse:
    settings, pool = deps.settings, deps.pool
    mode = body.mode or "flash"
    check_message(body, settings)
    await check_rate(pool, user_id=user.user_id, action="chat", per_minute=settings.chat_requests_per_minute)
    memory = await load_memory(
        pool, conversation_id=body.conversation_id, user_id=user.user_id, window=settings.chat_memory_messages
    )
    if memory.is_new:
        await check_conversation_cap(pool, user_id=user.user_id, limit=settings.max_conversations_per_user)
    files_sent = body.files or []
    check_files(files_sent, settings)
    system_prompt = deps.prompts.render(mode)
    budget = await reserve_budget(deps, user, system_prompt, memory, body.message)
    try:
        files = await read_attachments(deps.extractor, files_sent, settings, owner=user.user_id)
        scope = Scope(user_id=user.user_id, conversation_id=body.conversation_id)
        knowledge = await consult_knowledge(
            deps.knowledge, scope, body.message, files, budget, has_documents=memory.has_documents
        )
        messages = prepare_context(system_prompt, memory.messages, body.message, knowledge.files, knowledge.passages)
        reservation = await budget.fit(quota.estimate_prompt_tokens([m["content"] for m in messages]))
        call_model = call_model or functools.partial(llm.complete, deps.llm_client, settings)
        reply = await call_model(
            model=settings.model_for_mode(mode),
            messages=messages,
            max_tokens=reservation.max_completion_tokens,
        )
    except BaseException:  # no answer (a step refused, the model failed, or the client left first): give it back
        await budget.give_back()
        raise
    # Attachments' embeddings are always the user's; the question's only when KB_CHARGE_EMBEDDINGS says so.
    charged_embeddings = knowledge.embedding_tokens if settings.kb_charge_embeddings else budget.embedding_tokens
    exchange = Exchange(
        body.conversation_id,
        user.user_id,
        body.message,
        mode,
        knowledge.files,
        received_at,
        reply.text,
        reply.total_tokens + charged_embeddings,
        reply.completion_tokens,
        rag_used=bool(knowledge.passages),
    )
    usage = await save_exchange(pool, exchange, reservation)
    TOKENS_SPENT.inc(exchange.total_tokens)
    await alerts.notify_quota_thresholds(
        pool, deps.alert_sender, user_id=user.user_id, username=user.username, month=reservation.month, usage=usage
    )
    return ChatResponse(
        response=reply.text,
        tokens_used=exchange.total_tokens,
        tokens_remaining=usage.remaining,
        conversation_id=body.conversation_id,
    )


async def reserve_budget(
    deps: ChatDeps, user: CurrentUser, system_prompt: str, memory: Memory, message: str
) -> quota.Budget:
    """The quota reserved before any step that costs (extraction, embeddings, storage, the model): the prompt
    known so far and the reply's budget; 429 when the quota cannot hold them. The attachments' embeddings are
    added before they are made, and the budget is fitted to the whole prompt before the model is called."""
    settings = deps.settings
    reservation = await quota.reserve_quota(
        deps.pool,
        user_id=user.user_id,
        month=current_month(),
        prompt_tokens=quota.estimate_prompt_tokens([system_prompt, *(m["content"] for m in memory.messages), message]),
        max_tokens=settings.mistral_max_tokens,
        default_quota=settings.default_quota_tokens,
    )
    return quota.Budget(deps.pool, reservation, max_tokens=settings.mistral_max_tokens)


def check_message(body: ChatRequest, settings: Settings) -> None:
    """The message's own limits (400); the files have theirs (read_attachments)."""
    if not body.message.strip():
        raise ApiError(400, "Le champ message ne peut pas être vide", "VALIDATION_ERROR")
    if len(body.message) > settings.chat_message_max_chars:
        raise ApiError(400, f"Le message dépasse {settings.chat_message_max_chars} caractères", "VALIDATION_ERROR")


@dataclass(frozen=True, slots=True)  # pragma: no mutate (records nobody mutates: the flags are hygiene)
class Memory:
    is_new: bool  # the conversation does not exist yet: this message creates it
    messages: list[dict[str, str]]
    has_documents: bool  # attachments were indexed for it (services/chat/knowledge)


async def load_memory(pool: asyncpg.Pool, *, conversation_id: UUID, user_id: int, window: int) -> Memory:
    """The last `window` messages, oldest first; 409 if the conversation id is someone else's."""
    rows = await pool.fetch(queries.MEMORY_SQL, conversation_id, user_id, window)
    first = next(iter(rows), None)  # every row carries the conversation's owner and its attachments flag
    if first is not None and first["owner"] != user_id:
        raise conversation_id_taken()
    messages = [{"role": row["role"], "content": row["content"]} for row in rows if row["role"] is not None]
    return Memory(is_new=first is None, messages=messages, has_documents=first is not None and first["has_documents"])


async def check_conversation_cap(pool: asyncpg.Pool, *, user_id: int, limit: int) -> None:
    if limit and await pool.fetchval(queries.COUNT_CONVERSATIONS_SQL, user_id) >= limit:
        raise too_many_conversations(limit)


def prepare_context(
    system_prompt: str,
    history: list[dict[str, str]],
    message: str,
    files: list[ReadFile],
    passages: list[Passage],
) -> list[dict[str, str]]:
    """System prompt (with the knowledge base's passages, each under its source), memory, then the new message
    with each file's text under a header naming it."""
    if passages:
        system_prompt += "\n\n" + knowledge_section(passages)
    content = message
    for read in files:
        content += f"\n\n--- Fichier : {read.name} ---\n{read.text}"
        if read.cut_note:
            content += f"\n{read.cut_note}" if read.text else read.cut_note
    return [{"role": "system", "content": system_prompt}, *history, {"role": "user", "content": content}]


KNOWLEDGE_INSTRUCTIONS = """\
## Documentation WIDIP (base de connaissances)
Les extraits ci-dessous viennent de la documentation de WIDIP ou des fichiers de cette conversation. Appuie-toi \
dessus quand ils répondent à la question et cite chaque source utilisée entre crochets, par exemple \
[Source : procedure-vpn.md]. S'ils ne suffisent pas, dis-le plutôt que d'inventer."""


def knowledge_section(passages: list[Passage]) -> str:
    parts = [KNOWLEDGE_INSTRUCTIONS]
    for number, passage in enumerate(passages, start=1):
        parts.append(f"[{number}] Source : {passage.source}\n{passage.content}")
    return "\n\n".join(parts)


@dataclass(frozen=True, slots=True)  # pragma: no mutate (records nobody mutates: the flags are hygiene)
class Exchange:
    conversation_id: UUID
    user_id: int
    message: str
    mode: str
    files: list[ReadFile]
    received_at: datetime
    reply: str
    total_tokens: int
    completion_tokens: int
    rag_used: bool = False  # pragma: no mutate (run_chat, its only builder, always says)


async def save_exchange(pool: asyncpg.Pool, exchange: Exchange, reservation: Reservation) -> Usage:
    """Conversation, both messages and the settled usage: one statement, all of it or none of it.

    The model has answered: if the exchange cannot be saved (the conversation was taken meanwhile, the database
    failed, the client left), its tokens are charged all the same, never refunded.
    """
    try:
        row = await pool.fetchrow(
            queries.SAVE_EXCHANGE_SQL,
            exchange.conversation_id,
            exchange.user_id,
            exchange.message,
            exchange.total_tokens - exchange.completion_tokens,
            [read.metadata() for read in exchange.files] or None,
            exchange.received_at,
            exchange.reply,
            exchange.completion_tokens,
            exchange.message[:255],
            reservation.reservation_id,
            exchange.total_tokens,
            reservation.month,
            exchange.mode,
            len(exchange.files),
            exchange.rag_used,
        )
    except BaseException as exc:
        reason = type(exc).__name__[:50]  # pragma: no mutate (the column's width; no exception name is that long)
        await quota.charge_unsaved(pool, reservation, tokens=exchange.total_tokens, reason=reason)
        raise
    if not row["owned"]:  # created by someone else while the model was answering
        await quota.charge_unsaved(pool, reservation, tokens=exchange.total_tokens, reason="conversation_taken")
        raise conversation_id_taken()
    return Usage(row["used_tokens"], row["quota_tokens"])


def utc_now() -> datetime:
    """Naive UTC, the representation of the TIMESTAMP columns."""
    return datetime.now(UTC).replace(tzinfo=None)
