"""A fake Mistral server: speaks POST /v1/chat/completions like the real API, records what it received.

One implementation for the tests (knobs: latency, failures, missing usage, garbage, hold), for `make run`
when no MISTRAL_API_KEY is set (a development stand-in: its replies say so), and for the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
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
    answered: int = 0  # completions sent back (what a user may have been given)
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


def create_app(state: FakeMistral | None = None) -> web.Application:
    state = state or FakeMistral()
    app = web.Application(client_max_size=64 * 1024 * 1024)

    async def chat_completions(request: web.Request) -> web.Response:
        body = await request.json()
        state.record(body)
        if state.hold is not None:
            await state.hold.wait()
        if state.latency_s:
            await asyncio.sleep(state.latency_s)
        if state.failures:
            status = state.failures.pop(0)
            if status != 200:
                return web.json_response({"object": "error", "message": f"fake failure {status}"}, status=status)
        if state.garbage:
            return web.Response(text="<html>definitely not json</html>", content_type="application/json")
        response = web.json_response(completion_body(state, body))
        state.answered += 1
        return response

    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/models/chat/completions", chat_completions)  # the Azure-hosted path
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.fake_mistral", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    print(
        f"!!! FAKE MISTRAL on http://{args.host}:{args.port} - development stand-in, NOT a real model."
        f" Set MISTRAL_API_KEY to use Mistral. latency={args.latency_ms} ms",
        flush=True,
    )
    state = FakeMistral(latency_s=args.latency_ms / 1000)
    web.run_app(create_app(state), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
