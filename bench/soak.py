"""`python -m bench.soak`: each service's memory under a long chat load, as an operator would try it.

Starts the stack as `bench.run` does (nginx, the fake model answering at once) on its own database, drives chat
at c=16 through nginx with wrk for `--minutes`, and samples each service's resident memory (VmRSS) every
`--every` seconds beside the number of chats answered so far. Writes bench/soak.json and prints, per service,
its RSS at the start of the load, at half-time and at the end, and the growth over the second half per 10,000
chats: a plateau is a growth under `PLATEAU_MB_PER_10K`.

    python -m bench.soak [--minutes 10] [--every 10] [--no-knowledge] [--out bench/soak.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.run import (
    ROOT,
    SECRET,
    Scenario,
    drop_database,
    knowledge_base_on,
    knowledge_ready,
    pool_max_with_room,
    recreate_database,
    run_wrk,
    start_stack,
    stop_stack,
)
from shared import apply_migrations, issue_token

PLATEAU_MB_PER_10K = 0.5
SERVICES = ("auth", "chat", "conversations")


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return round(int(match.group(1)) / 1024, 1) if match else None


async def seed_user(url: str) -> int:
    await asyncio.to_thread(apply_migrations, url)
    conn = await asyncpg.connect(url)
    try:
        user_id: int = await conn.fetchval(
            "INSERT INTO users (username, password_hash) VALUES ('soak', 'x') RETURNING user_id"
        )
        await conn.execute(
            "INSERT INTO user_token_usage (user_id, month, used_tokens, quota_tokens)"
            " VALUES ($1, DATE_TRUNC('month', NOW() AT TIME ZONE 'UTC')::date, 0, 1000000000000)",
            user_id,
        )
        return user_id
    finally:
        await conn.close()


async def sample(url: str, pids: dict[str, int], every: float, until: float) -> list[dict[str, Any]]:
    samples = []
    conn = await asyncpg.connect(url)
    started = time.monotonic()
    try:
        while time.monotonic() < until:
            chats = await conn.fetchval("SELECT count(*) FROM messages WHERE role = 'assistant'")
            row: dict[str, Any] = {"t_s": round(time.monotonic() - started, 1), "chats": chats}
            row.update({name: rss_mb(pid) for name, pid in pids.items()})
            samples.append(row)
            print(json.dumps(row), flush=True)
            await asyncio.sleep(every)
    finally:
        await conn.close()
    return samples


def growth(samples: list[dict[str, Any]], service: str) -> dict[str, Any]:
    """RSS at the start, half-time and end, and the second half's growth per 10,000 chats."""
    points = [(s["chats"], s[service]) for s in samples if s.get(service) is not None]
    if len(points) < 3:
        return {}
    (_, r0), (c_half, r_half), (c_end, r_end) = points[0], points[len(points) // 2], points[-1]
    per_10k = (r_end - r_half) / max(c_end - c_half, 1) * 10_000
    return {
        "start_mb": r0,
        "half_mb": r_half,
        "end_mb": r_end,
        "max_mb": max(r for _, r in points),
        "chats_at_half": c_half,
        "chats_at_end": c_end,
        "second_half_mb_per_10k_chats": round(per_10k, 2),
        "plateau": per_10k < PLATEAU_MB_PER_10K,
    }


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    server = os.environ.get("BENCH_SERVER_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"wibot_soak_{os.getpid()}"
    url = await recreate_database(server, name)
    user_id = await seed_user(url)
    run_dir = ROOT / "bench" / "out" / "soak-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    # Each chat opens a conversation (wrk_report.lua): tens of thousands here, beyond the per-user cap.
    os.environ["MAX_CONVERSATIONS_PER_USER"] = "0"
    if args.knowledge:
        knowledge_base_on()
    base, processes, _ = start_stack(url, run_dir, await pool_max_with_room(url))
    pids = {service: processes[service].pid for service in SERVICES if service in processes}
    token = issue_token(user_id=user_id, username="soak", role="user", secret=SECRET, ttl_seconds=86_400)
    chat = Scenario(f"soak {uuid.uuid4().hex[:6]}", "/webhook/wibot/chat", "POST", token=token, chat=True)
    seconds = args.minutes * 60
    try:
        chunks = await knowledge_ready(url) if args.knowledge else 0
        load = asyncio.ensure_future(run_wrk(base, chat, 16, seconds))
        samples = await sample(url, pids, args.every, time.monotonic() + seconds)
        result = await load
    finally:
        stop_stack(processes)
        await drop_database(server, name)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": f"python -m bench.soak --minutes {args.minutes} --every {args.every}"
        + ("" if args.knowledge else " --no-knowledge"),
        "knowledge_base_chunks": chunks,
        "event_loop": os.environ.get("EVENT_LOOP", "uvloop"),
        "load": {"concurrency": 16, "rps": result.rps, "p50_ms": result.p50_ms, "errors": result.errors},
        "services": {service: growth(samples, service) for service in pids},
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument(
        "--knowledge", action=argparse.BooleanOptionalAction, default=True, help="the demo knowledge base on"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "soak.json"))
    args = parser.parse_args()
    report = asyncio.run(soak(args))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for service, figures in report["services"].items():
        print(f"{service}: {json.dumps(figures)}")


if __name__ == "__main__":
    main()
