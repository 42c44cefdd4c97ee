"""Hardening: every authenticated route against forged tokens, cross-user access, SQL injection and abusive
bodies. The route list comes from the services' own route tables, so a new route is covered automatically.
Assumes the fixtures of conftest (real PostgreSQL, fake Mistral on loopback)."""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from typing import Any

import jwt
import pytest

from services.auth.app import ROUTES as AUTH_ROUTES
from services.auth.app import create_app as auth_app
from services.chat.app import ROUTES as CHAT_ROUTES
from services.chat.app import create_app as chat_app
from services.conversations.app import ROUTES as CONVERSATIONS_ROUTES
from services.conversations.app import create_app as conversations_app
from shared.openapi import Route
from tests.conftest import TEST_SECRET, bearer
from tests.figures import FIGURES

INVALID = {"success": False, "error": "Token invalide ou expiré", "code": "INVALID_TOKEN"}
FORBIDDEN = {"success": False, "error": "Vous n'avez pas accès à cette conversation", "code": "FORBIDDEN"}
SERVICES = {"auth": AUTH_ROUTES, "chat": CHAT_ROUTES, "conversations": CONVERSATIONS_ROUTES}
AUTHENTICATED = [(name, route) for name, routes in SERVICES.items() for route in routes if route.authenticated]
INJECTIONS = [
    "' OR '1'='1",
    "'; DROP TABLE users; --",
    "1; DELETE FROM messages",
    '" OR 1=1 --',
    "$1",
    "%' UNION SELECT password_hash FROM users --",
]


@pytest.fixture
async def clients(make_client, chat_settings):
    return {
        "auth": await make_client(auth_app(chat_settings)),
        "chat": await make_client(chat_app(chat_settings)),
        "conversations": await make_client(conversations_app(chat_settings)),
    }


def request_for(route: Route, conversation_id: uuid.UUID, user_id: int) -> tuple[str, dict[str, Any] | None]:
    """A valid request for the route (so that only the token or the owner decides the answer)."""
    path = route.path.replace("{conversation_id}", str(conversation_id)).replace("{approval_id}", "req-1")
    cid = str(conversation_id)
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/webhook/wibot/chat"): {"conversation_id": cid, "message": "bonjour"},
        ("POST", "/webhook/wibot/conversations"): {"conversation_id": cid, "title": "t"},
        ("PATCH", "/webhook/wibot/conversation/rename"): {"conversationId": cid, "title": "renommée"},
        ("DELETE", "/webhook/wibot/conversation/delete"): {"conversationId": cid},
        ("POST", "/webhook/wibot/admin/users"): {"username": f"new{uuid.uuid4().hex[:6]}", "password": "s3cret-pw"},
        ("PUT", "/webhook/wibot/admin/users"): {"user_id": user_id, "add_tokens": 1},
        ("DELETE", "/webhook/wibot/admin/users"): {"user_id": user_id},
        ("POST", "/webhook/wibot/safeguard/approve"): {"approval_id": "req-1"},
        ("POST", "/webhook/wibot/safeguard/reject"): {"approval_id": "req-1", "comment": "non"},
    }
    if route.path == "/webhook/wibot/messages":
        path += f"?conversationId={cid}"
    return path, bodies.get((route.method, route.path))


def forge(payload: dict[str, Any], *, key: str = TEST_SECRET, alg: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=alg)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def bad_tokens(user_id: int, deleted_id: int, inactive_id: int) -> dict[str, str | None]:
    now = int(time.time())
    good = {"user_id": user_id, "username": "khora", "role": "admin", "iat": now, "exp": now + 3600}
    valid = forge(good)
    header, _, signature = valid.split(".")
    return {
        "no token": None,
        "malformed": "Bearer not-a-jwt",
        "empty bearer": "Bearer ",
        "basic scheme": f"Basic {valid}",
        "alg none": "Bearer " + b64({"alg": "none", "typ": "JWT"}) + "." + b64(good) + ".",
        "wrong key": "Bearer " + forge(good, key="another-secret-that-is-long-enough-000000"),
        "HS384 (not pinned)": "Bearer " + forge(good, alg="HS384"),
        "expired": "Bearer " + forge({**good, "iat": now - 7200, "exp": now - 3600}),
        "iat in the future": "Bearer " + forge({**good, "iat": now + 3600, "exp": now + 7200}),
        "no user_id": "Bearer " + forge({k: v for k, v in good.items() if k != "user_id"}),
        "no exp": "Bearer " + forge({k: v for k, v in good.items() if k != "exp"}),
        "user_id as string": "Bearer " + forge({**good, "user_id": str(user_id)}),
        "SQL in user_id": "Bearer " + forge({**good, "user_id": "1 OR 1=1"}),
        "user_id true": "Bearer " + forge({**good, "user_id": True}),
        "deleted user": "Bearer " + forge({**good, "user_id": deleted_id}),
        "deactivated user": "Bearer " + forge({**good, "user_id": inactive_id}),
        "tampered payload": f"Bearer {header}.{b64({**good, 'user_id': inactive_id + 1})}.{signature}",
    }


