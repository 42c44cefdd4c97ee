"""What a chat process knows of the site's chunks, kept current through LISTEN/NOTIFY: on the in-process path
(a database without pgvector) their vectors, searched exactly (cosine); on the pgvector path only how many
chunks each site document has, the database holding and searching the vectors (retrieval.py).

Each chat process holds one index. It LISTENs on `wibot_kb` (migration 0010's triggers notify every change to
a site document), then loads everything, so a change made while loading is applied after it. After a lost
connection it reconnects and loads everything again; until it has, `ready` is False and retrieval uses the
full-text search alone. Conversation chunks are not held here: they are few, read with the message's query.

numpy (17 MB of a chat process's memory) is imported with the first vector, not before: a site without
documents does not carry it.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import asyncpg

from services.chat.knowledge import queries
from shared import get_logger
from shared.listen import Follower, follow
from shared.metrics import KNOWLEDGE_INDEX_CHUNKS

log = get_logger("wibot.knowledge")

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vectors = npt.NDArray[np.float32]

CHANNEL = "wibot_kb"


IN_PROCESS, PGVECTOR = "in_process", "pgvector"


class VectorIndex:
    path = IN_PROCESS
    load_sql = queries.SITE_VECTORS_SQL

    def __init__(self) -> None:
        self.ready = False
        self._documents: dict[int, tuple[npt.NDArray[np.int64], Vectors]] = {}
        self._ids: npt.NDArray[np.int64] | None = None  # None: nothing searched yet (numpy not imported)
        self._matrix: Vectors | None = None
        self._stale = False
        self._size = 0

    @property
    def size(self) -> int:
        """Chunks held (read on every chat message: kept as a count, not summed over the documents)."""
        return self._size

    @property
    def nbytes(self) -> int:
        """Memory held by the vectors (each document's, and the search matrix once built)."""
        held = sum(matrix.nbytes for _, matrix in self._documents.values())
        return held + (self._matrix.nbytes if self._matrix is not None else 0)

    def replace_all(self, rows: list[asyncpg.Record]) -> None:
        self._documents = {}
        self._put(rows)

    def replace_document(self, document_id: int, rows: list[asyncpg.Record]) -> None:
        self._documents.pop(document_id, None)
        self._put(rows)

    def _put(self, rows: list[asyncpg.Record]) -> None:
        if not rows and not self._documents:
            self._stale, self._size = True, 0
            return
        import numpy as np

        by_document: dict[int, list[asyncpg.Record]] = {}
        for row in rows:
            by_document.setdefault(row["document_id"], []).append(row)
        for document_id, chunks in by_document.items():
            vectors = [vector_of(row["embedding"]) for row in chunks]
            dimension = max(len(v) for v in vectors)
            if dimension == 0:
                continue
            kept = [(row["chunk_id"], v) for row, v in zip(chunks, vectors, strict=True) if len(v) == dimension]
            ids = np.array([chunk_id for chunk_id, _ in kept], dtype=np.int64)
            self._documents[document_id] = (ids, normalized(np.array([v for _, v in kept])))
        self._stale = True
        self._size = sum(len(ids) for ids, _ in self._documents.values())

    def search(self, query: list[float], *, limit: int, min_similarity: float) -> list[tuple[int, float]]:
        """The `limit` most similar chunks at or above `min_similarity`, best first: [(chunk_id, cosine)]."""
        if self._stale:
            self._rebuild()
        if self._ids is None or self._matrix is None or not len(self._ids) or limit <= 0:
            return []
        import numpy as np

        vector = normalized(np.array([query]))[0]
        if vector.shape[0] != self._matrix.shape[1]:
            log.warning("kb_dimension_mismatch", query=vector.shape[0], index=self._matrix.shape[1])
            return []
        scores = self._matrix @ vector
        count = min(limit, len(scores))
        best = np.argpartition(-scores, count - 1)[:count]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [(int(self._ids[i]), float(scores[i])) for i in best if scores[i] >= min_similarity]

    def _rebuild(self) -> None:
        """One matrix of every document's vectors (of the dimension most of them have: one embedding model)."""
        self._stale = False
        if not self._documents:
            self._ids, self._matrix = None, None
            return
        import numpy as np

        dimensions = Counter(matrix.shape[1] for _, matrix in self._documents.values() if matrix.size)
        if not dimensions:
            self._ids, self._matrix = np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
            return
        dimension = dimensions.most_common(1)[0][0]
        kept = [
            (ids, matrix) for ids, matrix in self._documents.values() if matrix.size and matrix.shape[1] == dimension
        ]
        self._ids = np.concatenate([ids for ids, _ in kept])
        self._matrix = np.vstack([matrix for _, matrix in kept])


class SiteChunks:
    """The pgvector path's index: the site's chunk count per document, so that a message on a site without
    documents makes no embedding call, and `ready` as on the other path. No vector, no numpy: a replica's memory
    and start-up do not grow with the corpus."""

    path = PGVECTOR
    load_sql = queries.SITE_CHUNK_COUNTS_SQL
    nbytes = 0

    def __init__(self) -> None:
        self.ready = False
        self._counts: dict[int, int] = {}
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def replace_all(self, rows: list[asyncpg.Record]) -> None:
        self._counts = {row["document_id"]: row["chunks"] for row in rows}
        self._size = sum(self._counts.values())

    def replace_document(self, document_id: int, rows: list[asyncpg.Record]) -> None:
        self._size -= self._counts.pop(document_id, 0)
        for row in rows:
            self._counts[row["document_id"]] = row["chunks"]
            self._size += row["chunks"]


SiteIndex = VectorIndex | SiteChunks


def vector_of(value: bytes | list[float]) -> Vectors:
    """A stored embedding (array_send's bytes, or a list) as float32."""
    import numpy as np

    if not isinstance(value, bytes):
        return np.asarray(value, dtype=np.float32)
    # PostgreSQL's binary array: ndim, has-nulls flag, element type, (size, lower bound) per dimension, then each
    # element as (length, value). One dimension, no null: what ingestion writes.
    ndim, has_nulls = np.frombuffer(value, dtype=np.dtype(">i4"), count=2)
    if ndim != 1 or has_nulls:  # not written by ingestion: left out of the index
        return np.empty(0, dtype=np.float32)
    element = np.dtype([("length", ">i4"), ("value", ">f4")])
    return np.frombuffer(value, dtype=element, offset=20)["value"].astype(np.float32)


def normalized(vectors: npt.NDArray[Any]) -> Vectors:
    import numpy as np

    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or not matrix.size:
        return np.empty((0, 0), dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms == 0, 1, norms)).astype(np.float32, copy=False)


