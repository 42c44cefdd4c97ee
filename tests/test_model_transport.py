"""services/chat/model_transport.py: the SDK's requests sent through aiohttp, its failures as the httpx2 errors the
SDK retries and llm.py maps, its hooks inline unless one may block; sdk_models' lazy names kept once resolved.
Against small aiohttp servers on loopback and the real mistralai SDK."""

from __future__ import annotations

import asyncio
import gzip
import secrets

import httpx2
import orjson
import pytest
from aiohttp import web

from devtools.stack import free_ports
from services.chat import llm, model_transport, sdk_models
from services.chat.model_transport import model_http_client, model_session
from shared import Settings

COMPLETION = {
    "id": "x",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Bonjour"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}


def settings_for(url: str, **overrides: object) -> Settings:
    return Settings(
        _env_file=None,
        jwt_secret=secrets.token_urlsafe(48),
        mistral_server_url=url,
        mistral_api_key="k",
        mistral_retry_max_elapsed_s=0,
        **overrides,
    )


async def test_a_gzip_answer_is_decoded_once_and_the_request_arrives_whole(aiohttp_server):
    received = []

    async def completions(request: web.Request) -> web.Response:
        received.append((request.headers.get("Authorization"), await request.json()))
        body = gzip.compress(orjson.dumps(COMPLETION))
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    server = await aiohttp_server(app)
    settings = settings_for(str(server.make_url("")).rstrip("/"))
    async with model_session() as session:
        client = llm.build_client(settings, model_http_client(session))
        messages = [{"role": "system", "content": "Tu es WIBOT"}, {"role": "user", "content": "Salut"}]
        reply = await llm.complete(client, settings, model="m", messages=messages, max_tokens=50)
    assert (reply.text, reply.total_tokens, reply.completion_tokens) == ("Bonjour", 5, 2)
    authorization, body = received[0]
    assert authorization == "Bearer k"
    assert body["messages"] == messages and body["max_tokens"] == 50


async def test_nothing_listening_is_a_connect_error():
    port = free_ports(1)[0]
    async with model_session() as session, model_http_client(session) as client:
        with pytest.raises(httpx2.ConnectError):
            await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={})


async def test_a_silent_server_is_a_read_timeout(aiohttp_server):
    async def silent(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    app = web.Application()
    app.router.add_post("/slow", silent)
    server = await aiohttp_server(app)
    async with model_session() as session, model_http_client(session) as client:
        with pytest.raises(httpx2.ReadTimeout):
            await client.post(str(server.make_url("/slow")), json={}, timeout=httpx2.Timeout(0.2))


async def test_a_stream_left_midway_drops_its_connection(aiohttp_server):
    """The model stops working for nobody: closing a stream before its end closes the connection under it."""
    gone = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            while True:
                await response.write(b"data: {}\n\n")
                await asyncio.sleep(0.01)
        except (ConnectionResetError, asyncio.CancelledError):
            gone.set()
            raise
        return response

    app = web.Application(handler_args={"handler_cancellation": True})
    app.router.add_get("/stream", endless)
    server = await aiohttp_server(app)
    async with model_session() as session, model_http_client(session) as client:
        async with client.stream("GET", str(server.make_url("/stream"))) as response:
            async for _ in response.aiter_bytes():
                break
        await asyncio.wait_for(gone.wait(), timeout=5)


def test_hooks_run_inline_unless_one_may_block(monkeypatch):
    from mistralai.client import basesdk

    for name in [n for n in __import__("os").environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("MISTRAL_SA_TOKEN_PATH", raising=False)
    assert model_transport.run_hooks_inline() is True
    assert basesdk.run_sync_in_thread is model_transport.run_inline
    monkeypatch.setenv("MISTRAL_SA_TOKEN_PATH", "/var/run/secrets/mistral/token")  # a file read on every call
    assert model_transport.run_hooks_inline() is False
    assert basesdk.run_sync_in_thread is not model_transport.run_inline
    monkeypatch.delenv("MISTRAL_SA_TOKEN_PATH")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")  # spans exported
    assert model_transport.run_hooks_inline() is False
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    assert model_transport.run_hooks_inline() is True


def test_the_sdks_lazy_names_are_kept_once_resolved():
    from mistralai.client import models, utils

    assert sdk_models.install() is True
    assert utils.get_pydantic_model is utils.get_pydantic_model
    assert "get_pydantic_model" in vars(utils)  # the next access is a plain module attribute
    assert models.ChatCompletionRequest.__name__ == "ChatCompletionRequest"
    assert "ChatCompletionRequest" in vars(models)
