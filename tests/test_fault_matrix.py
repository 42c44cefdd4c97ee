"""Each dependency's faults against the stack as production runs it: `python -m devtools.stack run` (what `make run`
starts: nginx in front, every service by its real launcher on its default event loop, supervised), PostgreSQL,
the model server and Safeguard each behind tests/faultproxy.py (the model and Safeguard are the project's fakes,
which speak their real APIs; PostgreSQL is the machine's).

For every fault the suite asserts: no service process exits; the requests of other users that do not need the
failed dependency keep answering 200; the affected ones get a clear envelope with Retry-After (or 200 when the
fault missed them); once the dependency is back, chats work again; and nothing is lost or charged twice (every
conversation holds whole exchanges, usage equals what the messages and unsaved charges hold, every answer the
model gave is charged once). Each test also measures the other users' p99 during the fault against idle
(tests/fault_figures.py).

The directory's faults are in tests/test_directory_faults.py (the auth process alone, on slapd).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp import web

from devtools import fake_mistral, fake_safeguard
from devtools.stack import free_ports, wait_for_port, with_database
from tests import fault_figures
from tests.conftest import TEST_SECRET, bearer
from tests.faultproxy import FaultProxy
from tests.test_faults import books_balance

ROOT = Path(__file__).resolve().parent.parent
CHAT = "/webhook/wibot/chat"
LIST = "/webhook/wibot/conversations"
LOGIN = "/webhook/auth/login"
APPROVE = "/webhook/wibot/safeguard/approve"
DB_COMMAND_TIMEOUT_S = 2
MODEL_TIMEOUT_S = 3
SAFEGUARD_TIMEOUT_S = 1
FAULT_WINDOW_S = 3.0
pytestmark = pytest.mark.timeout(180)


class ThreadedApp:
    """An aiohttp app (a fake upstream) on loopback, on its own loop in a thread: it keeps answering whatever the
    test's loop does, and lives as long as the module's stack."""

    def __init__(self, app: web.Application) -> None:
        (self.port,) = free_ports(1)
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None)
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-upstream", daemon=True)
        self._thread.start()
        self._call(self._start())

    def _call(self, coroutine: Awaitable[None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)  # type: ignore[arg-type]

    async def _start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@dataclass
class Stack:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, list[int]]
    db: FaultProxy
    model: FaultProxy
    safeguard: FaultProxy
    mistral: fake_mistral.FakeMistral
    approvals: fake_safeguard.FakeSafeguard

    def service_pids(self) -> dict[int, int]:
        """port -> pid of the process listening there."""
        wanted = {port for ports in self.ports.values() for port in ports}
        found: dict[int, int] = {}
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port in wanted and conn.pid:
                found[conn.laddr.port] = conn.pid
        return found


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("faults")
    mistral_state, approvals = fake_mistral.FakeMistral(), fake_safeguard.FakeSafeguard()
    mistral_app, safeguard_app = (
        ThreadedApp(fake_mistral.create_app(mistral_state)),
        ThreadedApp(fake_safeguard.create_app(approvals)),
    )
    server = database_url.split("@", 1)[1].split("/", 1)[0]
    db = FaultProxy(int(server.rsplit(":", 1)[1])).start()
    model, safeguard = FaultProxy(mistral_app.port).start(), FaultProxy(safeguard_app.port).start()
    gateway, auth, chat1, chat2, conversations, fake, fake_sg = free_ports(7)
    ports = {"auth": [auth], "chat": [chat1, chat2], "conversations": [conversations]}
    env = {
        **{k: v for k, v in os.environ.items() if k != "EVENT_LOOP"},  # the services' default loop
        "JWT_SECRET": TEST_SECRET,
        "DATABASE_URL": with_database(f"postgresql://postgres@{db.url_host}/postgres", database_url.rsplit("/", 1)[1]),
        "STACK_RUN_DIR": str(run_dir),
        "GATEWAY_PORT": str(gateway), "AUTH_PORTS": str(auth), "CHAT_PORTS": f"{chat1} {chat2}",
        "CONVERSATIONS_PORTS": str(conversations), "FAKE_MISTRAL_PORT": str(fake), "FAKE_SAFEGUARD_PORT": str(fake_sg),
        "MISTRAL_API_KEY": "test-key", "MISTRAL_SERVER_URL": f"http://{model.url_host}",
        "MISTRAL_TIMEOUT_S": str(MODEL_TIMEOUT_S), "MISTRAL_RETRY_MAX_ELAPSED_S": "0.5",
        "MISTRAL_RETRY_INITIAL_MS": "100",
        "SAFEGUARD_URL": f"http://{safeguard.url_host}", "SAFEGUARD_TIMEOUT_S": str(SAFEGUARD_TIMEOUT_S),
        "DB_COMMAND_TIMEOUT_S": str(DB_COMMAND_TIMEOUT_S), "DB_POOL_MAX": "5",
        "BCRYPT_ROUNDS": "4", "LOG_LEVEL": "INFO", "CHAT_REQUESTS_PER_MINUTE": "10000", "CHAT_BURST": "0",
        "LOGIN_RATE_LIMIT": "1000r/s", "LOGIN_BURST": "1000", "KB_TOP_K": "0", "KB_SYNC_EVERY_S": "0",
        "DEFAULT_QUOTA_TOKENS": "1000000000", "AUTH_MODE": "local",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }  # fmt: skip
    log = run_dir / "stack.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "devtools.stack", "run"], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        for port in (gateway, auth, chat1, chat2, conversations):
            wait_for_port(port)
        yield Stack(f"http://127.0.0.1:{gateway}", process, log, ports, db, model, safeguard, mistral_state, approvals)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        for each in (db, model, safeguard):
            each.stop()
        mistral_app.stop()
        safeguard_app.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@dataclass
class Answer:
    status: int
    body: Any
    retry_after: str | None
    seconds: float


async def call(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Answer:
    started = time.monotonic()
    async with http.request(method, url, **kwargs) as response:
        text = await response.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return Answer(response.status, body, response.headers.get("Retry-After"), time.monotonic() - started)


def ask(user_id: int, message: str = "Où en est le ticket ?", **extra: Any) -> dict[str, Any]:
    return {"json": {"conversation_id": str(uuid.uuid4()), "message": message, **extra}, "headers": bearer(user_id)}


async def during(window_s: float, request: Callable[[], Awaitable[Answer]]) -> list[Answer]:
    """One request after another for the window: what a user sees over those seconds."""
    answers, deadline = [], time.monotonic() + window_s
    while time.monotonic() < deadline:
        answers.append(await request())
    return answers


def assert_clear_refusal(answer: Answer, *codes: str) -> None:
    assert answer.status in (502, 503, 504), (answer.status, answer.body)
    assert answer.body["success"] is False and answer.body.get("code") in codes, answer.body
    assert answer.retry_after and int(answer.retry_after) > 0, answer


def assert_processes_alive(stack: Stack, before: dict[int, int]) -> None:
    assert stack.process.poll() is None, stack.log.read_text()[-3000:]
    assert stack.service_pids() == before, "a service process exited (or was restarted)"


async def too_many_clients(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """What PostgreSQL answers a connection past max_connections: an ErrorResponse, SQLSTATE 53300, then closed
    (protocol-flow "Start-up": the SSLRequest is answered "N" first)."""
    first = await reader.read(8)
    if len(first) == 8 and struct.unpack("!ii", first) == (8, 80877103):  # SSLRequest
        writer.write(b"N")
        await writer.drain()
        await reader.read(65536)  # the StartupMessage
    fields = b"SFATAL\0VFATAL\0C53300\0Msorry, too many clients already\0\0"
    writer.write(b"E" + struct.pack("!i", len(fields) + 4) + fields)
    await writer.drain()
    writer.close()


@contextlib.contextmanager
def model_fault(stack: Stack, fault: str) -> Iterator[None]:
    if fault == "model_down":
        stack.model.set("refuse")
    elif fault == "model_5xx":
        stack.mistral.failures = [500] * 10_000
    elif fault == "model_hung_before_first_byte":
        stack.model.set("hang")
    try:
        yield
    finally:
        stack.model.set("pass")
        stack.mistral.failures = []


MODEL_FAULTS = ["model_down", "model_5xx", "model_hung_before_first_byte"]


@pytest.mark.parametrize("fault", MODEL_FAULTS)
async def test_a_model_fault_refuses_chats_clearly_and_nothing_else(stack, http, factory, db, fault):
    asker, other = await factory.user("asker"), await factory.user("other", "other-pw-2026")
    answered_before = stack.mistral.answered
    before = stack.service_pids()
    listing = lambda: call(http, "GET", stack.url + LIST, headers=bearer(other))  # noqa: E731
    assert (await call(http, "POST", stack.url + CHAT, **ask(asker))).status == 200
    idle = await during(1.0, listing)
    with model_fault(stack, fault):
        chat = lambda: call(http, "POST", stack.url + CHAT, **ask(asker))  # noqa: E731
        chats = asyncio.ensure_future(during(FAULT_WINDOW_S, chat))
        others = await during(FAULT_WINDOW_S, listing)
        logins = [await call(http, "POST", stack.url + LOGIN, json={"username": "other", "password": "other-pw-2026"})]
        refused = await chats
    for answer in refused:
        assert_clear_refusal(answer, "LLM_UNAVAILABLE", "LLM_TIMEOUT")
    assert [a.status for a in others + logins] == [200] * len(others + logins)
    assert_processes_alive(stack, before)
    assert (await call(http, "POST", stack.url + CHAT, **ask(asker))).status == 200  # back
    await wait_for_settled(db)
    stack.mistral.answered -= answered_before  # books_balance counts this test's answers only
    try:
        await books_balance(db, stack.mistral)
    finally:
        stack.mistral.answered += answered_before
    record(fault, idle, others, refused)


async def test_a_stream_cut_mid_reply_ends_with_an_error_event_and_charges_nothing(stack, http, factory, db):
    user_id = await factory.user("streamer")
    before = stack.service_pids()
    stack.mistral.chunk_delay_s, stack.mistral.reply = 0.05, "Une réponse assez longue pour être coupée. " * 10
    stack.model.cut_after = 1500  # bytes of the SSE answer: the headers and a few chunks
    try:
        answer = await call(http, "POST", stack.url + CHAT, **ask(user_id, stream=True))
    finally:
        stack.model.cut_after, stack.mistral.chunk_delay_s, stack.mistral.reply = None, 0.0, None
    assert answer.status == 200  # the status went with the first text
    events = [block for block in answer.body.split("\n\n") if block.startswith("event:")]
    assert events[0].startswith("event: delta") and events[-1].startswith("event: error"), answer.body[-500:]
    error = json.loads(events[-1].split("data: ", 1)[1])
    assert error["success"] is False and error["code"] == "LLM_UNAVAILABLE"
    await wait_for_settled(db)
    assert await db.fetchval("SELECT count(*) FROM messages") == 0  # nothing saved of a reply that failed
    assert await db.fetchval("SELECT coalesce(sum(used_tokens), 0) FROM user_token_usage") == 0
    assert_processes_alive(stack, before)
    await books_balance(db)


async def test_a_stream_whose_settlement_meets_a_database_outage_ends_with_a_503_event(stack, http, factory, db):
    """The reply streamed, then PostgreSQL gone when it is saved: the last event is the 503 DB_UNAVAILABLE envelope
    the JSON path answers (it was a 500), and the answer is charged once the database is back."""
    user_id = await factory.user("settler")
    answered_before = stack.mistral.answered
    stack.mistral.chunk_delay_s, stack.mistral.reply = 0.1, "Une réponse qui prend son temps. " * 5
    try:
        streaming = asyncio.ensure_future(call(http, "POST", stack.url + CHAT, **ask(user_id, stream=True)))
        await asyncio.sleep(1.0)  # the reply flows; the database goes
        stack.db.set("refuse")
        answer = await streaming
    finally:
        stack.db.set("pass")
        stack.mistral.chunk_delay_s, stack.mistral.reply = 0.0, None
    assert answer.status == 200
    events = [block for block in answer.body.split("\n\n") if block.startswith("event:")]
    assert events[0].startswith("event: delta") and events[-1].startswith("event: error"), answer.body[-500:]
    error = json.loads(events[-1].split("data: ", 1)[1])
    assert (error["success"], error["code"]) == (False, "DB_UNAVAILABLE"), error
    await wait_for_settled(db)  # the charge, deferred while the database was gone, is made when it is back
    stack.mistral.answered -= answered_before
    try:
        await books_balance(db, stack.mistral)
    finally:
        stack.mistral.answered += answered_before
    assert await db.fetchval("SELECT count(*) FROM unsaved_charges WHERE user_id = $1", user_id) == 1


DB_FAULTS = ["db_restart", "db_hung_connections", "db_max_connections"]


@pytest.mark.parametrize("fault", DB_FAULTS)
async def test_a_database_fault_is_a_503_with_retry_after_and_the_books_still_balance(stack, http, factory, db, fault):
    users = [await factory.user(f"dbuser{i}") for i in range(4)]
    before = stack.service_pids()
    listing = lambda user: call(http, "GET", stack.url + LIST, headers=bearer(user))  # noqa: E731
    idle = await during(1.0, lambda: listing(users[0]))
    answered_before = stack.mistral.answered
    work = [
        asyncio.ensure_future(during(FAULT_WINDOW_S, lambda user=user: listing(user))) for user in users[:2]
    ] + [
        asyncio.ensure_future(
            during(FAULT_WINDOW_S, lambda user=user: call(http, "POST", stack.url + CHAT, **ask(user)))
        )
        for user in users[2:]
    ]  # fmt: skip
    await asyncio.sleep(0.3)  # requests are flowing when the fault strikes
    try:
        if fault == "db_restart":  # every connection killed, nothing listening for a second, then back
            stack.db.set("refuse")
            await asyncio.sleep(1.0)
            stack.db.set("pass")
        elif fault == "db_hung_connections":  # pooled connections stop answering; new ones hang at start-up
            stack.db.set("hang")
        else:
            stack.db.reset_all()  # the pools reconnect... into a server that is full
            stack.db.set("serve", handler=too_many_clients)
        await asyncio.sleep(FAULT_WINDOW_S - 1.3)
        health = [await call(http, "GET", f"http://127.0.0.1:{port}/healthz") for port in stack.ports["chat"]]
    finally:
        stack.db.set("pass")
    results = await asyncio.gather(*work)
    answers = [answer for each in results for answer in each]
    for answer in answers:
        if answer.status != 200:
            assert (answer.status, answer.body.get("code")) == (503, "DB_UNAVAILABLE"), answer.body
            assert answer.retry_after, answer
    assert [h.status for h in health] == [200] * len(health)  # alive: the orchestrator does not kill them
    assert any(answer.status == 503 for answer in answers), "the fault reached no request"
    assert_processes_alive(stack, before)
    await eventually_ok(lambda: call(http, "POST", stack.url + CHAT, **ask(users[0])))
    await wait_for_settled(db)
    stack.mistral.answered -= answered_before
    try:
        await books_balance(db, stack.mistral)
    finally:
        stack.mistral.answered += answered_before
    record(fault, idle, [a for a in answers if a.status == 200], [a for a in answers if a.status != 200])


@pytest.mark.parametrize("fault", ["safeguard_down", "safeguard_slow"])
async def test_a_safeguard_fault_refuses_decisions_clearly_and_chats_go_on(stack, http, factory, db, fault):
    approver = await factory.user("approver")
    await db.execute("UPDATE users SET accreditation_level = 'N3' WHERE user_id = $1", approver)
    chatter = await factory.user("chatter")
    before = stack.service_pids()
    approval = stack.approvals.add(
        fake_safeguard.held_request(tool_name="ad_unlock_account", security_level="L1", expires_in_s=600)
    )["approval_id"]
    chat = lambda: call(http, "POST", stack.url + CHAT, **ask(chatter))  # noqa: E731
    idle = await during(1.0, chat)
    stack.safeguard.set("refuse" if fault == "safeguard_down" else "slow", delay_s=SAFEGUARD_TIMEOUT_S + 1)
    try:
        decision = asyncio.ensure_future(
            call(http, "POST", stack.url + APPROVE, json={"approval_id": approval}, headers=bearer(approver))
        )
        others = await during(FAULT_WINDOW_S, chat)
        refused = [await decision]
    finally:
        stack.safeguard.set("pass")
    assert_clear_refusal(refused[0], "SAFEGUARD_UNAVAILABLE")
    assert stack.approvals.requests[approval]["status"] == "pending"  # never reported done, never done
    assert [a.status for a in others] == [200] * len(others)
    assert_processes_alive(stack, before)
    record(fault, idle, others, refused)


async def test_one_chat_replica_killed_the_gateway_keeps_serving_chats_and_it_comes_back(stack, http, factory, db):
    """A replica that dies (OOM, a crash): nginx sends the chats to the other, and `make run` restarts it. A chat
    sent on a connection nginx kept alive to the dead replica is answered 502 in the envelope, not replayed on the
    other (a chat is not idempotent: nginx's default for POST); every later chat is answered."""
    user_id = await factory.user("replica")
    killed_port = stack.ports["chat"][0]
    killed_pid = stack.service_pids()[killed_port]
    os.kill(killed_pid, signal.SIGKILL)
    answers = await during(2.0, lambda: call(http, "POST", stack.url + CHAT, **ask(user_id)))
    statuses = [a.status for a in answers]
    lost = statuses.index(200) if 200 in statuses else len(statuses)
    assert lost <= 2 and statuses[lost:] == [200] * (len(statuses) - lost) and len(statuses) - lost >= 5, statuses
    for answer in answers[:lost]:
        assert answer.status == 502 and answer.body["success"] is False, answer.body
    async with asyncio.timeout(30):  # restarted by the stack's supervisor, on the same port
        while stack.service_pids().get(killed_port) in (None, killed_pid):
            await asyncio.sleep(0.2)
    assert stack.process.poll() is None
    restarted = [json.loads(line.split("| ", 1)[1]) for line in stack.log.read_text().splitlines()
                 if "service_restarting" in line]  # fmt: skip
    assert any(entry.get("exit_code") == -signal.SIGKILL for entry in restarted), restarted
    await wait_for_settled(db)
    await books_balance(db)


async def wait_for_settled(db: Any) -> None:
    """Until every reservation is settled or refunded (deferred refunds retry in the background)."""
    async with asyncio.timeout(30):
        while await db.fetchval("SELECT count(*) FROM token_reservations"):
            await asyncio.sleep(0.1)


async def eventually_ok(request: Callable[[], Awaitable[Answer]], within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while (answer := await request()).status != 200:
        assert time.monotonic() < deadline, answer
        await asyncio.sleep(0.2)


def record(fault: str, idle: list[Answer], others: list[Answer], affected: list[Answer]) -> None:
    def timed(answers: list[Answer]) -> list[tuple[int, float]]:
        return [(answer.status, answer.seconds) for answer in answers]

    fault_figures.record(fault, idle=timed(idle), others=timed(others), affected=timed(affected))
