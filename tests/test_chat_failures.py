"""Model failures: the right envelope, nothing written, the reservation refunded (fake Mistral's knobs)."""

from __future__ import annotations

import pytest

from devtools.stack import free_ports
from services.chat.app import create_app
from tests.conftest import bearer

pytestmark = pytest.mark.production_loop  # each test runs on asyncio and on uvloop (conftest)

CHAT = "/webhook/wibot/chat"
CID = "550e8400-e29b-41d4-a716-446655440000"
UNAVAILABLE = "Le service IA est momentanément indisponible. Réessayez dans quelques instants."
TIMEOUT = "Le service IA met trop de temps à répondre. Réessayez dans quelques instants."
BAD_REPLY = "Le service IA a renvoyé une réponse inexploitable. Réessayez dans quelques instants."


def closed_port() -> int:
    return free_ports(1)[0]  # free a moment ago: nothing listens there


async def assert_nothing_written(db) -> None:
    from tests.figures import FIGURES

    FIGURES["faults_injected"] += 1
    FIGURES["rows_lost"] += await db.fetchval("SELECT count(*) FROM messages")
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0
    assert await db.fetchval("SELECT coalesce(sum(used_tokens), 0) FROM user_token_usage") == 0


@pytest.mark.parametrize(
    ("knobs", "status", "message", "code", "attempts"),
    [
        ({"failures": [500] * 50}, 502, UNAVAILABLE, "LLM_UNAVAILABLE", None),
        ({"failures": [503] * 50}, 503, UNAVAILABLE, "LLM_UNAVAILABLE", None),
        ({"failures": [429] * 50}, 503, UNAVAILABLE, "LLM_UNAVAILABLE", None),
        ({"failures": [401]}, 502, UNAVAILABLE, "LLM_UNAVAILABLE", 1),  # a bad API key is not retried
        ({"garbage": True}, 502, BAD_REPLY, "LLM_UNAVAILABLE", 1),
        ({"reply": ""}, 502, BAD_REPLY, "LLM_UNAVAILABLE", 1),
        ({"latency_s": 3.0}, 504, TIMEOUT, "LLM_TIMEOUT", None),
    ],
)
async def test_model_failure_answers_an_envelope_and_writes_nothing(
    make_client, chat_settings, factory, db, fake_mistral, knobs, status, message, code, attempts
):
    # The retry budget (0.3 s) ends long before the call's deadline (10 s), so a loaded machine cannot turn a
    # 502/503 into a 504; only the slow-model case meets the deadline, made short for it.
    timeout_s = 0.5 if "latency_s" in knobs else 10.0
    limits = {"mistral_timeout_s": timeout_s, "mistral_retry_max_elapsed_s": 0.3, "mistral_retry_initial_ms": 20}
    client = await make_client(create_app(chat_settings.model_copy(update=limits)))
    user_id = await factory.user()
    for name, value in knobs.items():  # a copy: the fake pops its failures, and the parameters serve both loops
        setattr(fake_mistral, name, list(value) if isinstance(value, list) else value)
    r = await client.post(CHAT, json={"conversation_id": CID, "message": "Bonjour"}, headers=bearer(user_id))
    assert r.status == status, await r.text()
    assert await r.json() == {"success": False, "error": message, "code": code}
    await assert_nothing_written(db)
    if attempts is not None:
        assert len(fake_mistral.received) == attempts
    elif "failures" in knobs:
        assert len(fake_mistral.received) >= 2  # retried with backoff before giving up


async def test_connection_refused_is_a_503(make_client, chat_settings, factory, db):
    settings = chat_settings.model_copy(
        update={"mistral_server_url": f"http://127.0.0.1:{closed_port()}", "mistral_retry_max_elapsed_s": 0.2}
    )
    client = await make_client(create_app(settings))
    user_id = await factory.user()
    r = await client.post(CHAT, json={"conversation_id": CID, "message": "Bonjour"}, headers=bearer(user_id))
    assert r.status == 503, await r.text()
    assert await r.json() == {"success": False, "error": UNAVAILABLE, "code": "LLM_UNAVAILABLE"}
    await assert_nothing_written(db)


async def test_429_then_200_is_retried_into_a_success(make_client, chat_settings, factory, db, fake_mistral):
    client = await make_client(create_app(chat_settings))
    user_id = await factory.user()
    fake_mistral.failures = [429, 502]
    r = await client.post(CHAT, json={"conversation_id": CID, "message": "Bonjour"}, headers=bearer(user_id))
    assert r.status == 200, await r.text()
    assert len(fake_mistral.received) == 3
    body = await r.json()
    assert await db.fetchval("SELECT used_tokens FROM user_token_usage") == body["tokens_used"]
    assert await db.fetchval("SELECT count(*) FROM messages") == 2


async def test_the_timeout_bounds_the_whole_call_retries_included(
    make_client, chat_settings, factory, db, fake_mistral
):
    """MISTRAL_TIMEOUT_S is for one call with all its retries: a retry budget far longer cannot stretch it."""
    limits = {"mistral_timeout_s": 0.5, "mistral_retry_max_elapsed_s": 60, "mistral_retry_initial_ms": 50}
    client = await make_client(create_app(chat_settings.model_copy(update=limits)))
    user_id = await factory.user()
    fake_mistral.failures = [500] * 10_000
    r = await client.post(CHAT, json={"conversation_id": CID, "message": "Bonjour"}, headers=bearer(user_id))
    assert r.status == 504, await r.text()
    assert await r.json() == {"success": False, "error": TIMEOUT, "code": "LLM_TIMEOUT"}
    assert len(fake_mistral.received) >= 1
    await assert_nothing_written(db)
