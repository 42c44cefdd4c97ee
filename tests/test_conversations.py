"""Conversations service: every route, token required, ownership enforced, input validated, dates in UTC."""

from __future__ import annotations

import re
import uuid

import pytest

from services.conversations.app import create_app
from tests.conftest import bearer

LIST = "/webhook/wibot/conversations"
CID = uuid.UUID("550e8400-e29b-41d4-a716-446655440000")
FORBIDDEN = {"success": False, "error": "Vous n'avez pas accès à cette conversation", "code": "FORBIDDEN"}
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


@pytest.fixture
async def client(make_client, settings):
    return await make_client(create_app(settings))


@pytest.fixture
async def khora(factory):
    return await factory.user("khora", role="admin")


async def seed_spec_conversation(factory, user_id):
    """The spec's test data: one conversation, six messages."""
    cid = await factory.conversation(
        user_id, conversation_id=CID, title="Conversation de test", updated_at="2024-12-24T10:00:00Z"
    )
    spec = [
        ("user", "Bonjour WIBOT !", "2024-12-23T10:00:00Z"),
        ("assistant", "Bonjour ! Comment puis-je t'aider ?", "2024-12-23T10:00:02Z"),
        ("user", "Peux-tu m'expliquer comment fonctionne PostgreSQL ?", "2024-12-23T10:01:00Z"),
        (
            "assistant",
            "PostgreSQL est un système de gestion de base de données relationnelle...",
            "2024-12-23T10:01:05Z",
        ),
        ("user", "Et comment faire un backup ?", "2024-12-24T10:00:00Z"),
        ("assistant", "Pour faire un backup PostgreSQL, tu peux utiliser pg_dump...", "2024-12-24T10:00:03Z"),
    ]
    ids = [await factory.message(cid, user_id, role, content, created_at=at) for role, content, at in spec]
    return cid, spec, ids


async def test_spec_test_6_get_conversations(client, khora, factory):
    await seed_spec_conversation(factory, khora)
    r = await client.get(LIST, headers=bearer(khora))
    assert r.status == 200, await r.text()
    assert await r.json() == {
        "success": True,
        "conversations": [
            {
                "conversation_id": str(CID),
                "title": "Conversation de test",
                "updated_at": "2024-12-24T10:00:00Z",
                "message_count": 6,
            }
        ],
    }


async def test_spec_test_7_get_messages(client, khora, factory):
    _, spec, ids = await seed_spec_conversation(factory, khora)
    r = await client.get(f"/webhook/wibot/conversations/{CID}/messages", headers=bearer(khora))
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body == {
        "success": True,
        "messages": [
            {"message_id": mid, "role": role, "content": content, "created_at": at}
            for mid, (role, content, at) in zip(ids, spec, strict=True)
        ],
    }
    # The spec's checklist: roles exactly user|assistant, dates with Z.
    assert {m["role"] for m in body["messages"]} == {"user", "assistant"}
    assert all(DATE.match(m["created_at"]) for m in body["messages"])
    # The newer frontend's form of the same question.
    r = await client.get(f"/webhook/wibot/messages?conversationId={CID}", headers=bearer(khora))
    assert await r.json() == body


async def test_messages_ties_are_ordered_by_message_id(client, khora, factory):
    cid = await factory.conversation(khora)
    ids = [
        await factory.message(
            cid, khora, "user" if i % 2 == 0 else "assistant", f"m{i}", created_at="2024-12-25T10:00:00Z"
        )
        for i in range(4)
    ]
    r = await client.get(f"/webhook/wibot/conversations/{cid}/messages", headers=bearer(khora))
    assert [m["message_id"] for m in (await r.json())["messages"]] == ids


async def test_list_is_mine_only_most_recent_first_with_integer_counts(client, khora, factory):
    other = await factory.user("other")
    old = await factory.conversation(khora, title="ancienne", updated_at="2024-01-01T08:00:00Z")
    new = await factory.conversation(khora, title="récente", updated_at="2024-06-01T08:00:00Z")
    await factory.conversation(other, title="pas à moi")
    await factory.message(new, khora, "user", "a")
    r = await client.get(LIST, headers=bearer(khora))
    body = await r.json()
    assert [(c["conversation_id"], c["title"], c["message_count"]) for c in body["conversations"]] == [
        (str(new), "récente", 1),
        (str(old), "ancienne", 0),
    ]
    assert all(isinstance(c["message_count"], int) and len(c["conversation_id"]) == 36 for c in body["conversations"])


