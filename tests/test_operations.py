"""Prometheus metrics and quota alerts (log event + optional webhook), once per threshold and month."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from services.auth.app import create_app as auth_app
from services.chat.app import create_app as chat_app
from tests.conftest import bearer


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_requests_by_route_and_status(make_client, settings, factory):
    client = await make_client(auth_app(settings))
    await factory.user("khora", "test123")
    labels = {"service": "auth", "route": "/webhook/auth/login", "method": "POST"}
    ok, refused = (
        sample("wibot_http_requests_total", **labels, status="200"),
        sample("wibot_http_requests_total", **labels, status="401"),
    )
    await client.post("/webhook/auth/login", json={"username": "khora", "password": "test123"})
    await client.post("/webhook/auth/login", json={"username": "khora", "password": "nope"})
    r = await client.get("/metrics")
    assert r.status == 200 and r.content_type == "text/plain"
    text = await r.text()
    assert 'wibot_http_requests_total{method="POST",route="/webhook/auth/login",service="auth",status="200"}' in text
    assert sample("wibot_http_requests_total", **labels, status="200") == ok + 1
    assert sample("wibot_http_requests_total", **labels, status="401") == refused + 1
    assert sample("wibot_http_request_duration_seconds_count", **labels) >= 2
    # A path with an id is counted under its pattern, not one series per id.
    await client.get(f"/webhook/nothing/{uuid.uuid4()}")
    assert 'route="unmatched"' in await (await client.get("/metrics")).text()


async def test_metrics_of_model_calls_and_tokens(make_client, chat_settings, factory, fake_mistral):
    client = await make_client(chat_app(chat_settings))
    user_id = await factory.user()
    calls = sample("wibot_model_call_duration_seconds_count", model="mistral-large-latest")
    spent = sample("wibot_tokens_spent_total")
    failures = sample("wibot_model_call_failures_total", reason="http_401")
    r = await client.post(
        "/webhook/wibot/chat", json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id)
    )
    tokens = (await r.json())["tokens_used"]
    assert sample("wibot_model_call_duration_seconds_count", model="mistral-large-latest") == calls + 1
    assert sample("wibot_tokens_spent_total") == spent + tokens
    fake_mistral.failures = [401]
    r = await client.post(
        "/webhook/wibot/chat", json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id)
    )
    assert r.status == 502
    assert sample("wibot_model_call_failures_total", reason="http_401") == failures + 1


@pytest.fixture
async def alert_hook(aiohttp_server) -> tuple[str, list[dict]]:
    """A webhook receiver on loopback: its URL, and the alerts it received."""
    received: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"ok": True})

    receiver = web.Application()
    receiver.router.add_post("/webhook/quota", hook)
    server = await aiohttp_server(receiver)
    return str(server.make_url("/webhook/quota")), received


async def test_quota_alerts_once_per_threshold_and_month(
    make_client, chat_settings, factory, fake_mistral, alert_hook, capsys
):
    url, received = alert_hook
    settings = chat_settings.model_copy(update={"quota_alert_webhook_url": url})
    client = await make_client(chat_app(settings))
    user_id = await factory.user("alice")
    fake_mistral.total_tokens = 2_000

    async def chat_from(used: int) -> None:
        await factory.usage(user_id, used=used, quota=100_000)
        r = await client.post(
            "/webhook/wibot/chat",
            json={"conversation_id": str(uuid.uuid4()), "message": "x"},
            headers=bearer(user_id, "alice"),
        )
        assert r.status == 200, await r.text()

    await chat_from(79_000)  # → 81,000: crosses 80 %
    await chat_from(81_000)  # → 83,000: nothing new
    await chat_from(89_500)  # → 91,500: crosses 90 %
    await chat_from(99_000)  # → 100,000 (charged up to the quota): crosses 100 %
    for _ in range(100):
        if len(received) >= 3:
            break
        await asyncio.sleep(0.02)
    assert [(a["threshold"], a["used_tokens"]) for a in received] == [(80, 81_000), (90, 91_500), (100, 100_000)]
    assert received[0] | {"threshold": 80} == {
        "event": "quota_threshold",
        "user_id": user_id,
        "username": "alice",
        "threshold": 80,
        "used_tokens": 81_000,
        "quota_tokens": 100_000,
        "month": received[0]["month"],
    }
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"quota_alert"' in line]
    assert [entry["threshold"] for entry in logged] == [80, 90, 100]


@pytest.mark.production_loop
async def test_a_dead_alert_webhook_never_fails_the_chat(make_client, chat_settings, factory, fake_mistral):
    from tests.test_chat_failures import closed_port

    settings = chat_settings.model_copy(update={"quota_alert_webhook_url": f"http://127.0.0.1:{closed_port()}/x"})
    client = await make_client(chat_app(settings))
    user_id = await factory.user()
    await factory.usage(user_id, used=95_000, quota=100_000)
    r = await client.post(
        "/webhook/wibot/chat", json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(user_id)
    )
    assert r.status == 200, await r.text()


async def test_a_threshold_crossed_in_two_processes_at_once_alerts_once(
    make_client, chat_settings, factory, fake_mistral, alert_hook, capsys, db
):
    url, received = alert_hook
    settings = chat_settings.model_copy(update={"quota_alert_webhook_url": url})
    first, second = await make_client(chat_app(settings)), await make_client(chat_app(settings))
    user_id = await factory.user("alice")
    await factory.usage(user_id, used=79_000, quota=100_000)
    fake_mistral.total_tokens = 1_500
    results = await asyncio.gather(
        *(
            client.post(
                "/webhook/wibot/chat",
                json={"conversation_id": str(uuid.uuid4()), "message": "x"},
                headers=bearer(user_id, "alice"),
            )
            for client in (first, second, first, second)
        )
    )
    assert [r.status for r in results] == [200] * 4  # 79,000 → 85,000: 80 % crossed by whichever came first
    # Decided and logged before each response (the webhook call itself runs in the background).
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"quota_alert"' in line]
    assert [entry["threshold"] for entry in logged] == [80]
    assert await db.fetchval("SELECT count(*) FROM quota_alerts") == 1
    async with asyncio.timeout(10):
        while not received:
            await asyncio.sleep(0.02)
    assert [a["threshold"] for a in received] == [80]
