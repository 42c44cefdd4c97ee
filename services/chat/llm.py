"""The model, through the mistralai SDK: any server speaking Mistral's API (Mistral, Azure, vLLM, Ollama)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
from mistralai.client import Mistral
from mistralai.client.errors import MistralError, NoResponseError
from mistralai.client.models import AssistantMessage, CompletionEvent, SystemMessage, UsageInfo, UserMessage
from mistralai.client.utils import BackoffStrategy, RetryConfig
from mistralai.client.utils.eventstreaming import EventStreamAsync

from services.chat import model_transport, sdk_models
from services.chat.errors import ModelFailed, ModelFault
from shared import Settings, get_logger
from shared.metrics import MODEL_CALL_FAILURES, MODEL_CALL_SECONDS

log = get_logger("wibot.llm")

SDK_MESSAGES = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}


@dataclass(frozen=True, slots=True)
class ModelReply:
    text: str
    total_tokens: int  # what the user is charged: usage.total_tokens, or the spec's estimate
    completion_tokens: int


def build_client(settings: Settings, http_client: httpx2.AsyncClient) -> Mistral:
    """The SDK configured here, explicitly: its per-call cost fixes applied (sdk_models, on the version they were
    checked against), its hooks run inline when none may block (model_transport), retries, timeout, and our own
    HTTP client (model_transport.model_http_client in the service) so that shutdown closes its connections."""
    sdk_models.install()
    inline = model_transport.run_hooks_inline()
    log.info("model_client", server_url=settings.mistral_server_url, hooks="inline" if inline else "thread")
    api_key = settings.mistral_api_key.get_secret_value() if settings.mistral_api_key else "not-set"
    retry = RetryConfig(
        "backoff",
        BackoffStrategy(
            initial_interval=settings.mistral_retry_initial_ms,
            max_interval=max(settings.mistral_retry_initial_ms, 5_000),
            exponent=2.0,
            max_elapsed_time=int(settings.mistral_retry_max_elapsed_s * 1000),
            jitter_ms=settings.mistral_retry_initial_ms // 2,
        ),
        retry_connection_errors=True,
    )
    return Mistral(
        api_key=api_key,
        server_url=settings.mistral_server_url,
        async_client=http_client,
        retry_config=retry,
        timeout_ms=int(settings.mistral_timeout_s * 1000),
    )


def estimate_tokens(characters: int) -> int:
    """The spec's fallback when the server reports no usage: ceil(characters / 4)."""
    return math.ceil(characters / 4)


def prompt_estimate(messages: list[dict[str, str]]) -> int:
    """What a prompt is charged when the server's count of it is not known: the spec's estimate."""
    return estimate_tokens(sum(len(m["content"]) for m in messages))


def _reply_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content chunks: keep the text ones
        parts = [getattr(chunk, "text", None) for chunk in content]
        return "".join(p for p in parts if isinstance(p, str)) or None
    return None