async def test_list_defaults_to_50_and_pages_with_a_cursor(client, khora, factory):
    created = [
        await factory.conversation(khora, title=f"c{i}", updated_at=f"2024-01-01T08:{i // 60:02d}:{i % 60:02d}Z")
        for i in range(120)
    ]
    # Two conversations with the same updated_at: the cursor must neither skip nor repeat them.
    created.append(await factory.conversation(khora, title="tie", updated_at="2024-01-01T08:01:59Z"))
    r = await client.get(LIST, headers=bearer(khora))
    first = (await r.json())["conversations"]
    assert len(first) == 50
    seen = [c["conversation_id"] for c in first]
    while True:
        r = await client.get(LIST, params={"limit": "37", "before": seen[-1]}, headers=bearer(khora))
        assert r.status == 200, await r.text()
        page = [c["conversation_id"] for c in (await r.json())["conversations"]]
        if not page:
            break
        seen += page
    assert sorted(seen) == sorted(str(c) for c in created) and len(seen) == len(set(seen))


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=abc", "before=not-a-uuid", f"before={uuid.uuid4()}"])
async def test_list_rejects_bad_paging(client, khora, query):
    r = await client.get(f"{LIST}?{query}", headers=bearer(khora))
    assert r.status == 400, await r.text()
    assert (await r.json())["success"] is False


async def test_another_users_messages_are_403(client, khora, factory):
    other = await factory.user("other")
    cid = await factory.conversation(other)
    await factory.message(cid, other, "user", "secret")
    for path in (f"/webhook/wibot/conversations/{cid}/messages", f"/webhook/wibot/messages?conversationId={cid}"):
        r = await client.get(path, headers=bearer(khora))
        assert r.status == 403, await r.text()
        assert await r.json() == FORBIDDEN


async def test_unknown_conversation_has_no_messages(client, khora):
    r = await client.get(f"/webhook/wibot/conversations/{uuid.uuid4()}/messages", headers=bearer(khora))
    assert r.status == 200, await r.text()
    assert await r.json() == {"success": True, "messages": []}


@pytest.mark.parametrize(
    "path",
    [
        "/webhook/wibot/conversations/770f9622-g4bd-63f6-c938-668877662222/messages",
        "/webhook/wibot/messages?conversationId=abc",
        "/webhook/wibot/messages",
    ],
)
async def test_malformed_ids_are_400(client, khora, path):
    r = await client.get(path, headers=bearer(khora))
    assert r.status == 400, await r.text()
    body = await r.json()
    assert body["success"] is False and "conversation" in body["error"].lower()


async def test_create_conversation(client, khora, db):
    r = await client.post(LIST, json={"title": "Plan de migration"}, headers=bearer(khora))
    assert r.status == 200, await r.text()
    conv = (await r.json())["conversation"]
    assert conv["title"] == "Plan de migration" and conv["message_count"] == 0 and DATE.match(conv["updated_at"])
    assert (
        await db.fetchval(
            "SELECT user_id FROM conversations WHERE conversation_id = $1", uuid.UUID(conv["conversation_id"])
        )
        == khora
    )
    r = await client.post(LIST, json={"conversation_id": str(CID)}, headers=bearer(khora))
    assert (await r.json())["conversation"] == {
        **(await r.json())["conversation"],
        "conversation_id": str(CID),
        "title": "Nouvelle conversation",
    }
    # Creating it again is harmless for its owner, forbidden to anyone else.
    again = await client.post(LIST, json={"conversation_id": str(CID), "title": "autre"}, headers=bearer(khora))
    assert (await again.json())["conversation"]["title"] == "Nouvelle conversation"


async def test_untitled_conversation_takes_its_first_chat_message_as_title(
    client, make_client, chat_settings, khora, db
):
    from services.chat.app import create_app as create_chat_app

    chat = await make_client(create_chat_app(chat_settings))
    r = await client.post(LIST, json={"conversation_id": str(CID)}, headers=bearer(khora))
    assert r.status == 200
    assert await db.fetchval("SELECT title FROM conversations") is None  # NULL until named
    r = await chat.post(
        "/webhook/wibot/chat", json={"conversation_id": str(CID), "message": "Sauvegardes GLPI"}, headers=bearer(khora)
    )
    assert r.status == 200, await r.text()
    r = await client.get(LIST, headers=bearer(khora))
    assert [(c["title"], c["message_count"]) for c in (await r.json())["conversations"]] == [("Sauvegardes GLPI", 2)]


async def test_create_over_someone_elses_id_is_reported_taken(client, khora, factory, db):
    other = await factory.user("other")
    await factory.conversation(other, conversation_id=CID, title="à lui")
    r = await client.post(LIST, json={"conversation_id": str(CID), "title": "à moi"}, headers=bearer(khora))
    assert r.status == 409, await r.text()
    assert (await r.json())["code"] == "CONVERSATION_ID_TAKEN"
    assert await db.fetchval("SELECT title FROM conversations") == "à lui"


async def test_rename(client, khora, factory, db):
    await seed_spec_conversation(factory, khora)
    r = await client.patch(
        "/webhook/wibot/conversation/rename",
        json={"conversationId": str(CID), "title": "Backups"},
        headers=bearer(khora),
    )
    assert r.status == 200, await r.text()
    conv = (await r.json())["conversation"]
    assert (conv["conversation_id"], conv["title"], conv["message_count"]) == (str(CID), "Backups", 6)
    assert await db.fetchval("SELECT title FROM conversations") == "Backups"


