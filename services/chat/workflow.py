"""Workflow chat_main as two steps around the model call, each a list of steps named after the n8n diagram's nodes.

`prepare_turn` (once admitted: services/chat/admission.py): validate (identifiers refused in block mode) → load
memory (ownership) → conversation cap → check files → reserve the budget (before anything that costs) → read
attachments (identifiers refused in block mode) → consult the knowledge base (large attachments indexed, passages
retrieved) → pseudonymise → prepare context → fit the budget to the prompt. Any failure after the reservation
gives it back (but what the attachments' embeddings already cost).
The view then calls the model (whole, or streamed through services/chat/writer.py), inside
`turn.budget.spent_from_the_call(turn.prompt_tokens)`: a failed call gives the reservation back, a client that
leaves once the prompt is sent pays for the prompt.
`settle_turn`: save the exchange with the usage settled (not saved: charged all the same) → quota alerts →
the response. Shielded: a client that leaves meanwhile cannot cut it in half.
No database connection is held while the model works.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from uuid import UUID

import asyncpg

from services.chat import alerts, queries, quota
from services.chat.attachments import ReadFile, check_files, read_attachments
from services.chat.errors import MessageEmpty, MessageTooLong
from services.chat.knowledge.consult import Consulted, consult_knowledge
from services.chat.knowledge.retrieval import Scope
from services.chat.llm import ModelReply, prompt_estimate
from services.chat.privacy import Pseudonyms, pseudonymise, refuse_personal_data
from services.chat.prompt import prepare_context
from services.chat.quota import Budget, Reservation, Usage
from services.chat.resources import Chat
from shared import CurrentUser, Settings, current_month
from shared.background import Background
from shared.contracts import ChatRequest, ChatResponse
from shared.errors import ConversationIdTaken, TooManyConversations
from shared.metrics import TOKENS_SPENT
from shared.rules import at_conversation_cap


@dataclass(frozen=True, slots=True)  # pragma: no mutate (records nobody mutates: the flags are hygiene)
class Turn:
    """One message between prepare_turn and settle_turn: what the model is sent, and the quota held for it."""

    user: CurrentUser
    body: ChatRequest
    received_at: datetime
    mode: str
    model: str
    messages: list[dict[str, str]]
    budget: Budget
    knowledge: Consulted
    pseudonyms: Pseudonyms  # the reply's placeholders put back before the user sees it or it is stored

    def restored(self, reply: ModelReply) -> ModelReply:
        return replace(reply, text=self.pseudonyms.restore(reply.text))

    @property
    def max_tokens(self) -> int:
        return self.budget.reservation.max_completion_tokens

    @property
    def prompt_tokens(self) -> int:
        """The prompt as charged when the model's own count never arrives (its client left)."""
        return prompt_estimate(self.messages)


async def prepare_turn(chat: Chat, user: CurrentUser, body: ChatRequest, received_at: datetime) -> Turn:
    settings, pool = chat.settings, chat.pool
    mode = body.mode or "flash"
    check_message(body, settings)
    refuse_personal_data(settings, [body.message])
    memory = await load_memory(
        pool, conversation_id=body.conversation_id, user_id=user.user_id, window=settings.chat_memory_messages
    )
    cap = settings.max_conversations_per_user
    if memory.is_new and await at_conversation_cap(pool, user_id=user.user_id, limit=cap):
        raise TooManyConversations(cap)
    files_sent = body.files or []
    check_files(files_sent, settings)
    system_prompt = chat.prompts.render(mode)
    budget = await reserve_budget(chat, user, system_prompt, memory, body.message)
    async with budget.given_back_on_failure():
        files = await read_attachments(chat.extractor, files_sent, settings, owner=user.user_id)
        refuse_personal_data(settings, [text for read in files for text in (read.name, read.text)])
        scope = Scope(user_id=user.user_id, conversation_id=body.conversation_id)
        knowledge = await consult_knowledge(
            chat.knowledge, scope, body.message, files, budget, has_documents=memory.has_documents
        )
        sent = await pseudonymise(
            settings, memory.messages, body.message, knowledge.files, knowledge.passages,
            offload=chat.extractor.offload(user.user_id),
        )  # fmt: skip
        messages = prepare_context(
            system_prompt + sent.instructions, sent.memory, sent.message, sent.files, sent.passages
        )
        await budget.fit(quota.estimate_prompt_tokens([m["content"] for m in messages]))
    model = settings.model_for_mode(mode)
    return Turn(user, body, received_at, mode, model, messages, budget, knowledge, sent.pseudonyms)


async def settle_turn(chat: Chat, turn: Turn, reply: ModelReply) -> ChatResponse:
    """Save, charge, alert; runs to its end even when the client leaves meanwhile."""
    return await chat.background.shielded(_settle(chat, turn, reply))


