"""Hybrid retrieval: full-text rank (Postgres, French) and vector similarity, fused by rank. The similarity is the
database's where it has pgvector (one statement: HNSW over the site's chunks, exact over the conversation's own),
else the process's (index.VectorIndex for the site's chunks, numpy for the conversation's own).

Reciprocal rank fusion (score = Σ 1 / (RRF_K + rank)) needs no common scale between a ts_rank and a cosine.
A chunk found by meaning alone must reach KB_MIN_SIMILARITY; the best KB_TOP_K are kept while their text fits
KB_CONTEXT_MAX_CHARS.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from services.chat.knowledge import queries
from services.chat.knowledge.index import SiteIndex, VectorIndex, normalized
from shared import get_logger

log = get_logger("wibot.knowledge")

RRF_K = 60
CANDIDATES_PER_SIDE = 20
# Full-text matches ranked per side at most: a question of common words ranks these, never every chunk holding
# one of its words.
TEXT_CANDIDATES = 1_000
# A conversation's own chunks read per message at most, with their vectors (the default conversation cap,
# KB_CONVERSATION_MAX_CHUNKS: 16 MB of mistral-embed vectors at most in one request).
OWN_CHUNKS_READ = 4_000
OWN_TEXT_CANDIDATES = 200
# Words of the question the full-text side searches for: a 3,500-word message made a query of 3,500 terms that
# every index lookup and every rank had to walk (60 s by hand); the embedding still reads the whole question.
TEXT_QUERY_WORDS = 64
# The pgvector column's dimension (migration 0016: mistral-embed's).
VECTOR_DIMENSION = 1024


def text_query(question: str) -> str:
    """The question as the full-text side searches it: its first TEXT_QUERY_WORDS distinct words."""
    words = list(dict.fromkeys(question.split()))
    return " ".join(words[:TEXT_QUERY_WORDS])


@dataclass(frozen=True, slots=True)
class Passage:
    chunk_id: int
    source: str
    content: str
    score: float


@dataclass(frozen=True, slots=True)
class Scope:
    """What a message may read: the site's documents and its own conversation's attachments."""

    user_id: int
    conversation_id: UUID


async def retrieve(
    pool: asyncpg.Pool,
    index: SiteIndex,
    *,
    scope: Scope,
    question: str,
    vector: list[float] | None,
    top_k: int,
    min_similarity: float,
    own_min_similarity: float,
    max_chars: int,
    timeout_s: float,
    ef_search: int,
) -> list[Passage]:
    """The passages for a question, best first (vector None: full text only). The conversation's own chunks
    must reach `own_min_similarity` (lower when a file was indexed by this very message). TimeoutError past
    `timeout_s` (the statement is cancelled on the server, its connection back in the pool)."""
    per_side = max(CANDIDATES_PER_SIDE, top_k)
    thresholds = (min_similarity, own_min_similarity)
    if isinstance(index, VectorIndex):
        rows, similar = await candidates_in_process(
            pool, index, scope, question, vector, per_side, thresholds, timeout_s
        )
    else:
        rows, similar = await candidates_in_database(
            pool, scope, question, vector, per_side, thresholds, timeout_s, ef_search
        )
    return fused(rows, similar, per_side=per_side, top_k=top_k, max_chars=max_chars)


Hits = list[tuple[int, float]]  # (chunk_id, cosine)


async def candidates_in_process(
    pool: asyncpg.Pool,
    index: VectorIndex,
    scope: Scope,
    question: str,
    vector: list[float] | None,
    per_side: int,
    thresholds: tuple[float, float],
    timeout_s: float,
) -> tuple[list[asyncpg.Record], Hits]:
    site_min, own_min = thresholds
    vector_hits = (
        index.search(vector, limit=per_side, min_similarity=site_min) if vector is not None and index.ready else []
    )
    rows = await pool.fetch(
        queries.CANDIDATES_SQL,
        text_query(question),
        scope.conversation_id,
        scope.user_id,
        per_side,
        [chunk_id for chunk_id, _ in vector_hits],
        TEXT_CANDIDATES,
        OWN_CHUNKS_READ,
        OWN_TEXT_CANDIDATES,
        timeout=timeout_s,
    )
    found = {row["chunk_id"] for row in rows}
    similar = [(chunk_id, score) for chunk_id, score in vector_hits if chunk_id in found]
    similar += await asyncio.to_thread(conversation_hits, rows, vector, own_min)
    return rows, similar


async def candidates_in_database(
    pool: asyncpg.Pool,
    scope: Scope,
    question: str,
    vector: list[float] | None,
    per_side: int,
    thresholds: tuple[float, float],
    timeout_s: float,
    ef_search: int,
) -> tuple[list[asyncpg.Record], Hits]:
    if vector is not None and len(vector) != VECTOR_DIMENSION:
        log.warning("kb_dimension_mismatch", query=len(vector), index=VECTOR_DIMENSION, fallback="full_text")
        vector = None
    site_min, own_min = thresholds
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(queries.SET_HNSW_SEARCH_SQL, str(ef_search))
        rows = await conn.fetch(
            queries.VECTOR_CANDIDATES_SQL,
            text_query(question),
            scope.conversation_id,
            scope.user_id,
            per_side,
            vector,
            TEXT_CANDIDATES,
            OWN_CHUNKS_READ,
            OWN_TEXT_CANDIDATES,
            timeout=timeout_s,
        )
    similar = [
        (row["chunk_id"], float(row["similarity"]))
        for row in rows
        if row["similarity"] is not None and row["similarity"] >= (own_min if row["own"] else site_min)
    ]
    return rows, similar


def fused(rows: list[asyncpg.Record], similar: Hits, *, per_side: int, top_k: int, max_chars: int) -> list[Passage]:
    """Reciprocal rank fusion of the full-text order and the similarity order; the best `top_k` passages while
    their text fits `max_chars`."""
    by_id = {row["chunk_id"]: row for row in rows}
    text_order = sorted((r for r in rows if r["rank"] is not None), key=lambda r: (-r["rank"], r["chunk_id"]))
    similar = sorted(similar, key=lambda hit: (-hit[1], hit[0]))
    scores: dict[int, float] = {}
    for rank, row in enumerate(text_order[:per_side], start=1):
        scores[row["chunk_id"]] = scores.get(row["chunk_id"], 0.0) + 1 / (RRF_K + rank)
    for rank, (chunk_id, _) in enumerate(similar[:per_side], start=1):
        scores[chunk_id] = scores.get(chunk_id, 0.0) + 1 / (RRF_K + rank)
    passages: list[Passage] = []
    left = max_chars
    for chunk_id, score in sorted(scores.items(), key=lambda item: (-item[1], item[0])):
        row = by_id[chunk_id]
        if len(passages) == top_k or len(row["content"]) > left:
            break
        passages.append(Passage(chunk_id, row["source"], row["content"], score))
        left -= len(row["content"])
    return passages


def conversation_hits(
    rows: list[asyncpg.Record], vector: list[float] | None, min_similarity: float
) -> list[tuple[int, float]]:
    """The conversation's own chunks (their vectors came with the query), scored against the question. Run off
    the event loop: 4,000 vectors are tens of milliseconds of work that other users' requests must not wait for."""
    if vector is None:
        return []
    dimension = len(vector)
    # array_send of a one-dimensional real[] of `dimension` elements: a 20-byte header, then (length, value).
    size = 20 + 8 * dimension
    own = [row for row in rows if row["embedding"] is not None and len(row["embedding"]) == size]
    if not own:
        return []
    import numpy as np  # here, not at import: see index.py

    blob = np.frombuffer(b"".join(row["embedding"] for row in own), dtype=np.uint8).reshape(len(own), size)
    header = blob[:, :8].copy().view(">i4")  # ndim, has-nulls: written by ingestion as 1, 0
    values = blob[:, 20:].copy().view(">f4")[:, 1::2].astype(np.float32)
    scores = normalized(values) @ normalized(np.array([vector]))[0]
    usable = (header[:, 0] == 1) & (header[:, 1] == 0)
    return [
        (row["chunk_id"], float(score))
        for row, score, ok in zip(own, scores, usable, strict=True)
        if ok and score >= min_similarity
    ]
