"""`make bench`: every workflow through nginx, against a ceiling, on this machine.

Starts the stack as `make run` does (same Procfile commands, nginx included, the fake Mistral with
FAKE_MISTRAL_LATENCY_MS, default 0) on its own database, seeds realistic data, drives each route with wrk at
concurrency 1, 16 and 64, and prints req/s, p50/p95/p99, errors and each service's peak RSS. Every
throughput is also given as a ratio of the ceiling (a bare aiohttp `SELECT 1` behind the same nginx),
measured in the same run: the machine is shared and noisy, ratios travel better than absolute figures.

    python -m bench.run [--seconds 5] [--heavy-conversations 10000] [--out bench/out]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from devtools.stack import Topology, free_ports, procfile, wait_for_port, with_database, write_nginx_main
from shared import apply_migrations, issue_token

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "wrk_report.lua"
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
CONCURRENCY = (1, 16, 64)
POOL_MAX = 20
# auth, chat, conversations and the ceiling each open a pool; beside them, one connection per LISTEN (sessions in
# all four, the knowledge base in chat), and a few for the harness itself (seeding, the database's drop).
POOLED_PROCESSES = 4
LISTENERS = 5
SPARE_CONNECTIONS = 4


# --- data ---------------------------------------------------------------------------------------------


async def seed(url: str, *, heavy_conversations: int, password_hash: str) -> dict[str, int]:
    await asyncio.to_thread(apply_migrations, url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO users (username, password_hash, role) VALUES ('khora', $1, 'admin'), ('heavy', $1, 'user'),"
            " ('light', $1, 'user')",
            password_hash,
        )
        await conn.execute(
            "INSERT INTO users (username, password_hash) SELECT 'user' || i, $1 FROM generate_series(1, 50) AS i",
            password_hash,
        )
        ids = {r["username"]: r["user_id"] for r in await conn.fetch("SELECT user_id, username FROM users")}

        async def conversations(user_id: int, count: int, messages_each: str) -> None:
            await conn.execute(
                "INSERT INTO conversations (conversation_id, user_id, title, updated_at)"
                " SELECT gen_random_uuid(), $1, 'Conversation ' || i,"
                " NOW() AT TIME ZONE 'UTC' - i * INTERVAL '1 minute' FROM generate_series(1, $2) AS i",
                user_id,
                count,
            )
            await conn.execute(
                "INSERT INTO messages (conversation_id, user_id, role, content, tokens, created_at)"
                " SELECT c.conversation_id, c.user_id, CASE WHEN j % 2 = 1 THEN 'user' ELSE 'assistant' END,"
                " repeat('Contenu de message réaliste pour le benchmark. ', 4), 40,"
                " c.updated_at - (100 - j) * INTERVAL '1 second'"
                f" FROM conversations c CROSS JOIN LATERAL generate_series(1, {messages_each}) AS j"
                " WHERE c.user_id = $1",
                user_id,
            )

        await conversations(ids["heavy"], heavy_conversations, "50")
        await conversations(ids["light"], 10, "50")
        for i in range(1, 51):
            await conversations(ids[f"user{i}"], 50, "2 + (abs(hashtext(c.conversation_id::text)) % 39)")
        await conn.execute(
            "INSERT INTO user_token_usage (user_id, month, used_tokens, quota_tokens)"
            " SELECT user_id, DATE_TRUNC('month', NOW() AT TIME ZONE 'UTC')::date, 0, 1000000000000 FROM users"
        )
        await conn.execute("VACUUM ANALYZE")
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM conversations) AS conversations, (SELECT count(*) FROM messages) AS messages"
        )
        ids["_conversations"], ids["_messages"] = counts["conversations"], counts["messages"]
        heavy_conv = await conn.fetchval(
            "SELECT conversation_id FROM conversations WHERE user_id = $1 ORDER BY updated_at DESC LIMIT 1",
            ids["heavy"],
        )
        ids["_heavy_conversation"] = str(heavy_conv)
        return ids
    finally:
        await conn.close()


# --- load ---------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    path: str
    method: str = "GET"
    body: str | None = None
    token: str | None = None
    chat: bool = False
    concurrency: tuple[int, ...] = CONCURRENCY


@dataclass
class Result:
    scenario: str
    concurrency: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    requests: int
    ratio_to_ceiling: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def wrk_command(base: str, scenario: Scenario, concurrency: int, seconds: float) -> tuple[list[str], dict[str, str]]:
    threads = max(1, min(2, concurrency))
    command = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(concurrency),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(LUA),
        base + scenario.path,
    ]
    env = {**os.environ, "WRK_METHOD": scenario.method}
    if scenario.body is not None:
        env["WRK_BODY"] = scenario.body
    if scenario.token:
        env["WRK_TOKEN"] = scenario.token
    if scenario.chat:
        env["WRK_CHAT"] = "1"
    return command, env


def parse_wrk(output: str) -> dict[str, Any]:
    match = re.search(r"WRK_JSON (\{.*\})", output)
    if not match:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    summary: dict[str, Any] = json.loads(match.group(1))
    return summary


async def run_wrk(base: str, scenario: Scenario, concurrency: int, seconds: float) -> Result:
    command, env = wrk_command(base, scenario, concurrency, seconds)
    proc = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    data = parse_wrk(out.decode())
    seconds_run = data["duration_us"] / 1e6
    refused = data.get("refused_503", 0)
    return Result(
        scenario.name,
        concurrency,
        round((data["requests"] - data["non_2xx"]) / seconds_run, 1),  # answered requests only
        round(data["p50_ms"], 2),
        round(data["p95_ms"], 2),
        round(data["p99_ms"], 2),
        data["non_2xx"] - refused + data["socket_errors"],
        data["requests"],
        extra={"refused_503": refused} if refused else {},
    )


def peak_rss_mb(pids: dict[str, int]) -> dict[str, float]:
    peaks = {}
    for name, pid in pids.items():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        if match:
            peaks[name] = round(int(match.group(1)) / 1024, 1)
    return peaks


# --- orchestration ------------------------------------------------------------------------------------


async def recreate_database(server_url: str, name: str) -> str:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def free_connections(conn: asyncpg.Connection) -> int:
    """Client connections the server would still accept (max_connections less its reserved ones and those open)."""
    free: int = await conn.fetchval(
        "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
        " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
    )
    return free


async def pool_max_with_room(database_url: str) -> int:
    """POOL_MAX, or less when the server has no room for four full pools beside the connections it serves already
    (a test run's, a developer's stack): past max_connections a connection is refused ("too many clients") and
    the scenario that needed it counts errors."""
    conn = await asyncpg.connect(database_url)
    try:
        free = await free_connections(conn)
    finally:
        await conn.close()
    pool_max = max(2, min(POOL_MAX, (free - LISTENERS - SPARE_CONNECTIONS) // POOLED_PROCESSES))
    if pool_max < POOL_MAX:
        print(f"pools cut to {pool_max} connections each: the server has room for no more", flush=True)
    return pool_max


def knowledge_base_on() -> None:
    """The knowledge base as `make run` has it (the demo corpus, ingested by the chat service at start), for the
    next start_stack: each chat then embeds its question and searches the base (two model calls)."""
    os.environ.update(
        {
            "KB_ROOT": str(ROOT / "devtools" / "kb_corpus"),
            "KB_SYNC_EVERY_S": "3600",
            "KB_MIN_SIMILARITY": "0.15",  # the fake embedder's scale
        }
    )


async def knowledge_ready(database_url: str, timeout_s: float = 120) -> int:
    """The demo corpus ingested by the chat service's first sync: its chunks, once their count stops growing."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline, last = time.monotonic() + timeout_s, -1
        while time.monotonic() < deadline:
            count = int(await conn.fetchval("SELECT count(*) FROM kb_chunks"))
            if count and count == last:
                return count
            last = count
            await asyncio.sleep(2)
        raise TimeoutError("the knowledge base was not ingested in time")
    finally:
        await conn.close()


