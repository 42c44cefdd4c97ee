"""Hybrid retrieval: full-text rank (Postgres, French) and vector similarity (in process), fused by rank.

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
from services.chat.knowledge.index import VectorIndex, normalized

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
    index: VectorIndex,
    *,
    scope: Scope,
    question: str,
    vector: list[float] | None,
    top_k: int,
    min_similarity: float,
    own_min_similarity: float,
    max_chars: int,
    timeout_s: float,
) -> list[Passage]:
    """The passages for a question, best first (vector None: full text only). The conversation's own chunks
    must reach `own_min_similarity` (lower when a file was indexed by this very message). TimeoutError past
    `timeout_s` (the statement is cancelled on the server, its connection back in the pool)."""
    per_side = max(CANDIDATES_PER_SIDE, top_k)
    vector_hits = (
        index.search(vector, limit=per_side, min_similarity=min_similarity)
        if vector is not None and index.ready
        else []
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
    by_id = {row["chunk_id"]: row for row in rows}
    text_order = sorted((r for r in rows if r["rank"] is not None), key=lambda r: (-r["rank"], r["chunk_id"]))
    similar = [(chunk_id, score) for chunk_id, score in vector_hits if chunk_id in by_id]
    similar += await asyncio.to_thread(conversation_hits, rows, vector, own_min_similarity)
    similar.sort(key=lambda hit: (-hit[1], hit[0]))
    fused: dict[int, float] = {}
    for rank, row in enumerate(text_order[:per_side], start=1):
        fused[row["chunk_id"]] = fused.get(row["chunk_id"], 0.0) + 1 / (RRF_K + rank)
    for rank, (chunk_id, _) in enumerate(similar[:per_side], start=1):
        fused[chunk_id] = fused.get(chunk_id, 0.0) + 1 / (RRF_K + rank)
    passages: list[Passage] = []
    left = max_chars
    for chunk_id, score in sorted(fused.items(), key=lambda item: (-item[1], item[0])):
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
