"""Chunks written with their vectors: by the ingestion of the site's documents and by a chat's indexed attachment."""

from __future__ import annotations

import asyncpg

from services.chat.knowledge import queries


async def write_chunks(
    conn: asyncpg.Connection, document_id: int, chunks: list[str], vectors: list[list[float]]
) -> None:
    """A document's chunks with their vectors, in one COPY (inside the caller's transaction)."""
    await conn.copy_records_to_table(
        "kb_chunks",
        records=[(document_id, n, text, vector) for n, (text, vector) in enumerate(zip(chunks, vectors, strict=True))],
        columns=queries.CHUNK_COLUMNS,
    )
