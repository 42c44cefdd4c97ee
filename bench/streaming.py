"""Streaming benchmark: `python -m bench.streaming` (part of `make bench`).

The stack as `make run` starts it (nginx included), the fake model streaming one chunk every CHUNK_DELAY_MS
(default 20 ms). At concurrency 1 and 16, clients send streamed chats (SSE) back to back for SECONDS and
record the time to the first delta (TTFB) and the deltas received; the same clients read the SSE ceiling
(`/bench/sse`, a bare aiohttp handler emitting as many chunks at the same rate behind the same nginx).
Reported: TTFB p50/p95, chunks/s, and the overhead per chunk (a stream's duration minus the ceiling's, over
its chunks), measured in one run. Writes bench/streaming.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.run import SECRET, drop_database, pool_max_with_room, recreate_database, start_stack, stop_stack
from devtools.fake_mistral import REPLY_PREFIX
from shared import apply_migrations, issue_token

ROOT = Path(__file__).resolve().parent.parent
CHUNK_CHARS = 8  # the fake server's chunk size


async def seed(url: str, users: int) -> list[int]:
    await asyncio.to_thread(apply_migrations, url)
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "INSERT INTO users (username, password_hash) SELECT 'stream' || i, 'x' FROM generate_series(1, $1) AS i"
            " RETURNING user_id",
            users,
        )
        # A quota no benchmark exhausts.
        await conn.execute(
            "INSERT INTO user_token_usage (user_id, month, used_tokens, quota_tokens)"
            " SELECT user_id, date_trunc('month', now() AT TIME ZONE 'UTC')::date, 0, 1000000000000 FROM users"
        )
    finally:
        await conn.close()
    return [row["user_id"] for row in rows]


async def one_stream(session: aiohttp.ClientSession, url: str, **request: Any) -> tuple[float, float, int]:
    """(time to the first delta, whole duration, deltas) of one streamed answer."""
    started = time.perf_counter()
    first, deltas = 0.0, 0
    async with session.request(url=url, **request) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if line.startswith(b"event: delta"):
                deltas += 1
                first = first or time.perf_counter() - started
    return first, time.perf_counter() - started, deltas


async def drive(concurrency: int, seconds: float, make_request: Any) -> dict[str, float]:
    samples: list[tuple[float, float, int]] = []
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client(slot: int) -> None:
            while time.perf_counter() < deadline:
                url, request = make_request(slot)
                samples.append(await one_stream(session, url, **request))

        started = time.perf_counter()
        await asyncio.gather(*(client(slot) for slot in range(concurrency)))
        wall = time.perf_counter() - started
    ttfb = sorted(first * 1000 for first, _, _ in samples)
    return {
        "streams": len(samples),
        "ttfb_p50_ms": round(statistics.median(ttfb), 2),
        "ttfb_p95_ms": round(ttfb[max(0, int(len(ttfb) * 0.95) - 1)], 2),
        "chunks_per_s": round(sum(deltas for _, _, deltas in samples) / wall, 1),
        "ms_per_chunk": round(statistics.mean(total * 1000 / deltas for _, total, deltas in samples if deltas), 3),
        "chunks_per_stream": round(statistics.mean(deltas for _, _, deltas in samples), 1),
    }


async def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["FAKE_MISTRAL_CHUNK_DELAY_MS"] = str(args.chunk_delay_ms)
    server = os.environ.get("BENCH_SERVER_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"wibot_bench_streaming_{os.getpid()}"  # two runs at once (tests) do not share it
    url = await recreate_database(server, name)
    ids = await seed(url, max(args.concurrency))
    run_dir = Path(tempfile.mkdtemp(prefix="wibot-bench-streaming-"))
    base, processes, _ = start_stack(url, run_dir, await pool_max_with_room(url))
    tokens = [issue_token(user_id=i, username=f"u{i}", role="user", secret=SECRET, ttl_seconds=3600) for i in ids]
    message = "Décris la procédure de sauvegarde du site, étape par étape."
    chunks = -(-len(f"{REPLY_PREFIX} Vous avez écrit : {message}") // CHUNK_CHARS)

    def chat(slot: int) -> tuple[str, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {tokens[slot]}", "Accept": "text/event-stream"}
        body = {"conversation_id": str(uuid.uuid4()), "message": message}
        return f"{base}/webhook/wibot/chat", {"method": "POST", "json": body, "headers": headers}

    def ceiling(_slot: int) -> tuple[str, dict[str, Any]]:
        return f"{base}/bench/sse?chunks={chunks}&delay_ms={args.chunk_delay_ms}", {"method": "GET"}

    report: dict[str, Any] = {"chunk_delay_ms": args.chunk_delay_ms, "chunks_per_reply": chunks, "runs": {}}
    try:
        for concurrency in args.concurrency:
            chat_figures = await drive(concurrency, args.seconds, chat)
            ceiling_figures = await drive(concurrency, args.seconds, ceiling)
            overhead = chat_figures["ms_per_chunk"] - ceiling_figures["ms_per_chunk"]
            report["runs"][f"c{concurrency}"] = {
                "chat": chat_figures,
                "ceiling": ceiling_figures,
                "overhead_ms_per_chunk": round(overhead, 3),
                "chunks_per_s_ratio_to_ceiling": round(
                    chat_figures["chunks_per_s"] / ceiling_figures["chunks_per_s"], 3
                ),
            }
    finally:
        stop_stack(processes)
        await drop_database(server, name)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.streaming", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "streaming.json")
    args = parser.parse_args()
    report = asyncio.run(benchmark(args))
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for name, run in report["runs"].items():
        chat, ceiling = run["chat"], run["ceiling"]
        print(
            f"{name:>4}: TTFB p50 {chat['ttfb_p50_ms']} ms (ceiling {ceiling['ttfb_p50_ms']}), p95"
            f" {chat['ttfb_p95_ms']} ms; {chat['chunks_per_s']} chunks/s ({run['chunks_per_s_ratio_to_ceiling']} of"
            f" the ceiling's {ceiling['chunks_per_s']}); overhead {run['overhead_ms_per_chunk']} ms per chunk"
        )


if __name__ == "__main__":
    main()
