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
# one of its words (ts_rank_cd costs ~35 µs a chunk of 150 words: 1,000 candidates were 36 ms at 100,000 chunks).
TEXT_CANDIDATES = 300
# A conversation's own chunks read per message at most, with their vectors (the default conversation cap,
# KB_CONVERSATION_MAX_CHUNKS: 16 MB of mistral-embed vectors at most in one request).
OWN_CHUNKS_READ = 4_000
OWN_TEXT_CANDIDATES = 200
# Words of the question the full-text side searches for: a 3,500-word message made a query of 3,500 terms that
# every index lookup and every rank had to walk (60 s by hand); the embedding still reads the whole question.
TEXT_QUERY_WORDS = 64
# The any-word search's words: at most this many, each in fewer chunks than this (rarest first): its index scan
# reads at most ANY_WORDS × ANY_WORD_MAX_CHUNKS entries, at 10,000 chunks as at a million.
ANY_WORDS, ANY_WORD_MAX_CHUNKS = 6, 5_000
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
    search = Search(scope, question, vector, per_side, min_similarity, own_min_similarity, timeout_s)
    if isinstance(index, VectorIndex):
        rows, similar = await candidates_in_process(pool, index, search)
    else:
        rows, similar = await candidates_in_database(pool, search, ef_search)
    return fused(rows, similar, per_side=per_side, top_k=top_k, max_chars=max_chars)


Hits = list[tuple[int, float]]  # (chunk_id, cosine)


@dataclass(frozen=True, slots=True)
class Search:
    scope: Scope
    question: str
    vector: list[float] | None
    per_side: int
    site_min_similarity: float
    own_min_similarity: float
    timeout_s: float

    def arguments(self, vector_side: object) -> tuple[object, ...]:
        """The candidates statements' parameters; $5 is the path's: the site's vector hits, or the vector."""
        return (
            text_query(self.question),
            self.scope.conversation_id,
            self.scope.user_id,
            self.per_side,
            vector_side,
            TEXT_CANDIDATES,
            OWN_CHUNKS_READ,
            OWN_TEXT_CANDIDATES,
            ANY_WORD_MAX_CHUNKS,
            ANY_WORDS,
        )


async def candidates_in_process(
    pool: asyncpg.Pool, index: VectorIndex, search: Search
) -> tuple[list[asyncpg.Record], Hits]:
    vector = search.vector
    vector_hits = (
        index.search(vector, limit=search.per_side, min_similarity=search.site_min_similarity)
        if vector is not None and index.ready
        else []
    )
    hit_ids = [chunk_id for chunk_id, _ in vector_hits]
    rows = await fetch_candidates(pool, queries.CANDIDATES_SQL, search.arguments(hit_ids), search.timeout_s, 0)
    found = {row["chunk_id"] for row in rows}
    similar = [(chunk_id, score) for chunk_id, score in vector_hits if chunk_id in found]
    similar += await asyncio.to_thread(conversation_hits, rows, vector, search.own_min_similarity)
    return rows, similar


async def candidates_in_database(
    pool: asyncpg.Pool, search: Search, ef_search: int
) -> tuple[list[asyncpg.Record], Hits]:
    vector = search.vector
    if vector is not None and len(vector) != VECTOR_DIMENSION:
        log.warning("kb_dimension_mismatch", query=len(vector), index=VECTOR_DIMENSION, fallback="full_text")
        vector = None
    rows = await fetch_candidates(
        pool, queries.VECTOR_CANDIDATES_SQL, search.arguments(vector), search.timeout_s, ef_search
    )
    similar = [
        (row["chunk_id"], float(row["similarity"]))
        for row in rows
        if row["similarity"] is not None
        and row["similarity"] >= (search.own_min_similarity if row["own"] else search.site_min_similarity)
    ]
    return rows, similar


async def fetch_candidates(
    pool: asyncpg.Pool, statement: str, arguments: tuple[object, ...], timeout_s: float, ef_search: int
) -> list[asyncpg.Record]:
    """The candidates statement in a transaction of its own, with its planner settings (SET_RETRIEVAL_PLAN_SQL);
    cancelled on the server past `timeout_s` (TimeoutError), its connection back in the pool."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(queries.SET_RETRIEVAL_PLAN_SQL, str(max(ef_search, 1)))
        return list(await conn.fetch(statement, *arguments, timeout=timeout_s))


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