@pytest.mark.parametrize(("service", "route"), AUTHENTICATED, ids=lambda v: getattr(v, "path", v))
async def test_every_bad_token_is_a_401_on_every_route(clients, factory, db, service, route):
    admin = await factory.user("khora", role="admin")
    deleted = await factory.user("ghost")
    inactive = await factory.user("sleeper", is_active=False)
    await db.execute("DELETE FROM users WHERE user_id = $1", deleted)
    cid = await factory.conversation(admin)
    before = await snapshot(db)
    for label, authorization in bad_tokens(admin, deleted, inactive).items():
        path, body = request_for(route, cid, admin)
        headers = {"Authorization": authorization} if authorization is not None else {}
        r = await clients[service].request(route.method, path, json=body, headers=headers)
        FIGURES["tokens_tried"] += 1
        FIGURES["tokens_accepted"] += int(r.status != 401)
        assert r.status == 401, (label, await r.text())
        assert await r.json() == INVALID, label
    assert await snapshot(db) == before


# Every route that takes a conversation id (all but the listing, the tokens and the admin/auth routes).
CONVERSATION_ROUTES = [
    (name, r)
    for name, r in AUTHENTICATED
    if (r.method, r.path) != ("GET", "/webhook/wibot/conversations")
    and ("conversation" in r.path or r.path in {"/webhook/wibot/chat", "/webhook/wibot/messages"})
]


@pytest.mark.parametrize(("service", "route"), CONVERSATION_ROUTES, ids=lambda v: getattr(v, "path", v))
async def test_another_users_conversation_is_refused_and_untouched(clients, factory, db, service, route):
    owner = await factory.user("owner")
    intruder = await factory.user("intruder")
    cid = await factory.conversation(owner, title="privée")
    await factory.message(cid, owner, "user", "données de santé")
    before = await snapshot(db)
    path, body = request_for(route, cid, intruder)
    r = await clients[service].request(route.method, path, json=body, headers=bearer(intruder, "intruder"))
    FIGURES["cross_user_attempts"] += 1
    FIGURES["cross_user_successes"] += int(r.status < 400)
    if route.path in {"/webhook/wibot/chat", "/webhook/wibot/conversations"}:
        # Writing under an id someone else uses: reported as taken (the client draws a new id), nothing else.
        assert r.status == 409, await r.text()
        assert (await r.json())["code"] == "CONVERSATION_ID_TAKEN"
    else:
        assert r.status == 403, await r.text()
        assert await r.json() == FORBIDDEN
    assert await snapshot(db) == before


async def test_listing_shows_nothing_of_other_users(clients, factory):
    owner, intruder = await factory.user("owner"), await factory.user("intruder")
    await factory.conversation(owner, title="privée")
    r = await clients["conversations"].get("/webhook/wibot/conversations", headers=bearer(intruder))
    FIGURES["cross_user_attempts"] += 1
    FIGURES["cross_user_successes"] += int(bool((await r.json())["conversations"]))
    assert await r.json() == {"success": True, "conversations": []}


async def snapshot(db) -> tuple:
    """Everything a forbidden request could have changed."""
    return tuple(
        await db.fetchrow(
            "SELECT (SELECT string_agg(username || role || is_active::text, ',' ORDER BY user_id) FROM users) AS users,"
            " (SELECT string_agg(conversation_id::text || coalesce(title, ''), ',' ORDER BY conversation_id)"
            "  FROM conversations) AS conversations,"
            " (SELECT string_agg(message_id::text || content, ',' ORDER BY message_id) FROM messages) AS messages,"
            " (SELECT coalesce(sum(used_tokens), 0) + coalesce(sum(quota_tokens), 0) FROM user_token_usage) AS usage"
        )
    )


