"""Chat step `consult_knowledge`: the passages of the knowledge base that answer this message.

Attachments too long for the message's character budget are indexed for their conversation (chunked,
embedded, stored with its id and the user's) instead of being cut; they are then retrieved like the site's
documents, by this conversation only, this message and the next. If indexing fails (the embedding model is
down), the file is cut as before; if the question cannot be embedded, the full-text search answers alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import asyncpg

from services.chat.attachments import ReadFile, cut, place_in_budget
from services.chat.errors import ConversationFull, ModelFailed, UserAttachmentsFull
from services.chat.french import thousands
from services.chat.knowledge import queries
from services.chat.knowledge.base import KnowledgeBase
from services.chat.knowledge.chunks import split
from services.chat.knowledge.embeddings import embed
from services.chat.knowledge.retrieval import Passage, Scope, retrieve
from services.chat.knowledge.store import write_chunks
from services.chat.quota import Budget, estimate_prompt_tokens, tokens_for_chars
from shared import get_logger
from shared.lanes import LaneFull
from shared.metrics import KNOWLEDGE_RETRIEVALS

log = get_logger("wibot.knowledge")


@dataclass(frozen=True, slots=True)
class Consulted:
    files: list[ReadFile]  # as the prompt shows them: whole, cut, or replaced by a note once indexed
    passages: list[Passage]
    embedding_tokens: int


async def consult_knowledge(
    kb: KnowledgeBase, scope: Scope, question: str, files: list[ReadFile], budget: Budget, *, has_documents: bool
) -> Consulted:
    settings = kb.settings
    files, left = await place_files(kb, scope, files, budget)
    tokens = budget.embedding_tokens
    indexed = any(read.indexed for read in files)
    top_k, max_chars, own_min_similarity = settings.kb_top_k, settings.kb_context_max_chars, settings.kb_min_similarity
    if indexed:  # the file's passages take the room it would have had, whatever the question's words
        top_k += left // settings.kb_chunk_chars
        max_chars += left
        own_min_similarity = -1.0
    if settings.kb_top_k == 0 or not (kb.index.size or not kb.index.ready or has_documents or indexed):
        return Consulted(files, [], tokens)  # nothing to search: no embedding call
    vector: list[float] | None = None
    try:
        embedded = await embed(
            kb.client, settings, [question], purpose="question", offload=kb.extractor.offload(scope.user_id)
        )
        vector, tokens = embedded.vectors[0], tokens + embedded.tokens
    except ModelFailed as exc:
        log.warning("kb_question_not_embedded", fault=exc.fault, fallback="full_text")
    try:
        async with kb.retrievals.slot(scope.user_id):
            passages = await retrieve(
                kb.pool,
                kb.index,
                scope=scope,
                question=question,
                vector=vector,
                top_k=top_k,
                min_similarity=settings.kb_min_similarity,
                own_min_similarity=own_min_similarity,
                max_chars=max_chars,
                timeout_s=settings.kb_retrieval_timeout_s,
                ef_search=settings.kb_hnsw_ef_search,
            )
    except TimeoutError:  # a slow retrieval costs its own message its passages, never a pool connection held
        log.warning("kb_retrieval_timeout", timeout_s=settings.kb_retrieval_timeout_s, fallback="no_passages")
        KNOWLEDGE_RETRIEVALS.labels("timeout").inc()
        return Consulted(files, [], tokens)
    except LaneFull:  # this user already has retrievals running and waiting: this message goes without
        log.warning("kb_retrieval_busy", user_id=scope.user_id, fallback="no_passages")
        KNOWLEDGE_RETRIEVALS.labels("busy").inc()
        return Consulted(files, [], tokens)
    KNOWLEDGE_RETRIEVALS.labels("used" if passages else "nothing_relevant").inc()
    log.info("kb_retrieved", passages=len(passages), sources=sorted({p.source for p in passages}), vector=bool(vector))
    return Consulted(files, passages, tokens)


async def place_files(
    kb: KnowledgeBase, scope: Scope, files: list[ReadFile], budget: Budget
) -> tuple[list[ReadFile], int]:
    """Files in order while the budget lasts; a file that does not fit is indexed (or cut when it cannot be).
    Returns the files as the prompt shows them and the budget of characters left."""
    chars = kb.settings.chat_files_max_chars
    retrieval_off = kb.settings.kb_top_k == 0  # an indexed file would never be read back: cut it instead
    if not kb.settings.kb_index_attachments or retrieval_off or sum(len(read.text) for read in files) <= chars:
        placed, _ = await place_in_budget(files, chars)
        return placed, 0

    async def index_instead(read: ReadFile, left: int) -> tuple[ReadFile, int]:
        try:
            indexed_chars = await index_attachment(kb, scope, read, budget, left=left)
        except NotIndexed as why:
            log.warning("attachment_not_indexed", file_type=read.type, reason=why.reason, fallback="cut")
            return cut(read, keep=left, limit=left), 0
        note = (
            f"[Fichier de {thousands(read.chars)} caractères, trop long pour être lu en entier : il est indexé pour "
            "cette conversation et ses passages utiles à la question figurent dans la documentation fournie.]"
        )
        if indexed_chars < read.chars:
            note += f"\n[Seuls les {thousands(indexed_chars)} premiers caractères environ ont été indexés.]"
        return dataclasses.replace(read, text="", cut_note=note, indexed=True), left

    return await place_in_budget(files, chars, index_instead)


class NotIndexed(Exception):
    """The attachment is cut instead of indexed: the user's quota cannot hold its embedding, the embedding model
    or the extraction pool could not serve it. (A cap reached is the user's to know: an error, never a cut.)"""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def index_attachment(kb: KnowledgeBase, scope: Scope, read: ReadFile, budget: Budget, *, left: int) -> int:
    """One attachment's chunks stored for its conversation; returns about how many of its characters they hold.
    As many chunks as KB_ATTACHMENT_MAX_CHUNKS, the conversation's and the user's caps and the user's quota allow
    (ConversationFull / UserAttachmentsFull when a cap is already reached, NotIndexed when the quota cannot hold
    one chunk); their embedding, and the passages they may bring to the prompt (`left` characters of files' room
    and KB_CONTEXT_MAX_CHARS), are held on the quota before the embedding is asked for, and its cost added to the
    budget."""
    settings = kb.settings
    room = await room_for_chunks(kb, scope)
    try:
        chunks: list[str] = await kb.extractor.call(
            split, read.text, chars=settings.kb_chunk_chars, overlap=settings.kb_chunk_overlap, owner=scope.user_id
        )  # off the event loop: a 10 MB text is a few hundred milliseconds of cutting
    except (LaneFull, TimeoutError) as exc:
        raise NotIndexed(type(exc).__name__) from None
    whole = len(chunks)
    chunks = chunks[: min(settings.kb_attachment_max_chunks, room)]
    passages = tokens_for_chars(left + settings.kb_context_max_chars)
    chunks = chunks[: affordable(chunks, await budget.room() - passages)]
    if not chunks or not await budget.cover(estimate_prompt_tokens(chunks) + passages):
        raise NotIndexed("quota")
    try:
        embedded = await embed(
            kb.client, settings, chunks, purpose="attachment", offload=kb.extractor.offload(scope.user_id)
        )
    except ModelFailed as exc:  # the embedding model is away: the file is cut as before
        raise NotIndexed(f"embedding {exc.fault}") from None
    budget.embedding_tokens += embedded.tokens
    digest = hashlib.sha256(read.text.encode("utf-8", "surrogatepass")).hexdigest()
    async with kb.pool.acquire() as conn, conn.transaction():
        await conn.execute(queries.LOCK_USER_ATTACHMENTS_SQL, scope.user_id)
        if await room_for_chunks(kb, scope, conn) < len(chunks):  # another request of this user took it meanwhile
            raise UserAttachmentsFull(settings.kb_user_max_chunks)
        document_id = await conn.fetchval(
            queries.INSERT_CONVERSATION_DOCUMENT_SQL,
            read.name,
            digest,
            len(chunks),
            scope.conversation_id,
            scope.user_id,
        )
        await write_chunks(conn, document_id, chunks, embedded.vectors)
    complete = len(chunks) == whole
    indexed_chars = read.chars if complete else len(chunks) * (settings.kb_chunk_chars - settings.kb_chunk_overlap)
    log.info("attachment_indexed", file_type=read.type, chars=read.chars, chunks=len(chunks), complete=complete)
    return indexed_chars


async def room_for_chunks(kb: KnowledgeBase, scope: Scope, conn: asyncpg.Connection | None = None) -> int:
    """Chunks this conversation and this user may still index (ConversationFull / UserAttachmentsFull when either
    has none left)."""
    settings = kb.settings
    row = await (conn or kb.pool).fetchrow(queries.INDEXED_CHUNKS_SQL, scope.conversation_id, scope.user_id)
    room = settings.kb_attachment_max_chunks
    if settings.kb_conversation_max_chunks:
        if row["conversation"] >= settings.kb_conversation_max_chunks:
            raise ConversationFull(settings.kb_conversation_max_chunks)
        room = min(room, settings.kb_conversation_max_chunks - row["conversation"])
    if settings.kb_user_max_chunks:
        if row["user_total"] >= settings.kb_user_max_chunks:
            raise UserAttachmentsFull(settings.kb_user_max_chunks)
        room = min(room, settings.kb_user_max_chunks - row["user_total"])
    return int(room)


def affordable(chunks: list[str], tokens: int) -> int:
    """How many of the first chunks an embedding budget of `tokens` covers (by the quota's estimate)."""
    count = 0
    for chunk in chunks:
        tokens -= tokens_for_chars(len(chunk))
        if tokens < 0:
            break
        count += 1
    return count