@pytest.mark.parametrize("title", ["", "x" * 256, 42, None])
async def test_rename_validates_the_title(client, khora, factory, title):
    await factory.conversation(khora, conversation_id=CID)
    r = await client.patch(
        "/webhook/wibot/conversation/rename", json={"conversationId": str(CID), "title": title}, headers=bearer(khora)
    )
    assert r.status == 400, await r.text()


async def test_delete_removes_its_messages(client, khora, factory, db):
    await seed_spec_conversation(factory, khora)
    keep = await factory.conversation(khora)
    await factory.message(keep, khora, "user", "reste")
    r = await client.delete(
        "/webhook/wibot/conversation/delete", json={"conversationId": str(CID)}, headers=bearer(khora)
    )
    assert r.status == 200, await r.text()
    assert await r.json() == {"success": True}
    assert await db.fetchval("SELECT count(*) FROM messages") == 1
    assert await db.fetchval("SELECT count(*) FROM conversations") == 1


@pytest.mark.parametrize(
    ("method", "path", "extra"),
    [
        ("PATCH", "/webhook/wibot/conversation/rename", {"title": "x"}),
        ("DELETE", "/webhook/wibot/conversation/delete", {}),
    ],
)
async def test_rename_or_delete_unknown_is_404_and_others_is_403(client, khora, factory, db, method, path, extra):
    r = await client.request(method, path, json={"conversationId": str(uuid.uuid4()), **extra}, headers=bearer(khora))
    assert r.status == 404, await r.text()
    assert await r.json() == {"success": False, "error": "Conversation introuvable", "code": "NOT_FOUND"}
    other = await factory.user("other")
    cid = await factory.conversation(other, title="à lui")
    await factory.message(cid, other, "user", "secret")
    r = await client.request(method, path, json={"conversationId": str(cid), **extra}, headers=bearer(khora))
    assert r.status == 403, await r.text()
    assert await r.json() == FORBIDDEN
    assert await db.fetchrow("SELECT title, (SELECT count(*) FROM messages) AS n FROM conversations") == ("à lui", 1)


@pytest.mark.parametrize(
    ("used", "quota", "status", "percentage"),
    [
        (None, None, "good", 0.0),
        (12_450, 50_000, "good", 24.9),
        (25_000, 50_000, "medium", 50.0),
        (40_000, 50_000, "medium", 80.0),
        (40_001, 50_000, "critical", 80.0),
        (60_000, 50_000, "critical", 120.0),
    ],
)
async def test_user_tokens(client, khora, factory, used, quota, status, percentage):
    if used is not None:
        await factory.usage(khora, used=used, quota=quota)
    r = await client.get("/webhook/wibot/user/tokens", headers=bearer(khora))
    assert r.status == 200, await r.text()
    used, quota = used or 0, quota or 50_000
    assert await r.json() == {
        "success": True,
        "used_tokens": used,
        "quota_tokens": quota,
        "tokens_remaining": max(quota - used, 0),
        "tokens_percentage": percentage,
        "status": status,
        "quota_source": "default",  # 50,000 is the default quota
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", LIST),
        ("POST", LIST),
        ("GET", f"/webhook/wibot/conversations/{CID}/messages"),
        ("GET", f"/webhook/wibot/messages?conversationId={CID}"),
        ("PATCH", "/webhook/wibot/conversation/rename"),
        ("DELETE", "/webhook/wibot/conversation/delete"),
        ("GET", "/webhook/wibot/user/tokens"),
    ],
)
async def test_every_route_requires_a_token(client, method, path):
    r = await client.request(method, path, json={})
    assert r.status == 401, await r.text()
    assert await r.json() == {"success": False, "error": "Token invalide ou expiré", "code": "INVALID_TOKEN"}


async def test_dates_leave_as_utc_even_when_the_database_speaks_paris_time(make_client, settings, khora, factory, db):
    await db.execute(f"ALTER DATABASE \"{db._params.database}\" SET timezone TO 'Europe/Paris'")
    try:
        client = await make_client(create_app(settings))
        await factory.conversation(khora, conversation_id=CID, updated_at="2024-12-25T14:30:00Z")
        await factory.message(CID, khora, "user", "hiver", created_at="2024-12-25T14:30:00Z")
        await factory.message(CID, khora, "assistant", "été", created_at="2024-07-14T12:00:00Z")
        r = await client.get(LIST, headers=bearer(khora))
        assert (await r.json())["conversations"][0]["updated_at"] == "2024-12-25T14:30:00Z"
        r = await client.get(f"/webhook/wibot/conversations/{CID}/messages", headers=bearer(khora))
        assert [m["created_at"] for m in (await r.json())["messages"]] == [
            "2024-07-14T12:00:00Z",
            "2024-12-25T14:30:00Z",
        ]
    finally:
        await db.execute(f'ALTER DATABASE "{db._params.database}" RESET timezone')
