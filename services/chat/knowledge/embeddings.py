"""Texts to vectors through the mistralai SDK (retried like chat), batched, identifiers replaced by their kind
(services/chat/privacy); their token cost logged and counted."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from mistralai.client import Mistral

from services.chat.errors import ModelFailed
from services.chat.llm import estimate_tokens, model_failures
from services.chat.privacy import Offload, for_embedding
from shared import Settings, get_logger
from shared.metrics import EMBEDDING_TOKENS

log = get_logger("wibot.knowledge")


@dataclass(frozen=True, slots=True)
class Embedded:
    vectors: list[list[float]]
    tokens: int


# Batches in flight at once for one caller: a large document is embedded in a few round trips' time.
PARALLEL_BATCHES = 4


async def embed(client: Mistral, settings: Settings, texts: list[str], *, purpose: str, offload: Offload) -> Embedded:
    """One vector per text, in order. A failure is a ModelFailed. `offload` runs the identifiers' search of a
    large batch in a worker process (services/chat/attachments.Extractor.offload)."""
    model = settings.kb_embedding_model
    started = time.perf_counter()
    size = settings.kb_embedding_batch
    batches = [texts[i : i + size] for i in range(0, len(texts), size)]
    slots = asyncio.Semaphore(PARALLEL_BATCHES)

    async def one(batch: list[str]) -> tuple[list[list[float]], int]:
        async with slots:
            inputs = await for_embedding(settings, batch, offload=offload)
            with model_failures(model, started):
                async with asyncio.timeout(settings.mistral_timeout_s):
                    result = await client.embeddings.create_async(model=model, inputs=inputs)
        data = sorted(result.data or [], key=lambda item: item.index or 0)
        got = [item.embedding for item in data if item.embedding]
        if len(got) != len(batch) or len({len(vector) for vector in got}) != 1:
            log.error("embedding_reply_malformed", model=model, expected=len(batch), received=len(got))
            raise ModelFailed("bad_reply")
        usage = result.usage.prompt_tokens if result.usage else None
        return got, usage or estimate_tokens(sum(len(text) for text in batch))

    # TaskGroup: the first failure cancels the batches still running, and is the one raised.
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(batch)) for batch in batches]
    except BaseExceptionGroup as failures:
        raise failures.exceptions[0] from None
    results = [task.result() for task in tasks]
    vectors = [vector for got, _ in results for vector in got]
    tokens = sum(count for _, count in results)
    EMBEDDING_TOKENS.labels(purpose).inc(tokens)
    log.info(
        "embeddings",
        model=model,
        purpose=purpose,
        texts=len(texts),
        tokens=tokens,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return Embedded(vectors, tokens)
