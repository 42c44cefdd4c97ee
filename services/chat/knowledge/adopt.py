"""`python -m services.chat kb adopt-n8n`: the knowledge base of an n8n WIBOT (its `n8n_vectors` table, filled by
n8n's PGVector node with mistral-embed vectors) taken as the site's documents and chunks, without one embedding
call: the vectors are copied inside the database, in one transaction (all or nothing), under the ingestion lock.
Run again, it gives the same result (documents are upserted by path, their chunks replaced).

So that the next incremental sync of KB_ROOT does not embed again what n8n already did, a document is given the
hash ingestion computes for its file (sha256 of the bytes) when that file is under KB_ROOT at the path n8n wrote
and every adopted chunk is found, verbatim, in the text we read from it today: the file is then "unchanged".
Otherwise (the file changed since, it is not there, or n8n's extraction of a PDF or an Office file read other
text than ours) the document keeps a hash no file has, and the next sync embeds it once, with our extraction.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

import asyncpg

from services.chat.extraction import FileProblem
from services.chat.knowledge import queries
from services.chat.knowledge.documents import document_text
from services.chat.knowledge.ingest import ingestion_lock, read_limited
from shared import Settings, get_logger

log = get_logger("wibot.knowledge")

_SPACES = re.compile(r"\s+")


@dataclass
class AdoptStats:
    documents: int = 0
    chunks: int = 0
    unchanged: int = 0  # documents whose file under KB_ROOT holds every chunk: skipped by the next sync
    to_embed: int = 0  # documents the next sync embeds again (file changed, absent, or read otherwise)
    attachments_left: int = 0  # n8n rows of a conversation's attachment: not the site's, not adopted
    site_rows_left: int = 0  # the site's rows without text, vector or path

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class NoN8nTable(Exception):
    """The database holds no `n8n_vectors` table."""


async def adopt_n8n(settings: Settings, pool: asyncpg.Pool) -> AdoptStats:
    stats = AdoptStats()
    async with ingestion_lock(settings):
        if not await pool.fetchval(queries.N8N_TABLE_SQL):
            raise NoN8nTable
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(queries.N8N_STAGE_SQL)
            paths, document_ids = [], []
            for row in await conn.fetch(queries.N8N_DOCUMENTS_SQL):
                digest = await asyncio.to_thread(hash_if_unchanged, settings, row["path"], row["chunks"])
                stats.unchanged += digest is not None
                stats.to_embed += digest is None
                if digest is None:  # a hash no file has: the next sync embeds this document once
                    digest = "n8n:" + hashlib.sha256("\x00".join(row["chunks"]).encode()).hexdigest()
                document_id = await conn.fetchval(
                    queries.UPSERT_SITE_DOCUMENT_SQL,
                    row["source"] or PurePosixPath(row["path"]).name,
                    row["category"],
                    row["path"],
                    digest,
                    len(row["chunks"]),
                )
                paths.append(row["path"])
                document_ids.append(document_id)
                stats.chunks += len(row["chunks"])
            await conn.execute(queries.DELETE_DOCUMENTS_CHUNKS_SQL, document_ids)
            await conn.execute(queries.N8N_COPY_CHUNKS_SQL, paths, document_ids)
            stats.documents = len(paths)
            left = await conn.fetchrow(queries.N8N_LEFT_OUT_SQL)
        stats.attachments_left = left["attachments"]
        stats.site_rows_left = left["site"] - stats.chunks
    log.info("kb_adopted_n8n", **stats.as_dict())
    return stats


def hash_if_unchanged(settings: Settings, path: str, chunks: list[str]) -> str | None:
    """The ingestion's hash of the file at `path` under KB_ROOT when its text holds every chunk, else None."""
    root = settings.kb_root
    if root is None:
        return None
    real_root = root.resolve()
    file = (real_root / path).resolve()
    if real_root not in file.parents or not file.is_file():
        return None
    data = read_limited(file, settings.kb_file_max_bytes)
    if data is None:
        return None
    try:
        text = flat(document_text(data, file.suffix.lower(), max_pages=settings.pdf_max_pages))
    except FileProblem:
        return None
    if not all(flat(chunk) in text for chunk in chunks):
        return None
    return hashlib.sha256(data).hexdigest()


def flat(text: str) -> str:
    """Whitespace as one space: a splitter trims and joins lines its own way."""
    return _SPACES.sub(" ", text).strip()


def report(stats: AdoptStats) -> str:
    lines = [
        f"{stats.documents} documents et {stats.chunks} passages repris de n8n_vectors, sans appel au modèle"
        f" d'embedding ; {stats.unchanged} identiques à leur fichier sous KB_ROOT, {stats.to_embed} à réindexer"
        " à la prochaine synchronisation"
    ]
    if stats.attachments_left:
        lines.append(f"  {stats.attachments_left} passages de pièces jointes de conversations laissés de côté")
    if stats.site_rows_left:
        lines.append(f"  {stats.site_rows_left} lignes sans texte, vecteur ou chemin laissées de côté")
    return "\n".join(lines)
