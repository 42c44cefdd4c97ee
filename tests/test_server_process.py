"""The services run as production runs them: a real `python -m services.chat` process (shared.serve.serve), not
pytest-aiohttp's TestServer, which always cancels a handler whose client left. With aiohttp's default
(`handler_cancellation=False`) the model call of an abandoned request ran to its end and was charged to a user
who never received it (F3 of the security round 3)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devtools.stack import free_ports, wait_for_port
from shared.serve import SERVER_OPTIONS
from tests.conftest import TEST_SECRET, bearer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def chat_process(database_url, fake_mistral, tmp_path, request):
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "JWT_SECRET": TEST_SECRET,
        "MISTRAL_API_KEY": "test-key",
        "MISTRAL_SERVER_URL": fake_mistral.url,
        "MISTRAL_TIMEOUT_S": "30",
        "CHAT_REQUESTS_PER_MINUTE": "0",
        "KB_TOP_K": "0",
        "DB_POOL_MAX": "4",
        **getattr(request, "param", {}),
    }
    with running([sys.executable, "-m", "services.chat", "--port", str(port)], env, port, tmp_path / "chat.log"):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], port: int, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A service process, as production starts it, until the block ends; then stopped as an orchestrator does."""
    log = log_path.open("w")
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=log)
    try:
        wait_for_port(port, timeout=30)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_the_production_server_cancels_a_handler_whose_client_left():
    assert SERVER_OPTIONS["handler_cancellation"] is True  # what the TestServer of every other test does


def prompt_charge(body: dict[str, Any]) -> int:
    """What a prompt the model read is charged when its reply reaches nobody: the spec's estimate, ceil(chars / 4)."""
    return math.ceil(sum(len(message["content"]) for message in body["messages"]) / 4)


@pytest.mark.parametrize("accept", ["application/json", "text/event-stream"])
async def test_an_abandoned_chat_stops_its_model_call_and_pays_for_its_prompt(
    chat_process, factory, db, fake_mistral, tmp_path, accept
):
    """#44: a client that leaves once the model has its prompt pays for that prompt (before: nothing, so a client
    leaving after each prompt sent 40,000-64,000 tokens to the model for free); the model's work on the reply is
    dropped, and the reply, which nobody receives, is not charged. The same rule whole or streamed."""
    user_id = await factory.user()
    fake_mistral.hold = asyncio.Event()
    body = {"conversation_id": str(uuid.uuid4()), "message": "Une question longue à traiter " * 40}
    headers = {**bearer(user_id), "Accept": accept}
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(session.post(f"{chat_process}/webhook/wibot/chat", json=body, headers=headers))
        await fake_mistral.wait_for_requests(1, within_s=20)
        assert await db.fetchval("SELECT count(*) FROM token_reservations") == 1  # the model is working
        request.cancel()  # the client (or nginx at its timeout) hangs up
        with pytest.raises(asyncio.CancelledError):
            await request
    # The server's handler is cancelled: its call to the model is dropped before the model answers.
    async with asyncio.timeout(20):
        while fake_mistral.abandoned == 0:
            await asyncio.sleep(0.02)
        while await db.fetchval("SELECT count(*) FROM token_reservations"):
            await asyncio.sleep(0.02)
    fake_mistral.hold.set()
    assert fake_mistral.answered == 0
    expected = prompt_charge(fake_mistral.received[0])
    assert expected > 300
    assert await db.fetchval("SELECT coalesce(sum(used_tokens), 0) FROM user_token_usage") == expected
    charges = await db.fetch("SELECT user_id, tokens, reason FROM unsaved_charges")
    assert [tuple(charge) for charge in charges] == [(user_id, expected, "client_left")]
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    # Logged and counted as nginx does (499: the client closed the request), not as a failure of ours (500).
    async with asyncio.timeout(20):
        while not (logged := access_log(tmp_path / "chat.log", "/webhook/wibot/chat")):
            await asyncio.sleep(0.02)
    assert [entry["status"] for entry in logged] == [499]


@pytest.mark.parametrize("chat_process", [{"CHAT_FILES_MAX_CHARS": "1500", "KB_TOP_K": "5"}], indirect=True)
async def test_a_chat_whose_client_leaves_before_the_model_call_pays_nothing(chat_process, factory, db, fake_mistral):
    """Before the prompt is sent (here: while a long attachment is embedded to be indexed), nothing is charged."""
    user_id = await factory.user()
    fake_mistral.embedding_hold = asyncio.Event()
    report = "Rapport de nuit : l'onduleur du local technique a basculé sur batterie à 02:14. " * 60
    body = {"conversation_id": str(uuid.uuid4()), "message": "Que s'est-il passé cette nuit ?",
            "files": [{"name": "rapport.txt", "content": base64.b64encode(report.encode()).decode()}]}  # fmt: skip
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(
            session.post(f"{chat_process}/webhook/wibot/chat", json=body, headers=bearer(user_id))
        )
        async with asyncio.timeout(20):
            while not fake_mistral.embedded:
                await asyncio.sleep(0.02)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    async with asyncio.timeout(20):
        while await db.fetchval("SELECT count(*) FROM token_reservations"):
            await asyncio.sleep(0.02)
    fake_mistral.embedding_hold.set()
    assert len(fake_mistral.received) == 0  # the model never had the prompt
    assert await db.fetchval("SELECT coalesce(sum(used_tokens), 0) FROM user_token_usage") == 0
    assert await db.fetchval("SELECT count(*) FROM unsaved_charges") == 0


def access_log(path: Path, request_path: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    return [entry for entry in lines if entry["event"] == "request" and entry["path"] == request_path]


async def test_a_service_started_without_port_listens_on_port_from_the_environment(database_url, tmp_path):
    """PORT (a container's way to say it) when there is no --port: the image's health check reads the same."""
    (port,) = free_ports(1)
    env = {**os.environ, "DATABASE_URL": database_url, "JWT_SECRET": TEST_SECRET, "PORT": str(port)}
    with running([sys.executable, "-m", "services.conversations"], env, port, tmp_path / "conversations.log"):
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert (response.status, await response.json()) == (200, {"success": True, "status": "ok"})


FAULTS_PER_ROUND = """
import resource, sys
from shared.serve import reuse_freed_memory
reused = sys.argv[1] == "reuse" and reuse_freed_memory()
data = b"x" * (4 * 1024 * 1024)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
before = faults()
for _ in range(20):  # what a large body costs: fresh buffers of megabytes, written whole, then freed
    copy = bytearray(data)
    joined = b"".join([bytes(copy[:2_000_000]), bytes(copy[2_000_000:])])
    del copy, joined
print(reused, (faults() - before) / 20)
"""


@pytest.mark.parametrize("mode", ["default", "reuse"])
def test_a_service_process_reuses_the_memory_of_large_buffers(mode):
    """Page faults are counted by the kernel, whatever the load: ~4,000 per round of 4 MB buffers with glibc's
    defaults (each block mapped fresh, unmapped when freed), a few hundred once the service's setting keeps them."""
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_ROUND, mode], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    reused, faults_per_round = done.stdout.split()
    if mode == "reuse":
        assert reused == "True" and float(faults_per_round) < 1_000, done.stdout
    else:
        assert reused == "False" and float(faults_per_round) > 2_000, done.stdout
