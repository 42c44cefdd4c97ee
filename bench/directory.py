"""Directory login against local login (#29): throughput and p50/p99 at c=1 and c=16, in one run.

    .venv/bin/python -m bench.directory [--seconds 5] [--out bench/directory.json]

One auth process as production runs it (`python -m services.auth`, AUTH_MODE=both, production's bcrypt cost 10),
the test directory (a real slapd, tests/directory.py) on loopback, a scratch database. Each case logs in as fast
as it can for `--seconds` with c clients: a local account (bcrypt), a directory account (search + bind + groups +
the account's update), a directory account's wrong password, and a username nobody has (which binds all the same:
its time beside the wrong password's is the no-enumeration-by-timing check).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import bcrypt

from bench.run import SECRET, drop_database, recreate_database
from devtools.stack import free_ports, wait_for_port
from shared import apply_migrations
from tests import directory as ldap

SERVER_URL = os.environ.get(
    "BENCH_SERVER_URL", os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
)
CASES = {
    "local (bcrypt 10)": ("localuser", "local-pw-2026", 200),
    "directory": ("bob", "bob-pw-2026", 200),
    "directory, wrong password": ("bob", "wrong-password", 401),
    "unknown username": ("nobody-at-all", "wrong-password", 401),
}


async def run_case(
    url: str, username: str, password: str, expected: int, concurrency: int, seconds: float
) -> dict[str, float]:
    latencies: list[float] = []
    unexpected = 0
    deadline = time.monotonic() + seconds

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal unexpected
        while time.monotonic() < deadline:
            started = time.perf_counter()
            async with http.post(url, json={"username": username, "password": password}) as r:
                await r.read()
                unexpected += r.status != expected
            latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    latencies.sort()
    return {
        "requests": len(latencies),
        "per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "unexpected_status": unexpected,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    slapd = ldap.start_slapd()
    database = await recreate_database(SERVER_URL, "wibot_bench_directory")
    await asyncio.to_thread(apply_migrations, database)
    conn = await asyncpg.connect(database)
    password_hash = bcrypt.hashpw(b"local-pw-2026", bcrypt.gensalt(10)).decode()
    await conn.execute("INSERT INTO users (username, password_hash) VALUES ('localuser', $1)", password_hash)
    await conn.close()
    (port,) = free_ports(1)
    env = {
        **os.environ, "DATABASE_URL": database, "JWT_SECRET": SECRET, "LOG_LEVEL": "WARNING", "AUTH_MODE": "both",
        "BCRYPT_ROUNDS": "10", "LDAP_URL": slapd.url, "LDAP_START_TLS": "false", "LDAP_BIND_DN": ldap.SERVICE_DN,
        "LDAP_BIND_PASSWORD": ldap.SERVICE_PASSWORD, "LDAP_USER_BASE": ldap.BASE,
        "LDAP_USER_FILTER": ldap.OPENLDAP_FILTER, "LDAP_ID_ATTRIBUTE": "entryUUID",
        "LDAP_ADMIN_GROUPS": json.dumps([ldap.ADMINS]), "LDAP_LEVEL_GROUPS": json.dumps(ldap.LEVEL_GROUPS),
    }  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.auth", "--host", "127.0.0.1", "--port", str(port), env=env
    )
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        await asyncio.to_thread(wait_for_port, port)
        url = f"http://127.0.0.1:{port}/webhook/auth/login"
        for concurrency in (1, 16):
            for name, (username, password, expected) in CASES.items():
                await run_case(url, username, password, expected, concurrency, 0.5)  # warm-up
                figures = await run_case(url, username, password, expected, concurrency, args.seconds)
                results.setdefault(f"c={concurrency}", {})[name] = figures
                print(f"c={concurrency:<3} {name:<28} {json.dumps(figures)}", flush=True)
    finally:
        process.terminate()
        await process.wait()
        slapd.stop()
        await drop_database(SERVER_URL, "wibot_bench_directory")
    if args.out:
        args.out.write_text(json.dumps({"seconds": args.seconds, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
