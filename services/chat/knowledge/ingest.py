"""Ingestion of the site's documents: a folder under KB_ROOT read, cut, embedded and stored, file by file.

Incremental by content hash (sha256 of the bytes): an unchanged file is skipped, a changed one re-embedded,
a deleted one's chunks removed; `full` re-embeds everything. Each file is written in one transaction (all of
it or none of it: a file that fails keeps its previous version). One ingestion at a time, all processes
together (an advisory lock): a second one is refused with 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal, Protocol

import asyncpg

from services.chat.errors import KnowledgeBusy, KnowledgeNotConfigured, KnowledgePathRefused
from services.chat.extraction import FileProblem
from services.chat.knowledge import queries
from services.chat.knowledge.base import KnowledgeBase
from services.chat.knowledge.chunks import split
from services.chat.knowledge.documents import SUFFIXES, document_text
from services.chat.knowledge.embeddings import embed
from services.chat.knowledge.store import write_chunks
from shared import Settings, get_logger

log = get_logger("wibot.knowledge")

Mode = Literal["incremental", "full"]
DEFAULT_CATEGORY = "general"


class Progress(Protocol):
    def start(self, total: int) -> None: ...

    def advance(self, path: str) -> None: ...


@dataclass
class IngestStats:
    files: int = 0  # documents of a supported type found under the path
    added: int = 0
    updated: int = 0
    removed: int = 0
    skipped: int = 0  # unchanged since the last ingestion
    chunks: int = 0  # chunks written by this run
    failed: list[dict[str, str]] = field(default_factory=list)  # [{path, error}]: kept at their previous version

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def confine(root: Path | None, path: str | None) -> tuple[Path, Path, str]:
    """(root, target, target relative to root) — KnowledgePathRefused for a path that leaves the root, even through
    a symlink."""
    if root is None or not root.is_dir():
        raise KnowledgeNotConfigured
    real_root = root.resolve()
    if not path:
        return real_root, real_root, ""
    invalid = KnowledgePathRefused("invalid", path)
    if "\x00" in path:
        raise invalid
    try:
        target = (real_root / path).resolve()  # an absolute `path` replaces the root: checked like any other
        exists = target.exists()
    except OSError:  # a name too long, a symlink loop: not a path of the knowledge base
        raise invalid from None
    if target != real_root and real_root not in target.parents:
        raise KnowledgePathRefused("outside", path)
    if not exists:
        raise KnowledgePathRefused("not_found", path)
    return real_root, target, target.relative_to(real_root).as_posix() if target != real_root else ""


def documents_under(root: Path, target: Path) -> list[tuple[Path, str]]:
    """Supported files under `target` (hidden ones aside), sorted, as (real path, path relative to root).
    A symlink is followed only when it stays inside the root."""
    if target.is_file():
        candidates = [target]
    else:
        candidates = []
        for folder, dirs, names in os.walk(target):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            candidates += [Path(folder) / name for name in sorted(names) if not name.startswith(".")]
    found = []
    for candidate in candidates:
        if candidate.suffix.lower() not in SUFFIXES:
            continue
        real = candidate.resolve()
        if root not in real.parents or not real.is_file():
            log.warning("kb_file_outside_root", path=str(candidate))
            continue
        found.append((real, candidate.relative_to(root).as_posix()))
    return found


def document_chunks(data: bytes, suffix: str, *, max_pages: int, chars: int, overlap: int) -> list[str]:
    """The worker's job for one file: its text, cut into chunks."""
    text = document_text(data, suffix, max_pages=max_pages)
    return split(text, chars=chars, overlap=overlap, markdown=suffix == ".md")


def read_limited(path: Path, max_bytes: int) -> bytes | None:
    """The file's bytes, or None when it holds more than `max_bytes`."""
    with path.open("rb") as file:
        data = file.read(max_bytes + 1)
    return None if len(data) > max_bytes else data


def category_of(relative: str, given: str | None) -> str:
    if given:
        return given
    parts = PurePosixPath(relative).parts
    return parts[0] if len(parts) > 1 else DEFAULT_CATEGORY