def start_stack(
    database_url: str, run_dir: Path, pool_max: int
) -> tuple[str, dict[str, subprocess.Popen[bytes]], list[int]]:
    gateway, auth, chat, conversations, fake, ceiling, safeguard = free_ports(7)
    os.environ.update(
        {
            "JWT_SECRET": SECRET,
            "DATABASE_URL": database_url,
            "MISTRAL_API_KEY": "",
            "MISTRAL_SERVER_URL": f"http://127.0.0.1:{fake}",
            "LOG_LEVEL": "WARNING",
            "DB_POOL_MAX": str(pool_max),
            # The benchmark is a load on purpose: no per-user request limits.
            "CHAT_REQUESTS_PER_MINUTE": "0",
            "CONVERSATION_CREATIONS_PER_MINUTE": "0",
            "CHAT_CONCURRENT_PER_USER": "0",
            "FAKE_MISTRAL_LATENCY_MS": os.environ.get("FAKE_MISTRAL_LATENCY_MS", "0"),
        }
    )
    topology = Topology.from_env(
        {
            "GATEWAY_PORT": str(gateway),
            "AUTH_PORTS": str(auth),
            "CHAT_PORTS": str(chat),
            "CONVERSATIONS_PORTS": str(conversations),
            "FAKE_MISTRAL_PORT": str(fake),
            "FAKE_SAFEGUARD_PORT": str(safeguard),
            # The benchmark drives logins on purpose: no rate limit, no access log to write.
            "LOGIN_RATE_LIMIT": "100000r/s",
            "LOGIN_BURST": "100000",
            # Its load generator is one client (one token) standing for many users: the per-client share of
            # connections would refuse its 64.
            "CONN_LIMIT_PER_CLIENT": "1000",
            "NGINX_ACCESS_LOG": "/dev/null",
        }
    )
    conf = write_nginx_main(topology, run_dir)
    site = conf.parent / "wibot.conf"
    # The ceiling app joins the same nginx under /bench/ (only in the benchmark).
    site.write_text(
        site.read_text().replace(
            "    location / {",
            f"    location /bench/ {{ proxy_pass http://127.0.0.1:{ceiling}; }}\n\n    location / {{",
        )
    )
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for line in procfile(topology, conf, private_pg=None).splitlines():
        name, _, command = line.partition(": ")
        processes[name] = subprocess.Popen(shlex.split(command), cwd=ROOT, stdout=subprocess.DEVNULL)
    processes["ceiling"] = subprocess.Popen(
        [sys.executable, "-m", "bench.ceiling", "--port", str(ceiling)], cwd=ROOT, stdout=subprocess.DEVNULL
    )
    try:
        for port in (gateway, auth, chat, conversations, fake, ceiling):
            wait_for_port(port)
    except TimeoutError:
        stop_stack(processes)
        raise
    return f"http://127.0.0.1:{gateway}", processes, [auth, chat, conversations]


