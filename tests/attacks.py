"""The attacks of the security round 3 (issue #31), each run against a chat service while another user chats:
what `make security` counts (tests/test_attacks.py) and what bench/attacks.py times. Each returns the attack's
statuses; the bystander's statuses and durations are collected by `bystander`."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from devtools.fake_mistral import fake_embedding
from shared import issue_token
from shared.middlewares import CLIENT_CLOSED_REQUEST
from tests.documents import b64, slow_pdf, text_pdf

CHAT = "/webhook/wibot/chat"
LONG_QUESTION = " ".join(f"terme{n} onduleur batterie" for n in range(1_150))  # 3,450 words, 31,000 chars


@dataclass
class Watch:
    """Another user's chats, one after another, while an attack runs."""

    statuses: list[int] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)

    def p99(self) -> float:
        ordered = sorted(self.durations)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@dataclass
class Service:
    """A chat service under attack: its test client and the key its tokens are signed with."""

    client: Any  # aiohttp's TestClient
    jwt_secret: str

    async def chat(
        self,
        user_id: int,
        message: str,
        *,
        files: list[dict[str, str]] | None = None,
        conversation_id: uuid.UUID | None = None,
    ) -> int:
        body: dict[str, Any] = {"conversation_id": str(conversation_id or uuid.uuid4()), "message": message}
        if files:
            body["files"] = files
        token = issue_token(
            user_id=user_id, username=f"user{user_id}", role="user", secret=self.jwt_secret, ttl_seconds=3600
        )
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        # orjson: the attacker's megabytes of JSON cost this client little time (bench/attacks.py times others).
        # A file object: aiohttp refuses to send more than 1 MiB of bytes at once (a ResourceWarning, which the
        # suite raises: the slow PDFs were never sent before this).
        async with self.client.post(CHAT, data=io.BytesIO(orjson.dumps(body)), headers=headers) as r:
            await r.read()
            status: int = r.status
            return status


async def bystander_chats(service: Service, user_id: int, watch: Watch, *, count: int, with_file: bool) -> None:
    files = [{"name": "note.txt", "content": b64(b"Salut")}] if with_file else None
    for _ in range(count):
        started = time.perf_counter()
        watch.statuses.append(await service.chat(user_id, "Bonjour", files=files))
        watch.durations.append(time.perf_counter() - started)


@contextlib.asynccontextmanager
async def bystander(service: Service, user_id: int, *, with_file: bool = False) -> AsyncIterator[Watch]:
    """Chats of another user for as long as the block runs (at least 5)."""
    watch = Watch()
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set() or len(watch.statuses) < 5:
            await bystander_chats(service, user_id, watch, count=1, with_file=with_file)

    task = asyncio.ensure_future(loop())
    try:
        yield watch
    finally:
        stop.set()
        await task


def large_files() -> list[dict[str, str]]:
    """Too long for a message (indexed when the quota allows it): a 120-page PDF and a long text."""
    pdf = text_pdf([f"Page {n} : procédure de sauvegarde du serveur de fichiers de l'EHPAD. " * 12 for n in range(120)])
    text = "Relevé de température de la salle serveur : normal. " * 4_000
    return [{"name": "gros.pdf", "content": b64(pdf)}, {"name": "releve.txt", "content": b64(text.encode())}]


async def budget_attack(service: Service, user_id: int, *, requests: int = 10) -> list[int]:
    """F1: a user whose quota is 0 sends large attachments, all at once."""
    files = large_files()
    return list(await asyncio.gather(*(service.chat(user_id, "Résume", files=files) for _ in range(requests))))


async def crowded_conversation(db: asyncpg.Connection, user_id: int, *, chunks: int = 4_000) -> uuid.UUID:
    """A conversation holding `chunks` indexed chunks of its user's (as many as its cap lets it keep)."""
    conversation = uuid.uuid4()
    await db.execute(
        "INSERT INTO conversations (conversation_id, user_id, title) VALUES ($1, $2, 'pleine')", conversation, user_id
    )
    document_id = await db.fetchval(
        "INSERT INTO kb_documents (source, category, path, content_hash, chunk_count, conversation_id, user_id)"
        " VALUES ('rapport.txt', 'attachment', 'rapport.txt', repeat('c', 64), $1, $2, $3) RETURNING document_id",
        chunks,
        conversation,
        user_id,
    )
    vector = fake_embedding("onduleur batterie")
    await db.copy_records_to_table(
        "kb_chunks",
        records=[
            (document_id, n, f"terme{n} onduleur batterie : relevé {n} de la baie {n % 40}", vector)
            for n in range(chunks)
        ],
        columns=["document_id", "position", "content", "embedding"],
    )
    return conversation


async def retrieval_attack(service: Service, user_id: int, conversation: uuid.UUID, *, requests: int = 10) -> list[int]:
    """F2: long questions, all at once, in a conversation full of indexed chunks."""
    asks = (service.chat(user_id, LONG_QUESTION, conversation_id=conversation) for _ in range(requests))
    return list(await asyncio.gather(*asks))


async def extraction_attack(
    service: Service, user_id: int, *, requests: int = 4, abandon_after_s: float = 0.5
) -> list[int]:
    """F3: slow PDFs sent and abandoned (the client leaves before the answer). The statuses of those answered
    before it left, 499 (nginx's "client closed request") for the others."""
    files = [{"name": "lent.pdf", "content": b64(slow_pdf())}]
    sent = [asyncio.ensure_future(service.chat(user_id, "Lis", files=files)) for _ in range(requests)]
    await asyncio.sleep(abandon_after_s)
    answered = [request.done() for request in sent]
    for request in sent:
        request.cancel()
    await asyncio.gather(*sent, return_exceptions=True)
    return [request.result() if done else CLIENT_CLOSED_REQUEST for request, done in zip(sent, answered, strict=True)]