def request_fields(settings: Settings, model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    """What a chat request sends, whole or streamed."""
    return {
        "model": model,
        # The SDK's own message models: it would otherwise walk our dicts to build them on every call.
        "messages": [SDK_MESSAGES[message["role"]](content=message["content"]) for message in messages],
        "temperature": settings.mistral_temperature,
        "top_p": settings.mistral_top_p,
        "max_tokens": max_tokens,
    }


async def complete(
    client: Mistral, settings: Settings, *, model: str, messages: list[dict[str, str]], max_tokens: int
) -> ModelReply:
    """One chat completion; every failure becomes a 502/503/504 envelope the frontend can show."""
    started = time.perf_counter()
    with model_failures(model, started):
        async with asyncio.timeout(settings.mistral_timeout_s):
            result = await client.chat.complete_async(**request_fields(settings, model, messages, max_tokens))
    message = result.choices[0].message if result and result.choices else None
    text = _reply_text(message.content) if message is not None else None
    if not text:
        raise _failure("empty_reply", model, started, None, "bad_reply")
    return _succeeded(model, started, _with_usage(text, result.usage, messages))


@contextmanager
def model_failures(model: str, started: float) -> Iterator[None]:
    """Every way a model call fails, as one ModelFailed saying how (counted and logged once)."""
    try:
        yield
    except (TimeoutError, httpx2.TimeoutException) as exc:
        raise _failure("timeout", model, started, exc, "timeout") from None
    except MistralError as exc:
        status = exc.status_code
        if status in (429, 503):
            raise _failure(f"http_{status}", model, started, exc, "busy") from None
        # 200: a reply that did not parse
        raise _failure(f"http_{status}", model, started, exc, "bad_reply" if status == 200 else "failed") from None
    except (httpx2.HTTPError, NoResponseError, OSError) as exc:
        raise _failure("unreachable", model, started, exc, "unreachable") from None
    except ValueError as exc:
        raise _failure("malformed_reply", model, started, exc, "bad_reply") from None


def _succeeded(model: str, started: float, reply: ModelReply, **extra: Any) -> ModelReply:
    elapsed = time.perf_counter() - started
    MODEL_CALL_SECONDS.labels(model).observe(elapsed)
    log.info(
        "model_call",
        model=model,
        duration_ms=round(elapsed * 1000, 1),
        total_tokens=reply.total_tokens,
        completion_tokens=reply.completion_tokens,
        **extra,
    )
    return reply


class ModelStream:
    """One streamed completion (`open_stream`): its text deltas as the model produces them, then `reply()`.

    The SDK retries 429/5xx while opening (before the first chunk); once text has flowed nothing is retried.
    Each chunk must come within MISTRAL_TIMEOUT_S of the previous one. `close()` drops the connection, which
    stops the model's work on it.
    """

    def __init__(
        self,
        events: EventStreamAsync[CompletionEvent],
        settings: Settings,
        model: str,
        messages: list[dict[str, str]],
        started: float,
    ) -> None:
        self._events = events
        self._timeout_s = settings.mistral_timeout_s
        self._model = model
        self._messages = messages
        self._started = started
        self._parts: list[str] = []
        self._usage: UsageInfo | None = None
        self._first: str | None = None

    @property
    def text(self) -> str:
        return "".join(self._parts)

    async def next_delta(self) -> str | None:
        """The next piece of text, or None at the end of the reply; a failure is a ModelFailed."""
        if self._first is not None:
            first, self._first = self._first, None
            return first
        with model_failures(self._model, self._started):
            while True:
                async with asyncio.timeout(self._timeout_s):
                    event = await anext(self._events, None)
                if event is None:
                    return None
                chunk = event.data
                if chunk.usage is not None:
                    self._usage = chunk.usage
                delta = _reply_text(chunk.choices[0].delta.content) if chunk.choices else None
                if delta:
                    self._parts.append(delta)
                    return delta

    def reply(self, *, interrupted: bool = False) -> ModelReply:
        """What was produced: the server's usage when it sent it (last chunk), else the estimate."""
        text = self.text
        if not text and not interrupted:
            raise _failure("empty_reply", self._model, self._started, None, "bad_reply")
        usage = None if interrupted else self._usage
        return _succeeded(
            self._model, self._started, _with_usage(text, usage, self._messages), stream=True, interrupted=interrupted
        )

    async def wait_for_text(self) -> None:
        """Read ahead to the first piece of text (given again by the next `next_delta`); 502 when none comes."""
        self._first = await self.next_delta()
        if self._first is None:
            self.reply()  # raises: an answer without any text

    async def close(self) -> None:
        await self._events.close()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated


async def open_stream(
    client: Mistral, settings: Settings, *, model: str, messages: list[dict[str, str]], max_tokens: int
) -> ModelStream:
    """A stream whose first piece of text has come: any failure before it (the model refusing, failing, or sending
    no text at all) is raised here, while the client can still be answered with the usual status and envelope."""
    started = time.perf_counter()
    with model_failures(model, started):
        async with asyncio.timeout(settings.mistral_timeout_s):
            events = await client.chat.stream_async(**request_fields(settings, model, messages, max_tokens))
    stream = ModelStream(events, settings, model, messages, started)
    try:
        await stream.wait_for_text()
    except BaseException:
        await stream.close()
        raise
    return stream


def _failure(
    reason: str,
    model: str,
    started: float,
    exc: BaseException | None,
    fault: ModelFault,
) -> ModelFailed:
    """Count, log (once, with the upstream's words) and say how it failed."""
    elapsed = time.perf_counter() - started
    MODEL_CALL_SECONDS.labels(model).observe(elapsed)
    MODEL_CALL_FAILURES.labels(reason).inc()
    detail = exc.body[:500] if isinstance(exc, MistralError) else repr(exc)[:500]
    log.error("model_call_failed", reason=reason, model=model, duration_ms=round(elapsed * 1000, 1), detail=detail)
    return ModelFailed(fault)


def _with_usage(text: str, usage: Any, messages: list[dict[str, str]]) -> ModelReply:
    completion = (usage.completion_tokens or 0) if usage else 0
    total = (usage.total_tokens or 0) if usage else 0
    total = max(total, completion + ((usage.prompt_tokens or 0) if usage else 0))
    if total == 0:  # the server counted nothing: the spec's estimate over everything sent and received
        prompt_chars = sum(len(m["content"]) for m in messages)
        return ModelReply(text, estimate_tokens(prompt_chars + len(text)), estimate_tokens(len(text)))
    return ModelReply(text, total, min(completion, total))
