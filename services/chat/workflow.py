"""Workflow chat_main, one step per node of the n8n diagram it replaces.

verify token → validate → load memory (ownership) → prepare context → reserve quota → call model
→ save exchange → respond. The quota is reserved once the prompt is known (its size is part of the
estimate); no database connection is held while the model works.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import asyncpg

from services.chat import queries
from services.chat.quota import Reservation, Usage
from shared import FORBIDDEN_CONVERSATION_MESSAGE, ApiError, Settings
from shared.contracts import ChatRequest, FileAttachment


def forbidden() -> ApiError:
    return ApiError(403, FORBIDDEN_CONVERSATION_MESSAGE, "FORBIDDEN")


def check_limits(body: ChatRequest, settings: Settings) -> list[FileAttachment]:
    """Sizes the model and the database are protected from (400 for the message, 413 for the files)."""
    if not body.message.strip():
        raise ApiError(400, "Le champ message ne peut pas être vide", "VALIDATION_ERROR")
    if len(body.message) > settings.chat_message_max_chars:
        raise ApiError(400, f"Le message dépasse {settings.chat_message_max_chars} caractères", "VALIDATION_ERROR")
    files = body.files or []
    if len(files) > settings.chat_files_max_count:
        raise ApiError(413, f"Trop de fichiers : {settings.chat_files_max_count} au maximum", "FILES_TOO_LARGE")
    total = sum(len(f.content.encode("utf-8")) for f in files)
    if total > settings.chat_files_max_bytes:
        limit_kib = settings.chat_files_max_bytes // 1024
        raise ApiError(413, f"Fichiers trop volumineux : {limit_kib} Kio au total au maximum", "FILES_TOO_LARGE")
    return files


async def load_memory(pool: asyncpg.Pool, *, conversation_id: UUID, user_id: int, window: int) -> list[dict[str, str]]:
    """The last `window` messages, oldest first; 403 if the conversation is someone else's."""
    rows = await pool.fetch(queries.MEMORY_SQL, conversation_id, user_id, window)
    if rows and rows[0]["owner"] != user_id:
        raise forbidden()
    return [{"role": row["role"], "content": row["content"]} for row in rows if row["role"] is not None]


def prepare_context(
    system_prompt: str, history: list[dict[str, str]], message: str, files: list[FileAttachment]
) -> list[dict[str, str]]:
    """System prompt, memory, then the new message with each file appended under a header naming it."""
    content = message
    for attachment in files:
        content += f"\n\n--- Fichier : {attachment.name} ---\n{attachment.content}"
    return [{"role": "system", "content": system_prompt}, *history, {"role": "user", "content": content}]


@dataclass(frozen=True, slots=True)
class Exchange:
    conversation_id: UUID
    user_id: int
    message: str
    files: list[FileAttachment]
    received_at: datetime
    reply: str
    total_tokens: int
    completion_tokens: int


async def save_exchange(pool: asyncpg.Pool, exchange: Exchange, reservation: Reservation) -> Usage:
    """Conversation, both messages and the settled usage: one statement, all of it or none of it."""
    attachments = [{"name": f.name, "size": len(f.content.encode("utf-8"))} for f in exchange.files] or None
    row = await pool.fetchrow(
        queries.SAVE_EXCHANGE_SQL,
        exchange.conversation_id,
        exchange.user_id,
        exchange.message,
        exchange.total_tokens - exchange.completion_tokens,
        attachments,
        exchange.received_at,
        exchange.reply,
        exchange.completion_tokens,
        exchange.message[:255],
        reservation.reservation_id,
        exchange.total_tokens,
        reservation.month,
    )
    if not row["owned"]:  # created by someone else while the model was answering
        raise forbidden()
    return Usage(row["used_tokens"], row["quota_tokens"])


def utc_now() -> datetime:
    """Naive UTC, the representation of the TIMESTAMP columns."""
    return datetime.now(UTC).replace(tzinfo=None)
