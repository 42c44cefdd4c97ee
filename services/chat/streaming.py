"""Streamed replies: another way for the chat workflow to respond, not another workflow.

A client opts in with `Accept: text/event-stream` or `"stream": true` (SSE), or `Accept: application/x-ndjson`
(n8n's JSON lines). The workflow runs as always (workflow.run_chat) with this module's `call_model`, so every
refusal before the model's first piece of text (400 … 429, 502/503/504) is the usual envelope and status: the
HTTP response starts only with the first text. Then:

    SSE     event: delta {"content"} …  then  event: done <the usual success body>  or  event: error <envelope>
    NDJSON  {"type":"begin"} {"type":"item","content"} … {"type":"end","result"}  or  {"type":"error","content"}

NDJSON is the shape n8n's chat widget reads (n8n-io/n8n, packages/frontend/@n8n/chat/src/api/message.ts:
createLineParser splits on newlines and JSON-parses each line; types/streaming.ts: StructuredChunk {type:
begin|item|end|error, content?, metadata: {nodeId, nodeName, timestamp, runIndex, itemIndex}}).

Heartbeats (an SSE comment, an empty NDJSON line) keep proxies from closing a quiet connection. A client that
leaves mid-reply: the model call is dropped, the exchange is saved with the text produced so far and those
tokens are charged (the model did that work; the conversation keeps the question and its partial answer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from mistralai.client import Mistral

from services.chat import llm
from shared import SERVER_ERROR_MESSAGE, ApiError, RequestKeys, Settings, get_logger
from shared.contracts import ChatRequest, ChatResponse
from shared.errors import error_envelope

log = get_logger("wibot.chat.stream")

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


def requested_format(request: web.Request, body: ChatRequest) -> str | None:
    """SSE, NDJSON or None (the plain JSON answer, unchanged)."""
    accept = request.headers.get("Accept", "")
    if NDJSON in accept:
        return NDJSON
    if SSE in accept or body.stream:
        return SSE
    return None


class ClientLeft(Exception):
    pass


class StreamedReply:
    """The HTTP side of one streamed chat: `call_model` for the workflow, then `finish` or `fail`."""

    def __init__(self, request: web.Request, fmt: str, client: Mistral, settings: Settings) -> None:
        self.request, self.fmt, self.client, self.settings = request, fmt, client, settings
        self.response: web.StreamResponse | None = None
        self.client_left = False
        self._left = asyncio.Event()

    def leave(self) -> None:
        """The client went away (its connection closed, or aiohttp cancelled the handler)."""
        self._left.set()

    async def call_model(self, *, model: str, messages: list[dict[str, str]], max_tokens: int) -> llm.ModelReply:
        stream = await llm.open_stream(
            self.client, self.settings, model=model, messages=messages, max_tokens=max_tokens
        )
        try:
            delta = await stream.next_delta()  # before it, any failure is the usual status and envelope
            if delta is None:
                return stream.reply()
            await self._start()
            while delta is not None:
                await self._send_delta(delta)
                delta = await self._next_with_heartbeats(stream)
            return stream.reply()
        except ClientLeft:
            self.client_left = True
            log.info("chat_stream_client_left", chars_sent=len(stream.text))
            return stream.reply(interrupted=True)
        finally:
            await stream.close()  # a client gone or a failure: the model stops working for nobody

    async def _next_with_heartbeats(self, stream: llm.ModelStream) -> str | None:
        """The next delta; meanwhile a heartbeat when quiet, and a look at the client's connection every
        second (a client that left stops the model at once, not at the next chunk)."""
        pending = asyncio.ensure_future(stream.next_delta())
        left = asyncio.ensure_future(self._left.wait())
        quiet_since = time.monotonic()
        try:
            while True:
                await asyncio.wait(
                    {pending, left},
                    timeout=min(1.0, self.settings.stream_heartbeat_s),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if pending.done():
                    return pending.result()
                if left.done() or self._transport_closing():
                    raise ClientLeft
                if time.monotonic() - quiet_since >= self.settings.stream_heartbeat_s:
                    await self._write(b": ping\n\n" if self.fmt == SSE else b"\n")
                    quiet_since = time.monotonic()
        finally:
            left.cancel()
            if not pending.done():
                pending.cancel()

    def _transport_closing(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def _start(self) -> None:
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": f"{self.fmt}; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: pass each chunk on at once
                "X-Request-ID": self.request[RequestKeys.REQUEST_ID],
            },
        )
        try:
            await response.prepare(self.request)
        except ConnectionError:
            raise ClientLeft from None
        self.response = response
        if self.fmt == NDJSON:
            await self._write(_line({"type": "begin", "metadata": _metadata()}))

    async def _send_delta(self, delta: str) -> None:
        if self.fmt == SSE:
            await self._write(_event("delta", {"content": delta}))
        else:
            await self._write(_line({"type": "item", "content": delta, "metadata": _metadata()}))

    async def finish(self, result: ChatResponse) -> None:
        body = orjson.loads(result.model_dump_json())
        if self.fmt == SSE:
            await self._write(_event("done", body))
        else:
            await self._write(_line({"type": "end", "metadata": _metadata(), "result": body}))

    async def fail(self, exc: ApiError) -> None:
        envelope = error_envelope(exc.message, exc.code)
        if self.fmt == SSE:
            await self._write(_event("error", envelope))
        else:
            await self._write(
                _line({"type": "error", "content": exc.message, "metadata": _metadata(), "error": envelope})
            )

    async def _write(self, data: bytes) -> None:
        if self.response is None or self._left.is_set() or self._transport_closing():
            raise ClientLeft
        try:
            await self.response.write(data)
        except ConnectionError:
            raise ClientLeft from None


# Streams whose client left: they finish on their own (partial exchange saved, tokens charged).
_departed: set[asyncio.Future[web.StreamResponse]] = set()


async def respond(
    request: web.Request,
    fmt: str,
    client: Mistral,
    settings: Settings,
    run: Callable[[Any], Awaitable[ChatResponse]],
) -> web.StreamResponse:
    """Run the workflow with a streaming model step; errors before the first byte propagate as usual.

    The work runs shielded from the handler: when the client leaves and aiohttp cancels the handler, the
    exchange is still settled (saved with its partial reply, charged) instead of being cut in the middle.
    """
    reply = StreamedReply(request, fmt, client, settings)
    work = asyncio.ensure_future(_run(reply, run))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        reply.leave()
        _departed.add(work)
        work.add_done_callback(_departed.discard)
        raise


async def wait_for_departed() -> None:
    """At shutdown: let streams whose client left finish settling their exchange."""
    if _departed:
        await asyncio.wait(set(_departed), timeout=30)


async def _run(reply: StreamedReply, run: Callable[[Any], Awaitable[ChatResponse]]) -> web.StreamResponse:
    try:
        result = await run(reply.call_model)
    except Exception as exc:
        if reply.response is None:
            raise  # nothing sent yet: the error middleware answers with the usual status and envelope
        failure = exc if isinstance(exc, ApiError) else ApiError(500, SERVER_ERROR_MESSAGE)
        if isinstance(exc, ApiError):
            log.warning("chat_stream_failed", status=exc.status, error=exc.message, code=exc.code)
        else:
            log.exception("chat_stream_failed")
        await _quietly(reply.fail(failure))
        return reply.response
    if reply.client_left or reply.response is None:
        return reply.response or web.Response()  # nobody is listening any more
    await _quietly(reply.finish(result))
    await _quietly(reply.response.write_eof())
    return reply.response


async def _quietly(step: Awaitable[None]) -> None:
    try:
        await step
    except (ClientLeft, ConnectionError):
        pass


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _line(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE)


def _metadata() -> dict[str, Any]:
    return {
        "nodeId": "wibot-chat",
        "nodeName": "WIBOT",
        "timestamp": int(time.time() * 1000),
        "runIndex": 0,
        "itemIndex": 0,
    }
