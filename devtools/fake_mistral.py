"""A fake Mistral server: speaks POST /v1/chat/completions and /v1/embeddings like the real API, records what it
received.

Its embeddings are deterministic: hashed words (accents and case folded, French stop words dropped) and word
prefixes, so texts that share words are close and unrelated texts nearly orthogonal; retrieval is testable
end to end (bench/knowledge.py measures its recall).

One implementation for the tests (knobs: latency, failures, missing usage, garbage, hold), for `make run`
when no MISTRAL_API_KEY is set (a development stand-in: its replies say so), and for the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import time
import unicodedata
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

REPLY_PREFIX = "[fake-mistral] Réponse de développement, aucun modèle réel n'a été appelé."


@dataclass
class FakeMistral:
    # The last requests received (bounded: the fake also runs for hours under `make run` and the benchmark).
    received: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=1000))
    latency_s: float = 0.0
    # Statuses answered (one per request, in order) before behaving normally, e.g. [429, 200].
    failures: list[int] = field(default_factory=list)
    omit_usage: bool = False
    garbage: bool = False
    reply: str | None = None
    total_tokens: int | None = None  # force usage.total_tokens (prompt/completion split around it)
    hold: asyncio.Event | None = None  # requests wait for it to be set
    embedding_hold: asyncio.Event | None = None  # the same for embedding requests
    # Streaming (`"stream": true`): the reply in chunks of `chunk_chars`, one every `chunk_delay_s`; the
    # connection dropped after `fail_after_chunks` chunks; usage left out of the last chunk with omit_usage.
    chunk_chars: int = 8
    chunk_delay_s: float = 0.0
    fail_after_chunks: int | None = None
    chunks_sent: int = 0  # text chunks written to clients, all streams together
    streams_closed_early: int = 0  # streams whose reader went away before the end
    answered: int = 0  # completions sent back (what a user may have been given)
    abandoned: int = 0  # completions whose caller hung up before they were answered
    embedded: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=1000))  # /v1/embeddings bodies
    embedding_failures: list[int] = field(default_factory=list)  # like `failures`, for /v1/embeddings
    _arrival: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, body: dict[str, Any]) -> None:
        self.received.append(body)
        self._arrival.set()

    async def wait_for_requests(self, count: int = 1, *, within_s: float = 10.0) -> None:
        """Until `count` requests have arrived (tests wait for the event, never for a duration)."""
        async with asyncio.timeout(within_s):
            while len(self.received) < count:
                self._arrival.clear()
                await self._arrival.wait()

    def reply_for(self, body: dict[str, Any]) -> str:
        if self.reply is not None:
            return self.reply
        last = next((m.get("content", "") for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
        return f"{REPLY_PREFIX} Vous avez écrit : {str(last)[:80]}"


def estimate(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def completion_body(state: FakeMistral, body: dict[str, Any]) -> dict[str, Any]:
    text = state.reply_for(body)
    prompt = sum(estimate(str(m.get("content", ""))) for m in body.get("messages", []))
    completion = estimate(text)
    if state.total_tokens is not None:
        completion = min(completion, state.total_tokens)
        prompt = state.total_tokens - completion
    result: dict[str, Any] = {
        "id": f"fake-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }
    # A server that counts nothing still sends the (required) usage object, with no counts in it.
    counts = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    result["usage"] = {} if state.omit_usage else counts
    return result


async def stream_completion(state: FakeMistral, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """Mistral's streaming answer: `data: <chunk>` lines, usage in the last chunk, then `data: [DONE]`."""
    full = completion_body(state, body)
    text = full["choices"][0]["message"]["content"]
    base = {"id": full["id"], "object": "chat.completion.chunk", "created": full["created"], "model": full["model"]}
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)

    async def send(choice: dict[str, Any], **extra: Any) -> None:
        await response.write(f"data: {json.dumps({**base, 'choices': [choice], **extra})}\n\n".encode())

    try:
        await send({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
        pieces = [text[i : i + state.chunk_chars] for i in range(0, len(text), state.chunk_chars)]
        for number, piece in enumerate(pieces):
            if state.fail_after_chunks is not None and number >= state.fail_after_chunks:
                assert request.transport is not None
                request.transport.close()  # the upstream dies mid-reply
                return response
            if state.chunk_delay_s and number:
                await asyncio.sleep(state.chunk_delay_s)
            await send({"index": 0, "delta": {"content": piece}, "finish_reason": None})
            state.chunks_sent += 1
        usage = {} if state.omit_usage else {"usage": full["usage"]}
        await send({"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}, **usage)
        await response.write(b"data: [DONE]\n\n")
        state.answered += 1
        await response.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        state.streams_closed_early += 1
        raise
    return response


EMBEDDING_DIMENSION = 1024
STOP_WORDS = frozenset(
    "les des une un le la du de et en est pour que qui dans sur par au aux avec son ses sont pas plus "
    "comment quel quelle quels quelles faut faire doit peut on il elle nous vous je tu ce cette ces".split()
)
_WORD = re.compile(r"[a-z0-9]+")


def features(text: str) -> list[str]:
    folded = unicodedata.normalize("NFKD", text.lower()).encode("ascii", "ignore").decode()
    words = [w for w in _WORD.findall(folded) if len(w) > 2 and w not in STOP_WORDS]
    return words + [f"{w[:5]}~" for w in words if len(w) > 5]


def fake_embedding(text: str) -> list[float]:
    vector = [0.0] * EMBEDDING_DIMENSION
    for feature in features(text):
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        slot = int.from_bytes(digest[:4], "little") % EMBEDDING_DIMENSION
        vector[slot] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [round(v / norm, 6) for v in vector]


def embeddings_body(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body.get("inputs", body.get("input", []))
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    tokens = sum(estimate(str(text)) for text in texts)
    return {
        "id": f"fake-{uuid.uuid4().hex[:12]}",
        "object": "list",
        "model": body.get("model", "fake-embed"),
        "data": [{"object": "embedding", "index": i, "embedding": fake_embedding(str(t))} for i, t in enumerate(texts)],
        "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens},
    }


def create_app(state: FakeMistral | None = None) -> web.Application:
    state = state or FakeMistral()
    app = web.Application(client_max_size=64 * 1024 * 1024)

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state.record(body)
        if state.hold is not None:
            try:
                await state.hold.wait()
            except asyncio.CancelledError:  # the caller closed the connection (this server cancels handlers)
                state.abandoned += 1
                raise
        if state.latency_s:
            await asyncio.sleep(state.latency_s)
        if state.failures:
            status = state.failures.pop(0)
            if status != 200:
                return web.json_response({"object": "error", "message": f"fake failure {status}"}, status=status)
        if state.garbage:
            return web.Response(text="<html>definitely not json</html>", content_type="application/json")
        if body.get("stream"):
            return await stream_completion(state, request, body)
        response = web.json_response(completion_body(state, body))
        state.answered += 1
        return response

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        state.embedded.append(body)
        if state.embedding_hold is not None:
            await state.embedding_hold.wait()
        if state.embedding_failures:
            status = state.embedding_failures.pop(0)
            if status != 200:
                return web.json_response({"object": "error", "message": f"fake failure {status}"}, status=status)
        return web.json_response(embeddings_body(body))

    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/models/chat/completions", chat_completions)  # the Azure-hosted path
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.fake_mistral", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="between two chunks of a streamed reply")
    args = parser.parse_args()
    print(
        f"!!! FAKE MISTRAL on http://{args.host}:{args.port} - development stand-in, NOT a real model."
        f" Set MISTRAL_API_KEY to use Mistral. latency={args.latency_ms} ms",
        flush=True,
    )
    state = FakeMistral(latency_s=args.latency_ms / 1000, chunk_delay_s=args.chunk_delay_ms / 1000)
    web.run_app(create_app(state), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
