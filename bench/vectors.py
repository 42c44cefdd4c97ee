"""Synthetic chunks for the knowledge-base benchmark, written fast: 1024-dimension vectors drawn around centroids
(embeddings of real text cluster by subject; uniform noise would be the one case where no index helps), sent by a
binary COPY built with numpy (no Python float per element: a million vectors in minutes, not hours)."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator

import asyncpg
import numpy as np
import numpy.typing as npt

DIMENSION = 1024
CENTROIDS = 2_000
SPREAD = 0.6  # the noise's share: how far a vector lies from its subject's centroid
FLOAT4_OID = 700
_ELEMENT = np.dtype([("length", ">i4"), ("value", ">f4")])
# PostgreSQL's binary COPY: signature, flags, header extension; each row: field count, then (length, bytes).
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_ARRAY_HEADER = struct.pack(">iiiii", 1, 0, FLOAT4_OID, DIMENSION, 1)
_VECTOR_FIELD = struct.pack(">i", len(_ARRAY_HEADER) + DIMENSION * _ELEMENT.itemsize)


def clustered(rng: np.random.Generator, count: int, centroids: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    picks = rng.integers(0, len(centroids), size=count)
    vectors = centroids[picks] + SPREAD * rng.standard_normal((count, DIMENSION), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def make_centroids(seed: int = 7) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((CENTROIDS, DIMENSION), dtype=np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    return centroids


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
    centroids = make_centroids()
    encoded = [text.encode() for text in texts]
    for start, size in batches(count, 20_000):
        vectors = clustered(rng, size, centroids)
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
    return [vector.tolist() for vector in clustered(rng, count, make_centroids())]
