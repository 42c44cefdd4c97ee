"""Streamed replies: another way to respond, not another workflow. The writer formats the model's deltas as SSE or
NDJSON, sends heartbeats and watches the client; it calls nothing (Starlette's `StreamingResponse` shape).

A client opts in with `Accept: text/event-stream` or `"stream": true` (SSE), or `Accept: application/x-ndjson`
(n8n's JSON lines). The turn is prepared and the model's stream opened as for a whole reply, so every refusal
before the model's first piece of text (400 … 429, 502/503/504) is the usual envelope and status: the HTTP
response starts only with the first text. Then:

    SSE     event: delta {"content"} …  then  event: done <the usual success body>  or  event: error <envelope>
    NDJSON  {"type":"begin"} {"type":"item","content"} … {"type":"end","result"}  or  {"type":"error","content"}

NDJSON is the shape n8n's chat widget reads (n8n-io/n8n, packages/frontend/@n8n/chat/src/api/message.ts:
createLineParser splits on newlines and JSON-parses each line; types/streaming.ts: StructuredChunk {type:
begin|item|end|error, content?, metadata: {nodeId, nodeName, timestamp, runIndex, itemIndex}}).

Heartbeats (an SSE comment, an empty NDJSON line) keep proxies from closing a quiet connection. A client that
leaves mid-reply is seen within a second (its connection closes): `relay` stops reading the model and says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, Protocol

import orjson
from aiohttp import web

from shared import RequestKeys
from shared.contracts import ChatRequest, ChatResponse
from shared.errors import error_envelope
from shared.middlewares import client_failure

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


class Deltas(Protocol):
    """Where the text comes from (llm.ModelStream)."""

    async def next_delta(self) -> str | None: ...


class ClientLeft(Exception):
    pass


class ReplyWriter:
    """The HTTP side of one streamed reply: `relay` the deltas, then `finish` or `fail`."""

    def __init__(self, request: web.Request, fmt: str, *, heartbeat_s: float) -> None:
        self.request, self.fmt, self.heartbeat_s = request, fmt, heartbeat_s
        self.response: web.StreamResponse | None = None
        self.client_left = False

    async def relay(self, deltas: Deltas) -> bool:
        """Every delta to the client until the reply ends; False when the client left first (then nothing more
        is read from `deltas`). A failure of `deltas` propagates."""
        try:
            await self._start()
            while (delta := await self._next_with_heartbeats(deltas)) is not None:
                await self._send_delta(delta)
            return True
        except ClientLeft:
            self.client_left = True
            return False

    async def _next_with_heartbeats(self, deltas: Deltas) -> str | None:
        """The next delta; meanwhile a heartbeat when quiet, and a look at the client's connection every
        second (a client that left stops the model at once, not at the next chunk)."""
        pending = asyncio.ensure_future(deltas.next_delta())
        quiet_since = time.monotonic()
        try:
            while True:
                await asyncio.wait({pending}, timeout=min(1.0, self.heartbeat_s))
                if pending.done():
                    return pending.result()
                if self._transport_closing():
                    raise ClientLeft
                if time.monotonic() - quiet_since >= self.heartbeat_s:
                    await self._write(b": ping\n\n" if self.fmt == SSE else b"\n")
                    quiet_since = time.monotonic()
        finally:
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

    async def finish(self, result: ChatResponse) -> web.StreamResponse:
        """The usual success body as the last event, unless nobody is listening any more."""
        if self.client_left or self.response is None:
            return self.response or web.Response()
        body = orjson.loads(result.model_dump_json())
        if self.fmt == SSE:
            await _quietly(self._write(_event("done", body)))
        else:
            await _quietly(self._write(_line({"type": "end", "metadata": _metadata(), "result": body})))
        await _quietly(self.response.write_eof())
        return self.response

    async def fail(self, exc: Exception) -> web.StreamResponse:
        """A failure after the first byte: the envelope as the last event (the status is already sent)."""
        failure = client_failure(exc, path=self.request.path)
        if self.response is None:
            return web.Response()
        envelope = error_envelope(failure.message, failure.code)
        if self.fmt == SSE:
            await _quietly(self._write(_event("error", envelope)))
        else:
            line = {"type": "error", "content": failure.message, "metadata": _metadata(), "error": envelope}
            await _quietly(self._write(_line(line)))
        return self.response

    async def _write(self, data: bytes) -> None:
        if self.response is None or self._transport_closing():
            raise ClientLeft
        try:
            await self.response.write(data)
        except ConnectionError:
            raise ClientLeft from None


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
