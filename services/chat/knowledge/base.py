"""The knowledge base as the chat app holds it: its index, kept current, and the scheduled sync."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import asyncpg
from mistralai.client import Mistral

from services.chat.attachments import Extractor
from services.chat.errors import KnowledgeBusy, KnowledgeNotConfigured, ModelFailed
from services.chat.knowledge import queries
from services.chat.knowledge.index import PGVECTOR, IndexFollower, SiteChunks, SiteIndex, VectorIndex, keep_current
from shared import Settings, get_logger
from shared.background import Background
from shared.lanes import Lanes
from shared.metrics import KNOWLEDGE_VECTOR_PATH

log = get_logger("wibot.knowledge")

# How long a starting chat process waits for its index before serving (full text only until it is loaded).
INDEX_STARTUP_WAIT_S = 10.0
# A scheduled sync that failed (the model or the database away) tries again this soon.
SYNC_RETRY_S = 60.0
# Retrieval statements are the database's heaviest: one user runs one at a time and has at most four waiting
# (beyond, their message goes without passages), and the process runs at most half its pool's connections of
# them, so that everyone else's short statements always find a connection and a core.
RETRIEVALS_PER_USER, RETRIEVALS_WAITING_PER_USER = 1, 4


@dataclass
class KnowledgeBase:
    settings: Settings
    pool: asyncpg.Pool
    client: Mistral
    extractor: Extractor
    index: SiteIndex = field(default_factory=VectorIndex)  # start_knowledge chooses it
    follower: IndexFollower = field(init=False)
    retrievals: Lanes = field(init=False)

    def __post_init__(self) -> None:
        self.follower = IndexFollower(self.index)
        self.retrievals = Lanes(
            running_per_user=RETRIEVALS_PER_USER,
            max_jobs_per_user=RETRIEVALS_PER_USER + RETRIEVALS_WAITING_PER_USER,
            running=max(1, self.settings.db_pool_max // 2),
        )

    def use(self, index: SiteIndex) -> None:
        """The index this process searches with (start_knowledge's choice), and its follower."""
        self.index = index
        self.follower = IndexFollower(index)


async def start_knowledge(kb: KnowledgeBase, background: Background) -> None:
    """After the pool, the model client and the extractor: the vector path chosen, the index's listener (waited
    for a while, so that a starting process serves with its index), then the sync if asked."""
    if kb.settings.kb_vector_search == "auto" and await kb.pool.fetchval(queries.HAS_VECTOR_INDEX_SQL):
        kb.use(SiteChunks())
    for path in (PGVECTOR, VectorIndex.path):
        KNOWLEDGE_VECTOR_PATH.labels(path).set(1 if kb.index.path == path else 0)
    log.info("kb_vector_path", path=kb.index.path, setting=kb.settings.kb_vector_search)
    background.loop(keep_current(kb.follower, kb.settings.dsn), name="kb_index_follower")
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(INDEX_STARTUP_WAIT_S):
            await kb.follower.loaded.wait()
    if kb.settings.kb_sync_every_s > 0 and kb.settings.kb_root is not None:
        background.loop(scheduled_sync(kb), name="kb_scheduled_sync")


async def scheduled_sync(kb: KnowledgeBase) -> None:
    """At start, then every KB_SYNC_EVERY_S, an incremental ingestion of KB_ROOT (one process at a time: the
    others skip that round)."""
    from services.chat.knowledge.ingest import ingest

    while True:
        wait_s = kb.settings.kb_sync_every_s
        try:
            stats = await ingest(kb, path=None, mode="incremental", category=None)
            log.info("kb_sync", **stats.as_dict())
        except KnowledgeBusy:  # another process is syncing
            log.info("kb_sync_skipped", reason="busy")
        except (ModelFailed, KnowledgeNotConfigured) as exc:  # e.g. the model server starting beside us
            log.info("kb_sync_skipped", reason=type(exc).__name__)
            wait_s = min(wait_s, SYNC_RETRY_S)  # soon again
        except Exception:  # never let the schedule die: the next round retries
            log.exception("kb_sync_failed")
            wait_s = min(wait_s, SYNC_RETRY_S)
        await asyncio.sleep(wait_s)


TRIM_BATCH_DOCUMENTS = 100


async def trim_conversations(pool: asyncpg.Pool, *, max_chunks: int) -> int:
    """Each conversation's attachments cut back to its newest within `max_chunks` (run by the chat sweeper);
    returns the chunks deleted. 0: no cap."""
    if not max_chunks:
        return 0
    rows = await pool.fetch(queries.TRIM_CONVERSATIONS_SQL, max_chunks, TRIM_BATCH_DOCUMENTS)
    for row in rows:
        log.warning("kb_conversation_trimmed", conversation_id=str(row["conversation_id"]), chunks=row["chunk_count"])
    return sum(row["chunk_count"] for row in rows)


async def forget_orphans(pool: asyncpg.Pool, *, older_than_s: float) -> None:
    """Attachments indexed for an exchange that never saved its conversation (run by the chat sweeper)."""
    status = await pool.execute(queries.DELETE_ORPHAN_DOCUMENTS_SQL, older_than_s)
    if status != "DELETE 0":
        log.warning("kb_orphan_attachments_deleted", status=status)