async def ingest(
    kb: KnowledgeBase, *, path: str | None, mode: Mode, category: str | None, progress: Progress | None = None
) -> IngestStats:
    root, target, relative_target = confine(kb.settings.kb_root, path)
    async with ingestion_lock(kb.settings):
        return await _ingest_locked(kb, root, target, relative_target, mode, category, progress)


@contextlib.asynccontextmanager
async def ingestion_lock(settings: Settings) -> AsyncIterator[None]:
    """One writer of the site's documents at a time, all processes together (KnowledgeBusy otherwise). The lock
    lives on a connection of its own: closing it releases the lock, whatever interrupts the run (pooled
    connections are returned without a reset: shared/db.py)."""
    lock = await asyncpg.connect(settings.dsn, server_settings={"application_name": "wibot-kb-ingest"})
    try:
        if not await lock.fetchval(queries.INGEST_LOCK_SQL):
            raise KnowledgeBusy
        yield
    finally:
        await asyncio.shield(lock.close(timeout=5))


async def _ingest_locked(
    kb: KnowledgeBase,
    root: Path,
    target: Path,
    relative_target: str,
    mode: Mode,
    category: str | None,
    progress: Progress | None,
) -> IngestStats:
    stats = IngestStats()
    known = {row["path"]: row for row in await kb.pool.fetch(queries.SITE_DOCUMENTS_SQL, relative_target)}
    files = await asyncio.to_thread(documents_under, root, target)
    stats.files = len(files)
    if progress:
        progress.start(len(files))
    for real, relative in files:
        previous = known.pop(relative, None)
        outcome = await ingest_file(kb, real, relative, category, previous and previous["content_hash"], mode)
        if isinstance(outcome, str):
            stats.failed.append({"path": relative, "error": outcome})
        elif outcome is None:
            stats.skipped += 1
        else:
            stats.chunks += outcome
            stats.added += previous is None
            stats.updated += previous is not None
        if progress:
            progress.advance(relative)
    if known:  # documents whose file is gone
        await kb.pool.execute(queries.DELETE_DOCUMENTS_SQL, [row["document_id"] for row in known.values()])
        stats.removed = len(known)
    log.info("kb_ingested", root=str(root), path=relative_target, mode=mode, **stats.as_dict())
    return stats


async def ingest_file(
    kb: KnowledgeBase, real: Path, relative: str, category: str | None, previous_hash: str | None, mode: Mode
) -> int | str | None:
    """Chunks written, None when unchanged, or why the file could not be used (French, for the operator)."""
    settings = kb.settings
    data = await asyncio.to_thread(read_limited, real, settings.kb_file_max_bytes)
    if data is None:
        return "fichier trop volumineux"
    digest = hashlib.sha256(data).hexdigest()
    if mode == "incremental" and digest == previous_hash:
        return None
    try:
        chunks: list[str] = await kb.extractor.call(
            document_chunks,
            data,
            real.suffix.lower(),
            max_pages=settings.pdf_max_pages,
            chars=settings.kb_chunk_chars,
            overlap=settings.kb_chunk_overlap,
        )
    except FileProblem as problem:
        log.warning("kb_file_unreadable", path=relative, reason=problem.reason)
        return problem.reason
    except TimeoutError:
        log.warning("kb_file_timeout", path=relative, timeout_s=settings.extraction_timeout_s)
        return f"extraction interrompue après {settings.extraction_timeout_s:g} s"
    embedded = await embed(kb.client, settings, chunks, purpose="ingestion", offload=kb.extractor.offload(None))
    async with kb.pool.acquire() as conn, conn.transaction():
        document_id = await conn.fetchval(
            queries.UPSERT_SITE_DOCUMENT_SQL,
            PurePosixPath(relative).name,
            category_of(relative, category),
            relative,
            digest,
            len(chunks),
        )
        await conn.execute(queries.DELETE_CHUNKS_SQL, document_id)
        await write_chunks(conn, document_id, chunks, embedded.vectors)
    return len(chunks)
