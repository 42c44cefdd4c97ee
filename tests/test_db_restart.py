"""PostgreSQL restarted under load, on a private throwaway cluster (initdb in a temporary directory) so the
shared server the other tests use is never touched. Requests in flight fail cleanly (503 envelope), /readyz
tells the truth meanwhile, and the services recover without a restart of their own."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import asyncpg
import pytest

from devtools.stack import free_ports, postgres_bin, wait_for_port, with_database
from services.chat.app import create_app as chat_app
from services.chat.resources import CHAT as RESOURCES
from services.conversations.app import create_app as conversations_app
from shared import apply_migrations
from tests.conftest import bearer, make_settings
from tests.figures import FIGURES
from tests.test_faults import books_balance, mixed_request

pytestmark = pytest.mark.production_loop  # each test runs on asyncio and on uvloop (conftest)


def as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture
def private_cluster():
    # Not under pytest's tmp_path: its root-only parent would keep the postgres user out.
    base = Path(tempfile.mkdtemp(prefix="wibot-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    data, port = base / "data", free_ports(1)[0]
    subprocess.run(
        as_postgres([postgres_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    pg_ctl = postgres_bin("pg_ctl")
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1"

    def ctl(*args: str) -> None:
        subprocess.run(
            as_postgres([pg_ctl, "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", *args]),
            check=True,
            capture_output=True,
            timeout=60,
        )

    ctl("start")
    wait_for_port(port)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", ctl
    finally:
        subprocess.run(as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


async def test_postgres_restart_under_load(private_cluster, make_client, fake_mistral):
    server_url, ctl = private_cluster
    admin = await asyncpg.connect(server_url)
    await admin.execute("CREATE DATABASE wibot")
    await admin.close()
    url = with_database(server_url, "wibot")
    await asyncio.to_thread(apply_migrations, url)
    conn = await asyncpg.connect(url)
    users = [
        await conn.fetchval(
            "INSERT INTO users (username, password_hash) VALUES ($1, 'x') RETURNING user_id", f"user{i}"
        )
        for i in range(4)
    ]
    await conn.close()

    settings = make_settings(url, mistral_server_url=fake_mistral.url, db_command_timeout_s=3)
    chat = await make_client(chat_app(settings))
    conversations = await make_client(conversations_app(settings))
    fake_mistral.latency_s = 0.05

    async def one(i: int) -> int:
        return await mixed_request(chat, conversations, users[i % 4], listing=i % 3 == 0)

    async def restart() -> list[int]:
        await asyncio.sleep(0.15)
        await asyncio.to_thread(ctl, "-m", "fast", "stop")
        FIGURES["faults_injected"] += 1
        during = [(await chat.get("/readyz")).status for _ in range(3)]
        await asyncio.to_thread(ctl, "start")
        return during

    async def load() -> list[int]:
        statuses = []
        for wave in range(6):
            statuses += await asyncio.gather(*[one(wave * 10 + i) for i in range(10)])
            await asyncio.sleep(0.1)
        return statuses

    statuses, readiness_while_down = await asyncio.gather(load(), restart())
    assert set(statuses) <= {200, 503} and 503 in statuses, statuses
    assert readiness_while_down == [503, 503, 503]

    for _ in range(50):  # recovered, without restarting the service
        if (await chat.get("/readyz")).status == 200:
            break
        await asyncio.sleep(0.2)
    r = await chat.post(
        "/webhook/wibot/chat", json={"conversation_id": str(uuid.uuid4()), "message": "x"}, headers=bearer(users[0])
    )
    assert r.status == 200, await r.text()
    # Refunds and charges that met the outage are retried in the background: wait for them to end.
    assert await chat.app[RESOURCES].background.drain(within_s=60), "deferred refunds still pending"
    conn = await asyncpg.connect(url)
    try:
        await books_balance(conn, fake_mistral)
    finally:
        await conn.close()


async def test_a_service_started_before_its_database_waits_for_it(private_cluster):
    from shared.db import create_pool_when_ready

    server_url, ctl = private_cluster
    await asyncio.to_thread(ctl, "-m", "fast", "stop")
    settings = make_settings(server_url, db_startup_wait_s=30)
    waiting = asyncio.ensure_future(create_pool_when_ready(settings, application_name="test-startup"))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # still waiting, not crashed
    await asyncio.to_thread(ctl, "start")
    pool = await asyncio.wait_for(waiting, timeout=30)
    try:
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()
    gave_up = make_settings(f"postgresql://postgres@127.0.0.1:{free_ports(1)[0]}/x", db_startup_wait_s=0.3)
    with pytest.raises(OSError):
        await create_pool_when_ready(gave_up, application_name="test-startup")
