"""Every failure leaves as {"success": false, "error", "code"?}: ours, aiohttp's own, bad bodies, crashes."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from services.auth.app import create_app
from shared import SERVER_ERROR_MESSAGE

LOGIN = "/webhook/auth/login"


@pytest.fixture
async def client(make_client, settings):
    app = create_app(settings.model_copy(update={"max_body_bytes": 1024}))

    async def boom(request: web.Request) -> web.Response:
        password = "hunter2-local-variable"  # a frame local: must not reach the log
        raise RuntimeError("secret detail: connection string postgres://x:y@z" + password[:0])

    app.router.add_get("/boom", boom)
    return await make_client(app)


async def test_unknown_route_is_a_404_envelope(client):
    r = await client.post("/webhook/wibot/xyz", json={})
    assert r.status == 404, await r.text()
    assert await r.json() == {"success": False, "error": "Ressource introuvable"}


async def test_wrong_method_is_a_405_envelope(client):
    r = await client.get(LOGIN)
    assert r.status == 405, await r.text()
    assert await r.json() == {"success": False, "error": "Méthode non autorisée pour cette ressource"}
    assert r.headers["Allow"] == "POST"


async def test_body_over_the_limit_is_a_413_envelope(client):
    r = await client.post(
        LOGIN, data=json.dumps({"username": "x" * 2000, "password": "y"}), headers={"Content-Type": "application/json"}
    )
    assert r.status == 413, await r.text()
    assert await r.json() == {"success": False, "error": "Requête trop volumineuse"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"username": "khora",', "Corps de requête invalide : JSON mal formé"),
        (b"", "Corps de requête manquant : un objet JSON est attendu"),
        (b'["khora", "test123"]', "Corps de requête invalide : un objet JSON est attendu"),
        (b'"khora"', "Corps de requête invalide : un objet JSON est attendu"),
        (b"null", "Corps de requête invalide : un objet JSON est attendu"),
        (b'{"username": "\xff\xfe"}', "Corps de requête invalide : encodage UTF-8 attendu"),
        (b"[" * 200 + b"]" * 200, "Corps de requête invalide : un objet JSON est attendu"),
    ],
)
async def test_bad_bodies_are_400_envelopes(client, raw, message):
    r = await client.post(LOGIN, data=raw, headers={"Content-Type": "application/json"})
    assert r.status == 400, await r.text()
    assert await r.json() == {"success": False, "error": message}


async def test_deeply_nested_json_is_a_400_not_a_crash(make_client, settings):
    client = await make_client(create_app(settings))
    r = await client.post(LOGIN, data=b"[" * 100_000 + b"]" * 100_000, headers={"Content-Type": "application/json"})
    assert r.status == 400, await r.text()
    assert (await r.json())["success"] is False


async def test_unexpected_exception_is_a_500_envelope_without_details(client, capsys):
    r = await client.get("/boom", headers={"X-Request-ID": "req-123"})
    assert r.status == 500, await r.text()
    body = await r.text()
    assert json.loads(body) == {"success": False, "error": SERVER_ERROR_MESSAGE}
    assert "secret detail" not in body
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    failure = [entry for entry in lines if entry["event"] == "request_failed"]
    assert len(failure) == 1 and failure[0]["request_id"] == "req-123" and failure[0]["status"] == 500
    assert "secret detail" in json.dumps(failure[0])  # details stay in the log
    assert "hunter2" not in json.dumps(failure[0])  # but not the frames' local variables


async def test_request_id_is_echoed_or_generated(client, capsys):
    r = await client.post(LOGIN, json={}, headers={"X-Request-ID": "abc-42"})
    assert r.headers["X-Request-ID"] == "abc-42"
    r = await client.post(LOGIN, json={}, headers={"X-Request-ID": 'bad id {"forged": 1}'})
    generated = r.headers["X-Request-ID"]
    assert len(generated) == 32 and generated != "abc-42"
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    requests = [entry for entry in lines if entry["event"] == "request"]
    assert [entry["request_id"] for entry in requests] == ["abc-42", generated]
    assert all(entry["status"] == 400 and entry["path"] == LOGIN for entry in requests)