class IndexFollower(Follower):
    """Keeps `index` current through `wibot_kb`; until loaded (and from a lost connection until reloaded) the
    index is not `ready`: on the in-process path, retrieval then uses the full-text search alone."""

    channel = CHANNEL

    def __init__(self, index: SiteIndex) -> None:
        super().__init__()
        self.index = index

    async def load(self, connection: asyncpg.Connection) -> None:
        self.index.replace_all(await connection.fetch(self.index.load_sql, None))
        self.index.ready = self.ready = True
        KNOWLEDGE_INDEX_CHUNKS.set(self.index.size)
        self.loaded.set()
        log.info("kb_index_loaded", chunks=self.index.size, vector_path=self.index.path)

    async def apply(self, connection: asyncpg.Connection, payload: str) -> None:
        if payload == "*":
            await self.load(connection)
            return
        document_id = int(payload)
        self.index.replace_document(document_id, await connection.fetch(self.index.load_sql, document_id))
        KNOWLEDGE_INDEX_CHUNKS.set(self.index.size)

    def lost(self) -> None:
        super().lost()
        self.index.ready = False


async def keep_current(follower: IndexFollower, dsn: str) -> None:
    """Runs for the process's life (shared.listen)."""
    await follow(dsn, follower, application_name="wibot-chat-kb")
