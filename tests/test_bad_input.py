"""Hostile input that used to be a 500 (security review, round 2): each is a 4xx envelope, nothing is written,
no model is called, and no traceback reaches the log.

Assumes conftest's real PostgreSQL and fake Mistral; requests go over real HTTP on loopback.
"""

from __future__ import annotations

import json
import socket
import uuid

import jwt
import pytest

from services.auth.app import create_app as auth_app
from services.chat.app import create_app as chat_app
from services.conversations.app import create_app as conversations_app
from tests.conftest import TEST_SECRET, bearer
from tests.figures import FIGURES

CHAT = "/webhook/wibot/chat"
UNSTORABLE = "contient un caractère non autorisé (caractère nul ou substitut UTF-16 isolé)"


def assert_no_server_error_logged(out: str) -> None:
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines, "the log lines were not captured"
    failures = [line for line in lines if line.get("status") == 500 or "exception" in line]
    FIGURES["hostile_inputs"] += 1
    FIGURES["hostile_5xx"] += len(failures)
    assert not failures, failures
    assert "Traceback" not in out


def raw_request(port: int, request: bytes) -> bytes:
    """Bytes exactly as a hostile client sends them (aiohttp's client would refuse to)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_an_authorization_header_that_is_not_utf8_is_a_401(make_client, settings, capsys):
    client = await make_client(conversations_app(settings))
    port = client.server.port
    request = (
        b"GET /webhook/wibot/conversations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xc3(abc\r\n"
        b"Connection: close\r\n\r\n"
    )
    import asyncio

    answer = await asyncio.to_thread(raw_request, port, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), answer[:200]
    assert json.loads(body) == {"success": False, "error": "Token invalide ou expiré", "code": "INVALID_TOKEN"}
    assert_no_server_error_logged(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("field", "value"),
    [("message", "bon\x00jour"), ("message", "\ud800"), ("file name", "a\x00.txt"), ("file content", "x\udfff")],
)
async def test_nul_and_lone_surrogates_in_chat_text_are_400_before_any_model_call(
    make_client, chat_settings, factory, db, fake_mistral, capsys, field, value
):
    client = await make_client(chat_app(chat_settings))
    user_id = await factory.user()
    payload: dict = {"conversation_id": str(uuid.uuid4()), "message": "x"}
    if field == "message":
        payload["message"] = value
    elif field == "file name":
        payload["files"] = [{"name": value, "content": "ok"}]
    else:
        payload["files"] = [{"name": "a.txt", "content": value}]
    # json.dumps writes lone surrogates as \\udXXX escapes: valid JSON, as a client would send it.
    r = await client.post(
        CHAT, data=json.dumps(payload), headers={**bearer(user_id), "Content-Type": "application/json"}
    )
    assert r.status == 400, await r.text()
    body = await r.json()
    assert body["code"] == "VALIDATION_ERROR" and UNSTORABLE in body["error"], body
    assert len(fake_mistral.received) == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT coalesce(sum(used_tokens), 0) FROM user_token_usage") == 0
    assert_no_server_error_logged(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("path", "method", "payload"),
    [
        ("/webhook/wibot/conversations", "POST", {"title": "a\x00b"}),
        ("/webhook/wibot/conversation/rename", "PATCH", {"conversationId": str(uuid.uuid4()), "title": "\ud83d"}),
    ],
)
async def test_nul_in_conversation_titles_is_400(make_client, settings, factory, db, capsys, path, method, payload):
    client = await make_client(conversations_app(settings))
    user_id = await factory.user()
    r = await client.request(
        method, path, data=json.dumps(payload), headers={**bearer(user_id), "Content-Type": "application/json"}
    )
    assert r.status == 400, await r.text()
    assert UNSTORABLE in (await r.json())["error"]
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0
    assert_no_server_error_logged(capsys.readouterr().out)


@pytest.mark.parametrize(
    "body",
    [
        b'{"username": "a\\u0000", "password": "x"}',
        b'{"username": "khora", "password": "' + b"1" * 10 + b'", "n": ' + b"9" * 5000 + b"}",
    ],
    ids=["nul-username", "5000-digit-integer"],
)
async def test_login_with_unstorable_text_or_a_huge_integer_is_400(make_client, settings, capsys, body):
    client = await make_client(auth_app(settings))
    r = await client.post("/webhook/auth/login", data=body, headers={"Content-Type": "application/json"})
    assert r.status == 400, await r.text()
    assert (await r.json())["success"] is False
    assert_no_server_error_logged(capsys.readouterr().out)


async def test_a_validly_signed_token_with_a_user_id_past_int4_is_a_401(make_client, settings, capsys):
    client = await make_client(conversations_app(settings))
    token = jwt.encode({"user_id": 2**31, "username": "x", "role": "admin", "iat": 1, "exp": 2**40}, TEST_SECRET)
    r = await client.get("/webhook/wibot/conversations", headers={"Authorization": f"Bearer {token}"})
    assert r.status == 401, await r.text()
    assert (await r.json())["code"] == "INVALID_TOKEN"
    assert_no_server_error_logged(capsys.readouterr().out)


async def test_adding_tokens_past_bigint_saturates_instead_of_failing(make_client, settings, factory, db, capsys):
    client = await make_client(auth_app(settings))
    admin, bob = await factory.user("khora", role="admin"), await factory.user("bob")
    await factory.usage(bob, used=0, quota=9_223_372_036_000_000_000)
    r = await client.put(
        "/webhook/wibot/admin/users",
        json={"user_id": bob, "add_tokens": 1_000_000_000_000},
        headers=bearer(admin, role="admin"),
    )
    assert r.status == 200, await r.text()
    assert (await r.json())["user"]["quota_tokens"] == 9_223_372_036_854_775_807
    assert_no_server_error_logged(capsys.readouterr().out)