def stop_stack(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in processes.values():
        proc.send_signal(signal.SIGINT)
    for proc in processes.values():
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


async def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    assert shutil.which("wrk"), "wrk is required (apt-get install wrk)"
    server = os.environ.get("BENCH_SERVER_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    # Its own database, dropped at the end: two runs at once (a test run beside a developer's) never share one.
    database_name = f"wibot_bench_{os.getpid()}"
    database_url = await recreate_database(server, database_name)
    import bcrypt

    started = time.monotonic()
    ids = await seed(
        database_url,
        heavy_conversations=args.heavy_conversations,
        password_hash=bcrypt.hashpw(b"test123", bcrypt.gensalt(10)).decode(),
    )
    seed_seconds = round(time.monotonic() - started, 1)
    run_dir = Path(args.out).resolve() / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    base, processes, _ = start_stack(database_url, run_dir, await pool_max_with_room(database_url))
    pids = {name: proc.pid for name, proc in processes.items() if name in {"auth", "chat", "conversations"}}

    def token(user: str, role: str = "user") -> str:
        return issue_token(user_id=ids[user], username=user, role=role, secret=SECRET, ttl_seconds=3600)

    heavy, light = token("heavy"), token("light")
    login_body = json.dumps({"username": "khora", "password": "test123"})
    scenarios = [
        Scenario("ceiling (SELECT 1)", "/bench/ceiling"),
        Scenario("login", "/webhook/auth/login", "POST", login_body),
        Scenario("list, 10,000 conversations", "/webhook/wibot/conversations", token=heavy),
        Scenario("list, 10 conversations", "/webhook/wibot/conversations", token=light),
        Scenario("messages (50)", f"/webhook/wibot/conversations/{ids['_heavy_conversation']}/messages", token=heavy),
        Scenario("user tokens", "/webhook/wibot/user/tokens", token=light),
        Scenario("chat, 0 ms model", "/webhook/wibot/chat", "POST", token=token("user1"), chat=True),
        Scenario("jwt decode only", "/bench/jwt", token=light, concurrency=(16,)),
        Scenario("jwt + revocation check", "/bench/session", token=light, concurrency=(16,)),
        Scenario("jwt + session copy", "/bench/session-cached", token=light, concurrency=(16,)),
    ]
    results: list[Result] = []
    try:
        for scenario in scenarios:
            for concurrency in scenario.concurrency:
                result = await run_wrk(base, scenario, concurrency, args.seconds)
                results.append(result)
                print(
                    f"{scenario.name:<30} c={concurrency:<3} {result.rps:>9.1f} req/s  p50 {result.p50_ms:>8.2f}"
                    f"  p95 {result.p95_ms:>8.2f}  p99 {result.p99_ms:>8.2f} ms  errors {result.errors}",
                    flush=True,
                )
        # Listing while a login storm saturates bcrypt: its p99 against the idle listing at the same concurrency.
        storm = Scenario("login storm", "/webhook/auth/login", "POST", login_body)
        listing = Scenario("list during login storm", "/webhook/wibot/conversations", token=light)
        storm_task = asyncio.ensure_future(run_wrk(base, storm, 16, args.seconds + 1))
        await asyncio.sleep(0.5)
        during = await run_wrk(base, listing, 16, args.seconds)
        await storm_task
        results.append(during)
        print(f"{during.scenario:<30} c=16  {during.rps:>9.1f} req/s  p99 {during.p99_ms:.2f} ms", flush=True)
        rss = peak_rss_mb(pids)
    finally:
        stop_stack(processes)
        await drop_database(server, database_name)

    ceiling = {r.concurrency: r.rps for r in results if r.scenario.startswith("ceiling")}
    for result in results:
        if ceiling.get(result.concurrency):
            result.ratio_to_ceiling = round(result.rps / ceiling[result.concurrency], 3)
    return summarize(results, rss, ids, seed_seconds, args)


def find(results: list[Result], scenario: str, concurrency: int) -> Result:
    return next(r for r in results if r.scenario == scenario and r.concurrency == concurrency)


def summarize(
    results: list[Result], rss: dict[str, float], ids: dict[str, Any], seed_seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Issue #18's targets (round 2), each a ratio of figures measured in this run."""
    chat1, chat16 = find(results, "chat, 0 ms model", 1), find(results, "chat, 0 ms model", 16)
    ceiling1 = find(results, "ceiling (SELECT 1)", 1)
    list_heavy = find(results, "list, 10,000 conversations", 16)
    list_light = find(results, "list, 10 conversations", 16)
    storm, idle = find(results, "list during login storm", 16), list_light
    jwt_only = find(results, "jwt decode only", 16)
    session, session_copy = find(results, "jwt + revocation check", 16), find(results, "jwt + session copy", 16)
    login = max((r for r in results if r.scenario == "login"), key=lambda r: r.rps)
    targets = [
        (
            "chat p50 at c=1 (0 ms model), minus the ceiling's p50",
            f"{chat1.p50_ms - ceiling1.p50_ms:.2f} ms",
            "≤ 4 ms",
            chat1.p50_ms - ceiling1.p50_ms <= 4,
        ),
        (
            "chat throughput / the 10,000-conversation listing's (c=16)",
            f"{chat16.rps / max(list_heavy.rps, 1e-6):.2f}",
            "≥ 0.6",
            chat16.rps >= 0.6 * list_heavy.rps,
        ),
        (
            "listing throughput / ceiling (c=16, 10,000 conv.)",
            f"{list_heavy.ratio_to_ceiling}",
            "≥ 0.5",
            (list_heavy.ratio_to_ceiling or 0) >= 0.5,
        ),
        (
            "listing p50: 10,000 conv. / 10 conv. (c=16)",
            f"{list_heavy.p50_ms / max(list_light.p50_ms, 1e-6):.2f}×",
            "≤ 1.3×",
            list_heavy.p50_ms <= 1.3 * list_light.p50_ms,
        ),
        (
            "listing p99 during a login storm / idle (c=16)",
            f"{storm.p99_ms / max(idle.p99_ms, 1e-6):.2f}×",
            "≤ 1.5×",
            storm.p99_ms <= 1.5 * idle.p99_ms,
        ),
        ("login throughput (best concurrency)", f"{login.rps:.1f}/s", "(reported)", True),
        (
            "peak RSS per service",
            ", ".join(f"{k} {v} MB" for k, v in rss.items()),
            "≤ 80 MB",
            all(v <= 80 for v in rss.values()),
        ),
        (
            "authentication cost (c=16), throughput / JWT decode alone: query, session copy",
            f"{session.rps / max(jwt_only.rps, 1e-6):.2f}, {session_copy.rps / max(jwt_only.rps, 1e-6):.2f}",
            "(reported)",
            True,
        ),
    ]
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
        "seconds_per_run": args.seconds,
        "event_loop": os.environ.get("EVENT_LOOP", "uvloop"),
        "model_latency_ms": float(os.environ.get("FAKE_MISTRAL_LATENCY_MS", "0")),
        "data": {"conversations": ids["_conversations"], "messages": ids["_messages"], "seed_seconds": seed_seconds},
        "results": [r.__dict__ for r in results],
        "peak_rss_mb": rss,
        "db_pool_max": int(os.environ["DB_POOL_MAX"]),
        "targets": [{"target": t, "measured": m, "goal": g, "met": ok} for t, m, g, ok in targets],
    }


def write_markdown(report: dict[str, Any], path: Path) -> None:
    lines = [
        "# Benchmark results",
        "",
        f"- Date: {report['date']}",
        f"- Machine: {report['machine']['cpus']} CPUs, {report['machine']['platform']},"
        f" Python {report['machine']['python']}",
        f"- Command: `{report['command']}` ({report['seconds_per_run']} s per run, model latency"
        f" {report['model_latency_ms']} ms, event loop {report.get('event_loop', 'asyncio')})",
        f"- Data: {report['data']['conversations']:,} conversations, {report['data']['messages']:,} messages"
        f" (seeded in {report['data']['seed_seconds']} s)",
        "",
        "All routes go through nginx. `ratio` = throughput / the ceiling's (bare aiohttp `SELECT 1` behind the same"
        " nginx) at the same concurrency, measured in the same run.",
        "",
        "| Scenario | c | req/s | ratio | p50 ms | p95 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["results"]:
        ratio = "" if r["ratio_to_ceiling"] is None else f"{r['ratio_to_ceiling']:.3f}"
        lines.append(
            f"| {r['scenario']} | {r['concurrency']} | {r['rps']} | {ratio} | {r['p50_ms']} | {r['p95_ms']}"
            f" | {r['p99_ms']} | {r['errors']} |"
        )
    lines += ["", "## Targets", "", "| Target | Measured | Goal | Met |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {t['target']} | {t['measured']} | {t['goal']} | {'yes' if t['met'] else 'NO'} |" for t in report["targets"]
    ]
    analysis = ROOT / "bench" / "ANALYSIS.md"
    if analysis.exists():
        lines += ["", analysis.read_text(encoding="utf-8")]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--heavy-conversations", type=int, default=10_000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    parser.add_argument("--markdown", default=None, help="write the table there (make bench: bench/RESULTS.md)")
    args = parser.parse_args()
    report = asyncio.run(benchmark(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    write_markdown(report, Path(args.markdown) if args.markdown else out / "RESULTS.md")
    for target in report["targets"]:
        print(f"{'ok ' if target['met'] else 'MISS'} {target['target']}: {target['measured']} (goal {target['goal']})")


if __name__ == "__main__":
    main()
