"""Everything the chat service works with, opened in one start-up sequence whose order is this code, and closed in
reverse: the model client, the extraction workers, the knowledge base, the alert sender, then the background
loops (closed first, so that work still settling finds everything it needs)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg
from aiohttp import web
from mistralai.client import Mistral

from services.chat import quota
from services.chat.admission import chat_lanes
from services.chat.alerts import AlertSender
from services.chat.attachments import Extractor
from services.chat.knowledge.base import KnowledgeBase, forget_orphans, start_knowledge, trim_conversations
from services.chat.llm import build_client
from services.chat.model_transport import model_http_client, model_session
from services.chat.prompt import PromptTemplates, load_prompts
from shared import AppKeys, Settings, get_logger
from shared.background import Background
from shared.lanes import Lanes

log = get_logger("wibot.chat")


@dataclass(frozen=True, slots=True)
class Chat:
    """The chat service's resources, as every step receives them."""

    settings: Settings
    pool: asyncpg.Pool
    model: Mistral
    prompts: PromptTemplates
    chats: Lanes  # chats in progress in this process, per user (admission.py)
    preparing: Lanes  # of them, the one being read and prepared, per user (admission.py)
    extractor: Extractor
    knowledge: KnowledgeBase
    alerts: AlertSender
    background: Background


CHAT = web.AppKey("chat", Chat)


def chat_resources(settings: Settings) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """The cleanup context that opens them (after the pool and the session copy of base_app)."""

    @contextlib.asynccontextmanager
    async def _open(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            pool = app[AppKeys.DB]
            background = Background()
            session = await stack.enter_async_context(model_session())
            http = model_http_client(session)
            stack.push_async_callback(http.aclose)
            model = build_client(settings, http)
            extractor = Extractor(
                workers=settings.extraction_workers,
                timeout_s=settings.extraction_timeout_s,
                max_jobs=settings.extraction_max_jobs,
                max_jobs_per_user=settings.extraction_max_jobs_per_user,
                seconds_per_user_per_minute=settings.extraction_seconds_per_user_per_minute,
            )
            stack.push_async_callback(asyncio.to_thread, extractor.close)
            knowledge = KnowledgeBase(settings, pool, model, extractor)
            alerts = await stack.enter_async_context(AlertSender.opened(settings.quota_alert_webhook_url))
            stack.push_async_callback(background.close)  # first to close: loops stopped, settling work finished
            await start_knowledge(knowledge, background)
            app[AppKeys.READY_DETAILS] = {"knowledge_vectors": knowledge.index.path}
            background.loop(sweep_every_minute(pool, settings), name="chat_sweeper")
            app[CHAT] = Chat(
                settings=settings,
                pool=pool,
                model=model,
                prompts=load_prompts(settings),
                chats=chat_lanes(settings),
                preparing=Lanes(running_per_user=1),
                extractor=extractor,
                knowledge=knowledge,
                alerts=alerts,
                background=background,
            )
            yield

    return _open


async def sweep_every_minute(pool: asyncpg.Pool, settings: Settings) -> None:
    """Any chat process refunds reservations left behind by a process that died, forgets the attachments indexed
    for an exchange that never saved its conversation, and cuts back a conversation's attachments beyond
    KB_CONVERSATION_MAX_CHUNKS (its newest are kept)."""
    while True:
        await asyncio.sleep(settings.reservation_sweep_every_s)
        try:
            await quota.sweep_stale_reservations(pool, older_than_s=settings.reservation_stale_after_s)
            await forget_orphans(pool, older_than_s=settings.reservation_stale_after_s)
            await trim_conversations(pool, max_chunks=settings.kb_conversation_max_chunks)
        except Exception:  # never let the sweeper die: the next round retries
            log.exception("reservation_sweep_failed")
