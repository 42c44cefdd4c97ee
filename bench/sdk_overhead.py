"""How much of a chat is the mistralai SDK: the same request to the same fake server on loopback, through
`client.chat.complete_async` and through a raw aiohttp POST, in one run (ratio is the figure to read).

    python -m bench.sdk_overhead [--calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time

import aiohttp
from aiohttp.test_utils import TestServer

from devtools.fake_mistral import FakeMistral, create_app
from services.chat.llm import build_client, request_fields
from services.chat.model_transport import model_http_client, model_session
from services.chat.prompt import DEFAULT_SYSTEM_PROMPT
from shared import Settings


async def measure(calls: int) -> tuple[float, float]:
    fake = TestServer(create_app(FakeMistral()))
    await fake.start_server()
    url = str(fake.make_url("")).rstrip("/")
    settings = Settings(
        _env_file=None, jwt_secret=secrets.token_urlsafe(48), mistral_server_url=url, mistral_api_key="k"
    )
    messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": "Bonjour"}]
    body = {"model": "m", "messages": messages, "max_tokens": 100}
    async with model_session() as model_connections, aiohttp.ClientSession() as session:
        client = build_client(settings, model_http_client(model_connections))  # as the chat service builds it
        for _ in range(20):  # warm-up: connections, caches
            await client.chat.complete_async(**request_fields(settings, "m", messages, 100))
        started = time.perf_counter()
        for _ in range(calls):
            await client.chat.complete_async(**request_fields(settings, "m", messages, 100))
        sdk = (time.perf_counter() - started) / calls * 1000
        started = time.perf_counter()
        for _ in range(calls):
            async with session.post(url + "/v1/chat/completions", json=body) as response:
                await response.json()
        raw = (time.perf_counter() - started) / calls * 1000
    await fake.close()
    return sdk, raw


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sdk_overhead")
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    sdk, raw = asyncio.run(measure(args.calls))
    print(f"mistralai SDK: {sdk:.2f} ms/call, raw aiohttp POST: {raw:.2f} ms/call, ratio {sdk / raw:.1f}x")


if __name__ == "__main__":
    main()
