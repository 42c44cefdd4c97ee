"""Admission, before a chat's body is read (services/chat/admission.py): a user's chats in progress are capped
per process, and a user without quota is refused before their files are parsed."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid

from services.chat.app import create_app
from services.chat.resources import CHAT as RESOURCES
from tests.conftest import bearer
from tests.documents import b64
from tests.polling import until

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


# linux/tcp_states.h
TCP_FIN_WAIT2 = 5


def tcp_state(writer: asyncio.StreamWriter) -> int:
    return writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def request_head(user_id: int, length: int) -> bytes:
    headers = {**bearer(user_id), "Content-Type": "application/json", "Content-Length": str(length)}
    return (
        b"POST "
        + CHAT.encode()
        + b" HTTP/1.1\r\nHost: wibot\r\n"
        + b"".join(f"{name}: {value}\r\n".encode() for name, value in headers.items())
        + b"\r\n"
    )


async def test_a_body_whose_client_left_while_it_waited_its_turn_is_not_parsed(
    make_client, chat_settings, factory, fake_mistral
):
    """A user's bodies are read one at a time; a client that sent megabytes and left meanwhile (an upload
    cancelled, a gateway's timeout) is seen by aiohttp only once it has read past the body, and the body was
    parsed, checked and sent to a worker for nobody (bench/attacks.py, extraction)."""
    client = await make_client(create_app(chat_settings))
    chat = client.app[RESOURCES]
    user_id = await factory.user("parti")
    # The user's first chat holds their turn: its body arrives slowly.
    first = json.dumps(body("Bonjour")).encode()
    reader1, writer1 = await asyncio.open_connection(client.host, client.port)
    writer1.write(request_head(user_id, len(first)) + first[:10])
    await until(lambda: chat.preparing.jobs == 1)
    # The second is sent whole, more than aiohttp buffers before it stops reading, then its client leaves. Not
    # JSON: parsed, it would be answered 400.
    second = b"x" * 1_500_000
    reader2, writer2 = await asyncio.open_connection(client.host, client.port)
    writer2.write(request_head(user_id, len(second)) + second)
    await writer2.drain()
    writer2.write_eof()
    await until(lambda: chat.preparing.jobs == 2 and tcp_state(writer2) == TCP_FIN_WAIT2)  # our FIN has arrived
    writer1.write(first[10:])
    assert await reader1.readline() == b"HTTP/1.1 200 OK\r\n"
    # The second's turn came after the first's: its body read, its client found gone, nothing answered.
    assert await asyncio.wait_for(reader2.read(), 20) == b""
    await until(lambda: chat.preparing.jobs == 0)
    assert len(fake_mistral.received) == 1
    for writer in (writer1, writer2):
        writer.close()