@pytest.mark.parametrize("payload", INJECTIONS)
async def test_sql_injection_in_every_field_has_no_effect(clients, factory, db, payload):
    admin = await factory.user("khora", "test123", role="admin")
    cid = await factory.conversation(admin, title="avant")
    auth, chat, conv = clients["auth"], clients["chat"], clients["conversations"]
    headers = bearer(admin, role="admin")
    attempts = [
        await auth.post("/webhook/auth/login", json={"username": payload, "password": payload}),
        await auth.post("/webhook/auth/login", json={"username": "khora", "password": payload}),
        await chat.post("/webhook/wibot/chat", json={"conversation_id": payload, "message": payload}, headers=headers),
        await chat.post(
            "/webhook/wibot/chat",
            headers=headers,
            json={
                "conversation_id": str(cid),
                "message": payload,
                "files": [{"name": payload, "content": payload}],
                "mode": payload,
            },
        ),
        await conv.get(f"/webhook/wibot/conversations/{payload}/messages", headers=headers),
        await conv.get("/webhook/wibot/messages", params={"conversationId": payload}, headers=headers),
        await conv.get("/webhook/wibot/conversations", params={"before": payload, "limit": payload}, headers=headers),
        await conv.patch(
            "/webhook/wibot/conversation/rename", json={"conversationId": payload, "title": payload}, headers=headers
        ),
        await conv.delete("/webhook/wibot/conversation/delete", json={"conversationId": payload}, headers=headers),
        await auth.post(
            "/webhook/wibot/admin/users",
            json={"username": payload, "password": "s3cret-pw", "email": payload},
            headers=headers,
        ),
        await auth.put("/webhook/wibot/admin/users", json={"user_id": payload}, headers=headers),
    ]
    for r in attempts:
        FIGURES["injection_payloads"] += 1
        FIGURES["injection_5xx"] += int(r.status >= 500)
        assert r.status < 500, await r.text()
        assert (await r.json())["success"] in (True, False)
    # Nothing changed: no payload is a valid username (quotes, spaces, `$`, `%` are refused by the rules).
    assert attempts[9].status == 400 and "Nom d'utilisateur invalide" in (await attempts[9].json())["error"]
    assert await db.fetchval("SELECT count(*) FROM users") == 1
    assert await db.fetchval("SELECT count(*) FROM conversations") == 1
    assert await db.fetchval("SELECT title FROM conversations") == "avant"
    assert await db.fetchval("SELECT count(*) FROM messages") == 0  # the chat with mode=payload was a 400


async def test_a_legitimate_message_that_looks_like_sql_is_stored_as_written(clients, factory, db):
    user_id = await factory.user()
    message = "'; DROP TABLE messages; -- et SELECT * FROM users"
    r = await clients["chat"].post(
        "/webhook/wibot/chat", json={"conversation_id": str(uuid.uuid4()), "message": message}, headers=bearer(user_id)
    )
    assert r.status == 200, await r.text()
    assert await db.fetchval("SELECT content FROM messages WHERE role = 'user'") == message


@pytest.mark.parametrize(
    ("label", "body", "status"),
    [
        ("body over the limit", lambda: b'{"message": "' + b"x" * (25 * 1024 * 1024) + b'"}', 413),
        (  # within the body limit (room for files), far over the message's own limit
            "10 MB message",
            lambda: json.dumps({"conversation_id": str(uuid.uuid4()), "message": "x" * 10_000_000}).encode(),
            400,
        ),
        (
            "1,000 files",
            lambda: json.dumps(
                {
                    "conversation_id": str(uuid.uuid4()),
                    "message": "x",
                    "files": [{"name": f"f{i}", "content": "y"} for i in range(1000)],
                }
            ).encode(),
            413,
        ),
        ("deeply nested JSON", lambda: b'{"message": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400),
        ("invalid UTF-8", lambda: b'{"conversation_id": "\xc3\x28", "message": "\xff"}', 400),
    ],
)
async def test_abusive_bodies_are_refused_in_the_envelope(clients, factory, db, label, body, status):
    user_id = await factory.user()
    r = await clients["chat"].post(
        "/webhook/wibot/chat", data=io.BytesIO(body()), headers={**bearer(user_id), "Content-Type": "application/json"}
    )
    assert r.status == status, (label, await r.text())
    assert (await r.json())["success"] is False
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
