"""Admission, before a chat's body is read (services/chat/admission.py): a user's chats in progress are capped
per process, and a user without quota is refused before their files are parsed."""

from __future__ import annotations

import asyncio
import uuid

from services.chat.app import create_app
from services.chat.resources import CHAT as RESOURCES
from tests.conftest import bearer
from tests.documents import b64

CHAT = "/webhook/wibot/chat"


def body(message: str = "x", **extra) -> dict:
    return {"conversation_id": str(uuid.uuid4()), "message": message, **extra}


async def test_a_users_chats_beyond_their_share_are_refused_at_once_and_others_served(
    make_client, chat_settings, factory, db, fake_mistral
):
    client = await make_client(create_app(chat_settings.model_copy(update={"chat_concurrent_per_user": 2})))
    busy, other = await factory.user("presse"), await factory.user("voisin")
    fake_mistral.hold = asyncio.Event()
    held = [asyncio.ensure_future(client.post(CHAT, json=body(), headers=bearer(busy))) for _ in range(2)]
    await fake_mistral.wait_for_requests(2)
    r = await client.post(CHAT, json=body(), headers=bearer(busy))
    assert r.status == 429, await r.text()
    assert r.headers["Retry-After"] == "2"
    assert await r.json() == {
        "success": False,
        "error": "Vous avez déjà 2 messages en cours de traitement : attendez leur réponse avant d'en envoyer"
        " d'autres.",
        "code": "CHAT_BUSY",
    }
    other_chat = asyncio.ensure_future(client.post(CHAT, json=body(), headers=bearer(other)))
    await fake_mistral.wait_for_requests(3)  # another user's chat reached the model beside the held two
    fake_mistral.hold.set()
    assert [(await r).status for r in [*held, other_chat]] == [200, 200, 200]
    assert client.app[RESOURCES].chats.jobs == 0
    r = await client.post(CHAT, json=body(), headers=bearer(busy))  # their share is back
    assert r.status == 200
    assert await db.fetchval("SELECT count(*) FROM messages") == 8


async def test_a_user_without_quota_is_refused_before_the_body_is_parsed(
    make_client, chat_settings, factory, db, fake_mistral
):
    client = await make_client(create_app(chat_settings))
    user_id = await factory.user()
    await factory.usage(user_id, used=50_000, quota=50_000)
    files = [{"name": "a.txt", "content": b64(b"x" * 100_000)}]
    r = await client.post(CHAT, json=body("Résume", files=files), headers=bearer(user_id))
    assert r.status == 429 and (await r.json())["code"] == "QUOTA_EXCEEDED"
    # Even a body that would be a 400 is not read: the quota answers first.
    r = await client.post(CHAT, data=b"{not json", headers={**bearer(user_id), "Content-Type": "application/json"})
    assert r.status == 429 and (await r.json())["code"] == "QUOTA_EXCEEDED"
    assert client.app[RESOURCES].extractor.submitted == 0
    assert await db.fetchval("SELECT count(*) FROM token_reservations") == 0


async def test_a_new_user_is_admitted_on_the_default_or_their_standing_quota_without_a_write(
    make_client, chat_settings, factory, db
):
    client = await make_client(create_app(chat_settings.model_copy(update={"default_quota_tokens": 0})))
    refused, granted = await factory.user("defaut"), await factory.user("dote")
    await db.execute("UPDATE users SET standing_quota_tokens = 100000 WHERE user_id = $1", granted)
    r = await client.post(CHAT, data=b"{not json", headers={**bearer(refused), "Content-Type": "application/json"})
    assert (await r.json())["code"] == "QUOTA_EXCEEDED"  # the default, 0
    r = await client.post(CHAT, data=b"{not json", headers={**bearer(granted), "Content-Type": "application/json"})
    assert r.status == 400  # admitted on their standing quota: the body is then read, and refused
    assert await db.fetchval("SELECT count(*) FROM user_token_usage") == 0  # admission only reads
