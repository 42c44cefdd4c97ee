"""What one large chat request costs the chat process's event loop: its CPU time (counted by the kernel, whatever
else the machine does) per 4.3 MB body — read, parsed, validated, refused at the file check (415, before any
extraction: what every large attachment costs before a worker sees it). One chat process as production runs it.

    python -m bench.bodies [--requests 40]

To compare two versions, run it in each one's checkout (the service is started from this file's tree).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import orjson

from bench.attacks import add_user
from bench.run import SECRET, drop_database, recreate_database
from devtools.stack import free_ports, wait_for_port
from shared import apply_migrations, issue_token
from tests.documents import b64, slow_pdf

ROOT = Path(__file__).resolve().parent.parent
SERVER_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def cpu_ms(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")  # proc(5): utime, stime


async def main_async(args: argparse.Namespace) -> dict[str, float | int]:
    name = f"wibot_bench_bodies_{os.getpid()}"
    url = await recreate_database(SERVER_URL, name)
    await asyncio.to_thread(apply_migrations, url)
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "JWT_SECRET": SECRET,
        "LOG_LEVEL": "WARNING",
        "CHAT_REQUESTS_PER_MINUTE": "0",
        "MISTRAL_API_KEY": "bench",
        "MISTRAL_SERVER_URL": "http://127.0.0.1:9",  # never reached: the file check refuses first
    }
    command = [sys.executable, "-m", "services.chat", "--port", str(port)]
    service = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await asyncio.to_thread(wait_for_port, port, 60)
        db = await asyncpg.connect(url)
        reader = await add_user(db, "corps")
        refused = await add_user(db, "sans-quota", quota=0)
        await db.close()
        files = [{"name": "lent.exe", "content": b64(slow_pdf())}]
        body = orjson.dumps({"conversation_id": str(uuid.uuid4()), "message": "Lis", "files": files})
        chat_url = f"http://127.0.0.1:{port}/webhook/wibot/chat"
        async with aiohttp.ClientSession() as session:

            async def cpu_per_request(user_id: int, expected: int) -> float:
                token = issue_token(user_id=user_id, username="corps", role="user", secret=SECRET, ttl_seconds=3600)
                headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

                async def send() -> int:
                    async with session.post(chat_url, data=body, headers=headers) as response:
                        await response.read()
                        return response.status

                statuses = [await send() for _ in range(3)]  # warmed: connection, first allocations
                before = cpu_ms(service.pid)
                statuses = [await send() for _ in range(args.requests)]
                spent = cpu_ms(service.pid) - before
                assert set(statuses) == {expected}, statuses
                per_request: float = round(spent / args.requests, 2)
                return per_request

            return {
                "body_bytes": len(body),
                "requests": args.requests,
                "chat_cpu_ms_per_request": await cpu_per_request(reader, 415),
                "chat_cpu_ms_per_refused_request": await cpu_per_request(refused, 429),
            }
    finally:
        service.terminate()
        await asyncio.wait_for(service.wait(), 20)
        await drop_database(SERVER_URL, name)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bodies", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "bodies.json")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(
        f"chat CPU per {report['body_bytes']:,}-byte body: {report['chat_cpu_ms_per_request']} ms read and refused"
        f" at the file check, {report['chat_cpu_ms_per_refused_request']} ms refused before it is read"
    )


if __name__ == "__main__":
    main()
