"""The directory's faults, with the auth service run as production runs it: `python -m services.auth`, its default
event loop (uvloop), the production server options, a real slapd behind tests/faultproxy.py (or stopped by
SIGSTOP). For each fault: the process never exits, a directory login answers 503 DIRECTORY_UNAVAILABLE (or 429 for
an address past its share) with Retry-After within LDAP_TIMEOUT_S + 1 s, the local admin (break-glass) and local
users log in meanwhile — even with 20 directory logins from the same address waiting — no connection a timeout
touched is left open, and directory logins work again once the directory is back.

Before the fix, the first timed-out login aborted the process under uvloop (SIGABRT): bonsai left the cancelled
search's socket watched by the loop, and closing it made libuv abort (services/auth/directory/client.py _release).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from devtools.stack import free_ports
from tests import directory as ldap
from tests import fault_figures
from tests.faultproxy import FaultProxy
from tests.test_server_process import running

ROOT = Path(__file__).resolve().parent.parent
LOGIN = "/webhook/auth/login"
LDAP_TIMEOUT_S = 1.5
POOL_SIZE = 2
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def proxy(slapd: ldap.Slapd) -> Iterator[FaultProxy]:
    server = FaultProxy(slapd.port).start()
    yield server
    server.stop()


class AuthProcess:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.proc, self.url, self.log_path = proc, url, log_path

    def log(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def connections_to(self, port: int) -> int:
        """Open TCP connections of the process (its workers' included) to this port."""
        process = psutil.Process(self.proc.pid)
        found = 0
        for each in [process, *process.children(recursive=True)]:
            found += sum(
                1 for c in each.net_connections(kind="tcp")
                if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
            )  # fmt: skip
        return found


@pytest.fixture
def auth(database_url: str, proxy: FaultProxy, tmp_path: Path, db: Any) -> Iterator[AuthProcess]:
    (port,) = free_ports(1)
    env = {
        **{k: v for k, v in os.environ.items() if k != "EVENT_LOOP"},  # the default loop, as production runs it
        "DATABASE_URL": database_url, "JWT_SECRET": "Zq8vR2mL5pWn0sKd7fJ3hYt6uBx1cEa9gVo4iN2rQwM5zT8y",
        "AUTH_MODE": "both", "LDAP_URL": f"ldap://{proxy.url_host}", "LDAP_START_TLS": "false",
        "LDAP_BIND_DN": ldap.SERVICE_DN, "LDAP_BIND_PASSWORD": ldap.SERVICE_PASSWORD, "LDAP_USER_BASE": ldap.BASE,
        "LDAP_USER_FILTER": ldap.OPENLDAP_FILTER, "LDAP_ID_ATTRIBUTE": "entryUUID",
        "LDAP_TIMEOUT_S": str(LDAP_TIMEOUT_S), "LDAP_CONNECT_TIMEOUT_S": "1", "LDAP_POOL_SIZE": str(POOL_SIZE),
        "BCRYPT_ROUNDS": "4", "LOG_LEVEL": "INFO", "PYTHONFAULTHANDLER": "1",
    }  # fmt: skip
    log_path = tmp_path / "auth.log"
    with running([sys.executable, "-m", "services.auth", "--port", str(port)], env, port, log_path) as proc:
        process = AuthProcess(proc, f"http://127.0.0.1:{port}", log_path)
        [starting] = [e for e in process.log() if e["event"] == "service_starting"]
        assert starting["event_loop"] == "uvloop"  # what production runs, and what aborted
        yield process
        assert proc.poll() is None, f"the auth process exited ({proc.returncode}): {log_path.read_text()[-3000:]}"


async def login(http: aiohttp.ClientSession, url: str, username: str, password: str) -> tuple[int, dict, float, str]:
    started = time.monotonic()
    async with http.post(url + LOGIN, json={"username": username, "password": password}) as response:
        body = await response.json()
        return response.status, body, time.monotonic() - started, response.headers.get("Retry-After", "")


FAULTS = ["hang", "sigstop", "refuse", "reset", "slow_past_timeout"]


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_directory_fault_never_takes_the_auth_process_down_nor_local_accounts_with_it(
    fault, auth, proxy, slapd, factory, db
):
    await factory.user("secours", "secours-pw-2026", role="admin")  # the break-glass account
    await factory.user("agent", "agent-pw-2026")  # a local user
    async with aiohttp.ClientSession() as http:
        assert (await login(http, auth.url, "bob", "bob-pw-2026"))[0] == 200  # a service connection is pooled
        idle = [await login(http, auth.url, "agent", "agent-pw-2026") for _ in range(10)]
        with directory_fault(proxy, slapd, fault):
            # An office behind one NAT address retrying: 20 directory logins wait on the sick directory...
            waiting = [asyncio.ensure_future(login(http, auth.url, "bob", "bob-pw-2026")) for _ in range(20)]
            try:
                await asyncio.sleep(0.2)
                # ...and the local accounts log in meanwhile, from the same address, without queueing behind them.
                status, body, _, _ = await login(http, auth.url, "secours", "secours-pw-2026")
                assert (status, body.get("user", {}).get("role")) == (200, "admin"), body
                during = [await login(http, auth.url, "agent", "agent-pw-2026") for _ in range(10)]
                assert [status for status, *_ in during] == [200] * 10
                results = await asyncio.gather(*waiting)
            finally:
                for task in waiting:
                    task.cancel()
                await asyncio.gather(*waiting, return_exceptions=True)
            for status, body, elapsed, retry_after in results:
                assert (status, body.get("code")) in {(503, "DIRECTORY_UNAVAILABLE"), (429, "RATE_LIMITED")}, body
                assert retry_after and elapsed <= LDAP_TIMEOUT_S + 1, (elapsed, body)
            assert any(status == 503 for status, *_ in results)
            assert auth.proc.poll() is None
            fault_figures.record(
                f"directory_{fault}", idle=[(s, t) for s, _, t, _ in idle], others=[(s, t) for s, _, t, _ in during],
                affected=[(s, t) for s, _, t, _ in results],
            )  # fmt: skip
            async with http.get(auth.url + "/readyz") as ready:
                assert ready.status == 200  # the directory is not the service's readiness
        await asyncio.sleep(0.3)  # the timed-out connections' closing reaches the kernel
        # Every connection a timeout touched was released: at most the pool's idle connections stay open.
        assert auth.connections_to(proxy.port) <= POOL_SIZE
        # The directory is back: its users log in again, on fresh connections.
        assert (await login(http, auth.url, "bob", "bob-pw-2026"))[0] == 200
    assert auth.proc.poll() is None


class directory_fault:
    """One of the directory's faults, in force in the block."""

    def __init__(self, proxy: FaultProxy, slapd: ldap.Slapd, fault: str) -> None:
        self.proxy, self.slapd, self.fault = proxy, slapd, fault

    def __enter__(self) -> None:
        if self.fault == "sigstop":  # the real server stopped: connections accepted by its kernel, never answered
            self.slapd.pause()
        elif self.fault == "slow_past_timeout":
            self.proxy.set("slow", delay_s=LDAP_TIMEOUT_S)
        else:
            self.proxy.set(self.fault)  # type: ignore[arg-type]

    def __exit__(self, *_: object) -> None:
        self.slapd.resume()
        self.proxy.set("pass")


async def test_a_slow_directory_within_its_timeout_still_logs_its_users_in(auth, proxy, factory, db):
    async with aiohttp.ClientSession() as http:
        with proxy.fault("slow", delay_s=0.05):
            results = await asyncio.gather(*(login(http, auth.url, "bob", "bob-pw-2026") for _ in range(4)))
    assert [status for status, *_ in results] == [200] * 4


async def test_a_local_admin_named_like_a_directory_entry_is_never_locked_out(auth, proxy, slapd, factory, db):
    """A directory entry of the local admin's name, in another case: the local password still logs the admin in, the
    directory's password for that name makes no second account (409), and nothing is linked."""
    slapd.add_person("Secours2", "directory-pw-2026")
    admin_id = await factory.user("secours2", "local-admin-pw-2026", role="admin")
    async with aiohttp.ClientSession() as http:
        status, body, *_ = await login(http, auth.url, "SECOURS2", "local-admin-pw-2026")
        assert (status, body["user"]["id"], body["user"]["role"]) == (200, admin_id, "admin")
        status, body, *_ = await login(http, auth.url, "Secours2", "directory-pw-2026")
        assert (status, body["code"]) == (409, "ACCOUNT_CONFLICT")
        with proxy.fault("hang"):
            status, body, *_ = await login(http, auth.url, "secours2", "local-admin-pw-2026")
            assert status == 200
    rows = await db.fetch("SELECT user_id, directory_id, role FROM users WHERE lower(username) = 'secours2'")
    assert [tuple(row) for row in rows] == [(admin_id, None, "admin")]
