"""Hybrid retrieval: full-text rank (Postgres, French) and vector similarity (in process), fused by rank.

Reciprocal rank fusion (score = Σ 1 / (RRF_K + rank)) needs no common scale between a ts_rank and a cosine.
A chunk found by meaning alone must reach KB_MIN_SIMILARITY; the best KB_TOP_K are kept while their text fits
KB_CONTEXT_MAX_CHARS.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from services.chat.knowledge import queries
from services.chat.knowledge.index import VectorIndex, normalized

RRF_K = 60
CANDIDATES_PER_SIDE = 20


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
) -> list[Passage]:
    """The passages for a question, best first (vector None: full text only). The conversation's own chunks
    must reach `own_min_similarity` (lower when a file was indexed by this very message)."""
    per_side = max(CANDIDATES_PER_SIDE, top_k)
    vector_hits = (
        index.search(vector, limit=per_side, min_similarity=min_similarity)
        if vector is not None and index.ready
        else []
    )
    rows = await pool.fetch(
        queries.CANDIDATES_SQL,
        question,
        scope.conversation_id,
        scope.user_id,
        per_side,
        [chunk_id for chunk_id, _ in vector_hits],
    )
    by_id = {row["chunk_id"]: row for row in rows}
    text_order = sorted((r for r in rows if r["rank"] is not None), key=lambda r: (-r["rank"], r["chunk_id"]))
    similar = [(chunk_id, score) for chunk_id, score in vector_hits if chunk_id in by_id]
    similar += conversation_hits(rows, vector, own_min_similarity)
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
    """The conversation's own chunks (their vectors came with the query), scored against the question."""
    own = [row for row in rows if row["embedding"] is not None]
    if vector is None or not own:
        return []
    dimension = len(vector)
    own = [row for row in own if len(row["embedding"]) == dimension]
    if not own:
        return []
    import numpy as np  # here, not at import: see index.py

    scores = normalized(np.array([row["embedding"] for row in own])) @ normalized(np.array([vector]))[0]
    return [(row["chunk_id"], float(score)) for row, score in zip(own, scores, strict=True) if score >= min_similarity]