async def _settle(chat: Chat, turn: Turn, reply: ModelReply) -> ChatResponse:
    settings, user, reservation = chat.settings, turn.user, turn.budget.reservation
    # Attachments' embeddings are always the user's; the question's only when KB_CHARGE_EMBEDDINGS says so.
    embeddings = turn.knowledge.embedding_tokens if settings.kb_charge_embeddings else turn.budget.embedding_tokens
    exchange = Exchange(
        conversation_id=turn.body.conversation_id,
        user_id=user.user_id,
        message=turn.body.message,
        mode=turn.mode,
        files=turn.knowledge.files,
        received_at=turn.received_at,
        reply=reply.text,
        total_tokens=reply.total_tokens + embeddings,
        completion_tokens=reply.completion_tokens,
        rag_used=bool(turn.knowledge.passages),
    )
    usage = await save_exchange(chat.pool, chat.background, exchange, reservation)
    TOKENS_SPENT.inc(exchange.total_tokens)
    await alerts.notify_quota_thresholds(
        chat.pool, chat.alerts, user_id=user.user_id, username=user.username, month=reservation.month, usage=usage
    )
    return ChatResponse(
        response=reply.text,
        tokens_used=exchange.total_tokens,
        tokens_remaining=usage.remaining,
        conversation_id=turn.body.conversation_id,
    )


async def reserve_budget(chat: Chat, user: CurrentUser, system_prompt: str, memory: Memory, message: str) -> Budget:
    """The quota reserved before any step that costs (extraction, embeddings, storage, the model): the prompt
    known so far and the reply's budget; 429 when the quota cannot hold them. The attachments' embeddings are
    added before they are made, and the budget is fitted to the whole prompt before the model is called."""
    settings = chat.settings
    reservation = await quota.reserve_quota(
        chat.pool,
        chat.background,
        user_id=user.user_id,
        month=current_month(),
        prompt_tokens=quota.estimate_prompt_tokens([system_prompt, *(m["content"] for m in memory.messages), message]),
        max_tokens=settings.mistral_max_tokens,
        default_quota=settings.default_quota_tokens,
    )
    return Budget(chat.pool, chat.background, reservation, max_tokens=settings.mistral_max_tokens)


def check_message(body: ChatRequest, settings: Settings) -> None:
    """The message's own limits; the files have theirs (check_files)."""
    if not body.message.strip():
        raise MessageEmpty
    if len(body.message) > settings.chat_message_max_chars:
        raise MessageTooLong(settings.chat_message_max_chars)


@dataclass(frozen=True, slots=True)  # pragma: no mutate (records nobody mutates: the flags are hygiene)
class Memory:
    is_new: bool  # the conversation does not exist yet: this message creates it
    messages: list[dict[str, str]]
    has_documents: bool  # attachments were indexed for it (services/chat/knowledge)


async def load_memory(pool: asyncpg.Pool, *, conversation_id: UUID, user_id: int, window: int) -> Memory:
    """The last `window` messages, oldest first; ConversationIdTaken if the id is someone else's."""
    rows = await pool.fetch(queries.MEMORY_SQL, conversation_id, user_id, window)
    first = next(iter(rows), None)  # every row carries the conversation's owner and its attachments flag
    if first is not None and first["owner"] != user_id:
        raise ConversationIdTaken
    messages = [{"role": row["role"], "content": row["content"]} for row in rows if row["role"] is not None]
    return Memory(is_new=first is None, messages=messages, has_documents=first is not None and first["has_documents"])


@dataclass(frozen=True, slots=True, kw_only=True)  # pragma: no mutate (records nobody mutates: the flags are hygiene)
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
    rag_used: bool


async def save_exchange(
    pool: asyncpg.Pool, background: Background, exchange: Exchange, reservation: Reservation
) -> Usage:
    """Conversation, both messages and the settled usage: one statement, all of it or none of it.

    The model has answered: if the exchange cannot be saved (the conversation was taken meanwhile, the database
    failed), its tokens are charged all the same, never refunded.
    """
    try:
        row = await pool.fetchrow(
            queries.SAVE_EXCHANGE.sql,
            *queries.SAVE_EXCHANGE.arguments(
                conversation_id=exchange.conversation_id,
                user_id=exchange.user_id,
                message=exchange.message,
                message_tokens=exchange.total_tokens - exchange.completion_tokens,
                attachments=[read.metadata() for read in exchange.files] or None,
                received_at=exchange.received_at,
                reply=exchange.reply,
                reply_tokens=exchange.completion_tokens,
                title=exchange.message[:255],
                reservation_id=reservation.reservation_id,
                charged_tokens=exchange.total_tokens,
                month=reservation.month,
                mode=exchange.mode,
                files_count=len(exchange.files),
                rag_used=exchange.rag_used,
            ),
        )
    except BaseException as exc:
        reason = type(exc).__name__[:50]  # pragma: no mutate (the column's width; no exception name is that long)
        await quota.charge_unsaved(pool, background, reservation, tokens=exchange.total_tokens, reason=reason)
        raise
    if not row["owned"]:  # created by someone else while the model was answering
        await quota.charge_unsaved(
            pool, background, reservation, tokens=exchange.total_tokens, reason="conversation_taken"
        )
        raise ConversationIdTaken
    return Usage(row["used_tokens"], row["quota_tokens"])
