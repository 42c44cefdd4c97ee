"""How much of a chat is the mistralai SDK: the same request to the same fake server on loopback, through
`client.chat.complete_async` and through a raw aiohttp POST, in one run (ratio is the figure to read). Also the
SDK with its own `get_body_content` (services/chat/sdk_models.py replaces it): the whole body rendered as text
for a debug line nobody logs, which a long conversation (`--memory-chars`) makes visible.

    python -m bench.sdk_overhead [--calls 200] [--memory-chars 340000]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp.test_utils import TestServer
from mistralai.client import basesdk
from mistralai.client.utils.logger import get_body_content as sdk_get_body_content

from devtools.fake_mistral import FakeMistral, create_app
from services.chat.llm import build_client, request_fields
from services.chat.model_transport import model_http_client, model_session
from services.chat.prompt import DEFAULT_SYSTEM_PROMPT
from shared import Settings


async def timed(calls: int, call: Callable[[], Awaitable[object]]) -> float:
    """Milliseconds per call, averaged over `calls`."""
    started = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - started) / calls * 1000


async def measure(calls: int, memory_chars: int) -> tuple[float, float, float]:
    fake = TestServer(create_app(FakeMistral()))
    await fake.start_server()
    url = str(fake.make_url("")).rstrip("/")
    settings = Settings(
        _env_file=None, jwt_secret=secrets.token_urlsafe(48), mistral_server_url=url, mistral_api_key="k"
    )
    # A conversation's memory: ten earlier messages sharing `memory_chars` characters (French: accents included).
    turn = ("Relevé de l'onduleur de la baie électrique : " * (memory_chars // 450 + 1))[: memory_chars // 10]
    memory = [{"role": ("user", "assistant")[n % 2], "content": turn} for n in range(10)] if memory_chars else []
    messages = [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        *memory,
        {"role": "user", "content": "Bonjour"},
    ]
    body = {"model": "m", "messages": messages, "max_tokens": 100}
    async with model_session() as model_connections, aiohttp.ClientSession() as session:
        client = build_client(settings, model_http_client(model_connections))  # as the chat service builds it

        async def sdk_call() -> object:
            return await client.chat.complete_async(**request_fields(settings, "m", messages, 100))

        async def raw_call() -> object:
            async with session.post(url + "/v1/chat/completions", json=body) as response:
                return await response.json()

        await timed(20, sdk_call)  # warm-up: connections, caches
        sdk = await timed(calls, sdk_call)
        ours = basesdk.get_body_content  # type: ignore[attr-defined]
        basesdk.get_body_content = sdk_get_body_content  # type: ignore[attr-defined]  # the SDK as shipped
        try:
            rendered = await timed(calls, sdk_call)
        finally:
            basesdk.get_body_content = ours  # type: ignore[attr-defined]
        raw = await timed(calls, raw_call)
    await fake.close()
    return sdk, rendered, raw


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sdk_overhead")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--memory-chars", type=int, default=0, help="a conversation's memory sent with each call")
    args = parser.parse_args()
    sdk, rendered, raw = asyncio.run(measure(args.calls, args.memory_chars))
    print(
        f"mistralai SDK: {sdk:.2f} ms/call ({rendered:.2f} rendering its body for its debug log),"
        f" raw aiohttp POST: {raw:.2f} ms/call, ratio {sdk / raw:.1f}x ({rendered / raw:.1f}x)"
    )


if __name__ == "__main__":
    main()
