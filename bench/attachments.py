"""Attachments benchmark: `python -m bench.attachments` (part of `make bench`).

1. Extraction throughput: MB/s of pypdf on a ~10 MB text PDF, in this process (one core); and pypdf's CPU with
   the extraction workers' garbage collector threshold against Python's default, on that PDF and on a
   drawing-heavy page.
2. Chat latency through nginx with the instant fake model: p50 of a chat with a 1 MB PDF attached (sent as the
   newer frontend sends it, base64) against the same chat without a file, measured in one run.
3. Peak RSS of the chat service (and of its helper processes: forkserver, extraction workers) while 8 such chats
   run at once.
Writes bench/attachments.json and prints a summary; figures are ratios measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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

from bench.run import SECRET, peak_rss_mb, pool_max_with_room, recreate_database, start_stack, stop_stack
from services.chat.extraction import WORKER_GC_YOUNG, pdf_text
from shared import apply_migrations, issue_token
from tests.documents import b64, slow_pdf, text_pdf

ROOT = Path(__file__).resolve().parent.parent
LINE = "Procédure réseau : vérifier le lien, redémarrer le routeur, tester la résolution DNS et noter le ticket."


def pdf_of(megabytes: float) -> bytes:
    """A text PDF of about `megabytes` MB: pages of 40 lines of prose."""
    page = "\n".join(f"{i:02d} {LINE}" for i in range(40))
    one = len(text_pdf([page]))
    return text_pdf([page] * max(1, round(megabytes * 1_000_000 / one)))


def extraction_throughput(size_mb: float) -> dict[str, float]:
    data = pdf_of(size_mb)
    started = time.perf_counter()
    text, pages = pdf_text(data, max_pages=1_000_000)
    seconds = time.perf_counter() - started
    return {
        "pdf_mb": round(len(data) / 1e6, 2),
        "pages": pages,
        "seconds": round(seconds, 2),
        "mb_per_s": round(len(data) / 1e6 / seconds, 2),
        "chars": len(text),
    }


def collector_cost(size_mb: float) -> dict[str, dict[str, float]]:
    """pypdf's CPU with Python's default garbage collector thresholds and with the extraction workers'
    (WORKER_GC_YOUNG), on a text PDF and on one page of 100,000 drawing operations, in this process."""
    default = gc.get_threshold()
    report = {}
    for label, data in (("text_pdf", pdf_of(size_mb)), ("drawing_heavy_page", slow_pdf(100_000))):
        seconds = {}
        for name, young in (("default", default[0]), ("workers", WORKER_GC_YOUNG)):
            gc.set_threshold(young, *default[1:])
            started = time.process_time()
            pdf_text(data, max_pages=1_000_000)
            seconds[name] = time.process_time() - started
            gc.set_threshold(*default)
            gc.collect()
        report[label] = {
            "default_s": round(seconds["default"], 2),
            "workers_s": round(seconds["workers"], 2),
            "workers_vs_default": round(seconds["workers"] / seconds["default"], 2),
        }
    return report


async def chat_latencies(base: str, token: str, files: list[dict[str, str]] | None, count: int) -> list[float]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    timings = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            payload = {"conversation_id": str(uuid.uuid4()), "message": "Résume ce document", "files": files or []}
            body = json.dumps(payload).encode()
            started = time.perf_counter()
            async with session.post(base + "/webhook/wibot/chat", data=body, headers=headers) as r:
                await r.read()
                assert r.status == 200, r.status
            timings.append((time.perf_counter() - started) * 1000)
    return timings


async def concurrent_chats(base: str, token: str, files: list[dict[str, str]], count: int) -> None:
    async def one(session: aiohttp.ClientSession) -> None:
        payload = {"conversation_id": str(uuid.uuid4()), "message": "Résume", "files": files}
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with session.post(base + "/webhook/wibot/chat", data=json.dumps(payload).encode(), headers=headers) as r:
            await r.read()
            assert r.status == 200, r.status

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session) for _ in range(count)))


def descendants(pid: int) -> list[int]:
    """The chat's forkserver and the extraction workers it forked (grandchildren of the chat process)."""
    try:
        direct = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []
    return [p for child in direct for p in (child, *descendants(child))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"extraction": extraction_throughput(args.pdf_mb)}
    print(f"extraction: {report['extraction']}", flush=True)
    report["garbage_collector"] = collector_cost(args.pdf_mb)
    print(f"garbage collector: {report['garbage_collector']}", flush=True)

    server = os.environ.get("BENCH_SERVER_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    url = await recreate_database(server, "wibot_bench_files")
    await asyncio.to_thread(apply_migrations, url)
    conn = await asyncpg.connect(url)
    user_id = await conn.fetchval("INSERT INTO users (username, password_hash) VALUES ('bench', 'x') RETURNING user_id")
    await conn.execute(
        "INSERT INTO user_token_usage (user_id, month, used_tokens, quota_tokens)"
        " VALUES ($1, DATE_TRUNC('month', NOW() AT TIME ZONE 'UTC')::date, 0, 1000000000000)",
        user_id,
    )
    await conn.close()
    token = issue_token(user_id=user_id, username="bench", role="user", secret=SECRET, ttl_seconds=3600)
    os.environ["CHAT_FILES_MAX_CHARS"] = "10000000"  # the whole document reaches the (instant) model
    pdf = pdf_of(1.0)
    files = [{"name": "rapport.pdf", "content": b64(pdf)}]
    with tempfile.TemporaryDirectory() as run_dir:
        base, processes, _ = start_stack(url, Path(run_dir), await pool_max_with_room(url))
        try:
            await chat_latencies(base, token, files, 2)  # warm-up: workers started, pools filled
            without = await chat_latencies(base, token, None, args.count)
            with_pdf = await chat_latencies(base, token, files, args.count)
            chat_pid = processes["chat"].pid
            before = peak_rss_mb({"chat": chat_pid})
            await concurrent_chats(base, token, files, 8)
            peaks = peak_rss_mb({"chat": chat_pid, **{f"helper{p}": p for p in descendants(chat_pid)}})
        finally:
            stop_stack(processes)
    p50_without, p50_with = statistics.median(without), statistics.median(with_pdf)
    report["chat"] = {
        "pdf_mb": round(len(pdf) / 1e6, 2),
        "count": args.count,
        "p50_ms_without_file": round(p50_without, 1),
        "p50_ms_with_1mb_pdf": round(p50_with, 1),
        "ratio": round(p50_with / p50_without, 1),
    }
    report["rss_mb"] = {"chat_before_8_concurrent": before.get("chat"), "peaks_after_8_concurrent": peaks}
    print(f"chat: {report['chat']}\nrss: {report['rss_mb']}", flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.attachments", description=__doc__.splitlines()[0])
    parser.add_argument("--pdf-mb", type=float, default=10.0, help="size of the PDF for the throughput figure")
    parser.add_argument("--count", type=int, default=20, help="chats per latency series")
    parser.add_argument("--out", default=str(ROOT / "bench" / "attachments.json"))
    args = parser.parse_args()
    report = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
