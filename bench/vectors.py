"""Synthetic chunks for the knowledge-base benchmark, written fast: 1024-dimension vectors with the structure of
text embeddings, subjects within subjects (a topic, one of its subtopics, then the chunk's own noise: uniform noise
in 1024 dimensions would be the one case where every point is as near as any other and no index helps), sent by a
binary COPY built with numpy (no Python float per element: a million vectors in minutes, not hours)."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator

import asyncpg
import numpy as np
import numpy.typing as npt

DIMENSION = 1024
TOPICS = 2_000
SUBTOPICS = 25  # per topic
# Norms of each level's part of a vector (the topic's is 1): chunks of one subtopic are each other's nearest.
SUBTOPIC_NORM, NOISE_NORM = 0.6, 0.35
FLOAT4_OID = 700
_ELEMENT = np.dtype([("length", ">i4"), ("value", ">f4")])
# PostgreSQL's binary COPY: signature, flags, header extension; each row: field count, then (length, bytes).
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_ARRAY_HEADER = struct.pack(">iiiii", 1, 0, FLOAT4_OID, DIMENSION, 1)
_VECTOR_FIELD = struct.pack(">i", len(_ARRAY_HEADER) + DIMENSION * _ELEMENT.itemsize)


Subjects = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]


def clustered(rng: np.random.Generator, count: int, subjects: Subjects) -> npt.NDArray[np.float32]:
    topics, subtopics = subjects
    topic = rng.integers(0, TOPICS, size=count)
    subtopic = topic * SUBTOPICS + rng.integers(0, SUBTOPICS, size=count)
    vectors: npt.NDArray[np.float32] = rng.standard_normal((count, DIMENSION), dtype=np.float32)
    vectors *= np.float32(NOISE_NORM / np.sqrt(DIMENSION))
    vectors += topics[topic] + subtopics[subtopic]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def make_subjects(seed: int = 7) -> Subjects:
    """Unit topic directions, and subtopic offsets of norm SUBTOPIC_NORM."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((TOPICS, DIMENSION), dtype=np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    subtopics = rng.standard_normal((TOPICS * SUBTOPICS, DIMENSION), dtype=np.float32)
    subtopics *= SUBTOPIC_NORM / np.linalg.norm(subtopics, axis=1, keepdims=True)
    return topics, subtopics


def copy_payload(document_id: int, first_position: int, texts: list[bytes], vectors: npt.NDArray[np.float32]) -> bytes:
    """Rows (document_id, position, content, embedding) in the binary COPY format."""
    elements = np.empty((len(vectors), DIMENSION), dtype=_ELEMENT)
    elements["length"] = 4
    elements["value"] = vectors
    out = io.BytesIO()
    out.write(_HEADER)
    document = struct.pack(">hiq", 4, 8, document_id)
    for n, (text, row) in enumerate(zip(texts, elements, strict=True)):
        out.write(document)
        out.write(struct.pack(">iii", 4, first_position + n, len(text)))
        out.write(text)
        out.write(_VECTOR_FIELD)
        out.write(_ARRAY_HEADER)
        out.write(row.tobytes())
    out.write(struct.pack(">h", -1))
    return out.getvalue()


def batches(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(size, total - start)


async def add_synthetic_chunks(
    conn: asyncpg.Connection, document_id: int, first_position: int, count: int, texts: list[str], *, seed: int
) -> None:
    """`count` chunks of one document, their texts cycling through `texts` (the full-text side's competition)."""
    rng = np.random.default_rng(seed)
    subjects = make_subjects()
    encoded = [text.encode() for text in texts]
    for start, size in batches(count, 20_000):
        vectors = clustered(rng, size, subjects)
        chosen = [encoded[(first_position + start + n) % len(encoded)] for n in range(size)]
        payload = copy_payload(document_id, first_position + start, chosen, vectors)
        await conn.copy_to_table(
            "kb_chunks",
            source=io.BytesIO(payload),
            columns=["document_id", "position", "content", "embedding"],
            format="binary",
        )


def near_queries(count: int, *, seed: int) -> list[list[float]]:
    """Questions near the synthetic chunks' subjects (as real questions lie near their answers)."""
    rng = np.random.default_rng(seed)
    return [vector.tolist() for vector in clustered(rng, count, make_subjects())]
