"""Streamed chat replies (SSE and n8n's JSON lines) against real PostgreSQL and the fake Mistral server's real
SSE stream, read through the mistralai SDK's streaming API. Same quota and persistence rules as the JSON
answer: refusals before the first byte keep their status, a model failure mid-stream saves nothing and
refunds, a client that leaves mid-stream is charged for the text produced and the partial exchange is kept."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import pytest

from services.chat.app import create_app
from services.chat.llm import estimate_tokens
from tests.conftest import bearer, make_settings

CHAT = "/webhook/wibot/chat"
SSE = {"Accept": "text/event-stream"}
NDJSON = {"Accept": "application/x-ndjson"}
LONG_REPLY = "Pour réinitialiser le mot de passe AD, ouvrez la console, cherchez le compte puis validez. " * 3


@pytest.fixture
async def client(make_client, chat_settings):
    return await make_client(create_app(chat_settings))


@pytest.fixture
async def user_id(factory):
    return await factory.user("khora")


def chat(message: str = "Bonjour", **extra) -> dict:
    return {"conversation_id": str(uuid.uuid4()), "message": message, **extra}


def sse_events(raw: str) -> list[tuple[str, object]]:
    """(event, data) of each SSE event, comments (heartbeats) as ("comment", text)."""
    events = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        if block.startswith(":"):
            events.append(("comment", block[1:].strip()))
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_sse_streams_deltas_then_the_usual_success_body(client, user_id, db, fake_mistral):
    fake_mistral.reply = LONG_REPLY
    r = await client.post(CHAT, json=chat("Mot de passe AD ?"), headers={**bearer(user_id), **SSE})
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert r.headers["X-Accel-Buffering"] == "no" and r.headers["Cache-Control"] == "no-cache"
    events = sse_events(await r.text())
    deltas = [data["content"] for name, data in events if name == "delta"]
    assert len(deltas) > 10 and "".join(deltas) == LONG_REPLY
    assert [name for name, _ in events][-1] == "done"
    done = events[-1][1]
    assert set(done) == {"success", "response", "tokens_used", "tokens_remaining", "conversation_id"}
    assert done["success"] is True and done["response"] == LONG_REPLY
    # Settled with the usage the server sent in its last chunk, as the JSON answer would be.
    usage = fake_mistral.received[-1]
    assert usage["stream"] is True
    rows = await db.fetch("SELECT role, content, tokens FROM messages ORDER BY message_id")
    assert [(row["role"], row["content"]) for row in rows] == [("user", "Mot de passe AD ?"), ("assistant", LONG_REPLY)]
    assert sum(row["tokens"] for row in rows) == done["tokens_used"]
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage") == done["tokens_used"]
    assert done["tokens_remaining"] == 50_000 - done["tokens_used"]
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 0


async def test_stream_true_in_the_body_is_the_same_opt_in(client, user_id, fake_mistral):
    r = await client.post(CHAT, json=chat(stream=True), headers=bearer(user_id))
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert sse_events(await r.text())[-1][0] == "done"


async def test_without_opt_in_the_answer_is_the_json_body_as_before(client, user_id, fake_mistral):
    r = await client.post(CHAT, json=chat(stream=False), headers=bearer(user_id))
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert set(await r.json()) == {"success", "response", "tokens_used", "tokens_remaining", "conversation_id"}
    assert "stream" not in fake_mistral.received[-1] or fake_mistral.received[-1]["stream"] is False


async def test_ndjson_is_n8ns_streaming_shape(client, user_id, db, fake_mistral):
    fake_mistral.reply = LONG_REPLY
    r = await client.post(CHAT, json=chat(), headers={**bearer(user_id), **NDJSON})
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/x-ndjson; charset=utf-8"
    lines = [json.loads(line) for line in (await r.text()).splitlines() if line.strip()]
    types = [line["type"] for line in lines]
    assert types[0] == "begin" and types[-1] == "end" and set(types[1:-1]) == {"item"}
    assert "".join(line["content"] for line in lines if line["type"] == "item") == LONG_REPLY
    for line in lines:  # n8n's StructuredChunk metadata
        assert set(line["metadata"]) == {"nodeId", "nodeName", "timestamp", "runIndex", "itemIndex"}
    assert lines[-1]["result"]["response"] == LONG_REPLY and lines[-1]["result"]["success"] is True
    assert await db.fetchval("SELECT count(*) FROM messages") == 2


@pytest.mark.parametrize("accept", [SSE, NDJSON])
async def test_refusals_before_the_first_byte_keep_their_status_and_envelope(client, user_id, db, factory, accept):
    r = await client.post(CHAT, json=chat(""), headers={**bearer(user_id), **accept})
    assert (r.status, r.content_type) == (400, "application/json")
    assert (await r.json())["code"] == "VALIDATION_ERROR"

    r = await client.post(CHAT, json=chat(), headers={"Authorization": "Bearer nope", **accept})
    assert (r.status, (await r.json())["code"]) == (401, "INVALID_TOKEN")

    await factory.usage(user_id, used=50_000, quota=50_000)
    r = await client.post(CHAT, json=chat(), headers={**bearer(user_id), **accept})
    assert r.status == 429
    assert (await r.json())["code"] == "QUOTA_EXCEEDED"


@pytest.mark.parametrize("accept", [SSE, NDJSON])
@pytest.mark.production_loop
async def test_a_model_that_fails_before_its_first_chunk_is_the_usual_503(client, user_id, db, fake_mistral, accept):
    fake_mistral.failures = [503] * 200  # beyond the retries
    r = await client.post(CHAT, json=chat(), headers={**bearer(user_id), **accept})
    assert (r.status, r.content_type) == (503, "application/json")
    assert (await r.json())["code"] == "LLM_UNAVAILABLE"
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT COALESCE(sum(used_tokens), 0) FROM user_token_usage") == 0


@pytest.mark.production_loop
async def test_a_model_failure_mid_stream_ends_with_an_error_event_saves_nothing_and_refunds(
    client, user_id, db, fake_mistral
):
    fake_mistral.reply = LONG_REPLY
    fake_mistral.fail_after_chunks = 3
    r = await client.post(CHAT, json=chat(), headers={**bearer(user_id), **SSE})
    assert r.status == 200  # the stream had started
    events = sse_events(await r.text())
    assert [name for name, _ in events] == ["delta", "delta", "delta", "error"]
    assert events[-1][1]["success"] is False and events[-1][1]["code"] in {"LLM_UNAVAILABLE", "LLM_TIMEOUT"}
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage") == 0  # reservation refunded
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 0


@pytest.mark.production_loop
async def test_a_model_failure_mid_stream_in_ndjson_is_an_error_line(client, user_id, fake_mistral):
    fake_mistral.reply = LONG_REPLY
    fake_mistral.fail_after_chunks = 2
    r = await client.post(CHAT, json=chat(), headers={**bearer(user_id), **NDJSON})
    lines = [json.loads(line) for line in (await r.text()).splitlines() if line.strip()]
    assert [line["type"] for line in lines] == ["begin", "item", "item", "error"]
    assert lines[-1]["content"] == lines[-1]["error"]["error"]  # what n8n's widget shows


async def test_without_usage_in_the_last_chunk_the_charge_is_the_estimate(client, user_id, db, fake_mistral):
    fake_mistral.reply = LONG_REPLY
    fake_mistral.omit_usage = True
    r = await client.post(CHAT, json=chat(), headers={**bearer(user_id), **SSE})
    done = sse_events(await r.text())[-1][1]
    sent = fake_mistral.received[-1]["messages"]
    expected = estimate_tokens(sum(len(m["content"]) for m in sent) + len(LONG_REPLY))
    assert done["tokens_used"] == expected
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage") == expected


async def test_heartbeats_while_the_model_is_quiet(make_client, database_url, fake_mistral, user_id):
    settings = make_settings(database_url, mistral_server_url=fake_mistral.url, stream_heartbeat_s=0.05)
    client = await make_client(create_app(settings))
    fake_mistral.reply = "un deux trois quatre cinq six"
    fake_mistral.chunk_delay_s = 0.3
    r = await client.post(CHAT, json=chat(), headers={**bearer(user_id), **SSE})
    events = sse_events(await r.text())
    assert ("comment", "ping") in events
    assert events[-1][0] == "done"


@pytest.mark.production_loop
async def test_a_client_that_leaves_mid_stream_is_charged_for_what_was_produced(
    make_client, chat_settings, user_id, db, fake_mistral
):
    """The model call is dropped, the partial exchange saved with the question, its tokens charged."""
    fake_mistral.reply = LONG_REPLY
    fake_mistral.chunk_delay_s = 0.05
    client = await make_client(create_app(chat_settings))
    url = str(client.make_url(CHAT))
    conversation = str(uuid.uuid4())
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            url,
            json={"conversation_id": conversation, "message": "Longue question"},
            headers={**bearer(user_id), **SSE},
        )
        received = b""
        while received.count(b"event: delta") < 3:
            received += await response.content.readany()
        response.connection.transport.abort()  # the client closes its socket mid-reply
        response.release()

    async def saved() -> list:
        while not (rows := await db.fetch("SELECT role, content, tokens FROM messages ORDER BY message_id")):
            await asyncio.sleep(0.05)
        return rows

    rows = await asyncio.wait_for(saved(), timeout=10)
    assert [row["role"] for row in rows] == ["user", "assistant"]
    partial = rows[1]["content"]
    assert partial and LONG_REPLY.startswith(partial) and len(partial) < len(LONG_REPLY)
    await asyncio.wait_for(_until(lambda: fake_mistral.streams_closed_early == 1), timeout=10)  # model call dropped
    assert fake_mistral.chunks_sent < len(LONG_REPLY) // fake_mistral.chunk_chars
    used = await db.fetchval("SELECT used_tokens FROM user_token_usage")
    assert used == rows[0]["tokens"] + rows[1]["tokens"] > 0
    assert rows[1]["tokens"] == estimate_tokens(len(partial))  # the completion produced so far
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 0


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.05)


@pytest.mark.production_loop
async def test_failures_before_the_first_chunk_are_retried_like_the_json_call(client, user_id, db, fake_mistral):
    fake_mistral.failures = [503, 429]
    r = await client.post(CHAT, json=chat(), headers={**bearer(user_id), **SSE})
    assert r.status == 200
    assert sse_events(await r.text())[-1][0] == "done"
    assert len(fake_mistral.received) == 3  # two refusals, then the stream
    assert await db.fetchval("SELECT count(*) FROM messages") == 2


async def test_a_stream_without_any_text_is_the_usual_502(client, user_id, db, fake_mistral):
    fake_mistral.reply = ""
    r = await client.post(CHAT, json=chat(), headers={**bearer(user_id), **SSE})
    assert (r.status, r.content_type) == (502, "application/json")
    assert (await r.json())["code"] == "LLM_UNAVAILABLE"
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage") == 0
