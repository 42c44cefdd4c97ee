"""Our chat against LiteLLM's proxy as a bare passthrough to the same fake model, in one run:
`python -m bench.passthrough` (writes bench/passthrough.json; `make bench-passthrough`).

Our side is the whole chat as users get it — through nginx, token, rate limit, memory, quota reservation, the
knowledge base (the question embedded and the demo corpus searched: two model calls per chat), the completion
and the save — with the chat service as `make run` starts it. LiteLLM's side is its proxy (`litellm --model …
--api_base …`, one worker) forwarding `/chat/completions` to the same fake Mistral server, reached directly (no
nginx, no database): what a gateway costs when it does nothing but pass a request on. LiteLLM is installed into
a throwaway virtual environment (--venv) the first time, never into the project's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.run import (
    ROOT,
    SECRET,
    Result,
    Scenario,
    drop_database,
    knowledge_base_on,
    knowledge_ready,
    peak_rss_mb,
    pool_max_with_room,
    recreate_database,
    run_wrk,
    seed,
    start_stack,
    stop_stack,
)
from devtools.stack import free_ports, wait_for_port
from shared import issue_token

LITELLM_VERSION = "1.108.7"
MASTER_KEY = "sk-" + secrets.token_hex(32)
CONCURRENCY = (1, 16)


def litellm_executable(venv: Path) -> Path:
    """LiteLLM's CLI in `venv`, installed there first if missing (network to PyPI, about a minute)."""
    executable = venv / "bin" / "litellm"
    if not executable.exists():
        print(f"installing litellm[proxy]=={LITELLM_VERSION} into {venv} (throwaway)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
    return executable


def start_litellm(executable: Path, fake_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    # Not our DATABASE_URL: with one, LiteLLM's proxy would try to keep its own tables there.
    ours = {"DATABASE_URL"}
    env = {
        **{name: value for name, value in os.environ.items() if name not in ours},
        "MISTRAL_API_KEY": "fake",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the price list at start
        "LITELLM_LOG": "ERROR",
        "LITELLM_MASTER_KEY": MASTER_KEY,  # it refuses to start without one; each request then carries it
    }
    command = [
        str(executable),
        "--model",
        "mistral/mistral-small-latest",
        "--api_base",
        f"{fake_url}/v1",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    return subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    assert shutil.which("wrk"), "wrk is required (apt-get install wrk)"
    executable = litellm_executable(Path(args.venv))
    server = os.environ.get("BENCH_SERVER_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    database_name = f"wibot_bench_passthrough_{os.getpid()}"
    database_url = await recreate_database(server, database_name)
    ids = await seed(database_url, heavy_conversations=10, password_hash="!")  # noqa: S106 (nobody logs in)
    run_dir = Path(args.out).resolve().parent / "passthrough-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    knowledge_base_on()
    base, processes, _ = start_stack(database_url, run_dir, await pool_max_with_room(database_url))
    (litellm_port,) = free_ports(1)
    litellm = start_litellm(executable, os.environ["MISTRAL_SERVER_URL"], litellm_port, run_dir / "litellm.log")
    results: list[Result] = []
    try:
        wait_for_port(litellm_port, timeout=120)
        chunks = await knowledge_ready(database_url)
        token = issue_token(user_id=ids["user1"], username="user1", role="user", secret=SECRET, ttl_seconds=3600)
        ours = Scenario("WIBOT chat (nginx, knowledge base on)", "/webhook/wibot/chat", "POST", token=token, chat=True)
        question = {"role": "user", "content": "Bonjour"}
        body = json.dumps({"model": "mistral/mistral-small-latest", "messages": [question]})
        theirs = Scenario(
            f"LiteLLM {LITELLM_VERSION} proxy passthrough", "/chat/completions", "POST", body=body, token=MASTER_KEY
        )
        for concurrency in CONCURRENCY:
            for scenario, url in ((ours, base), (theirs, f"http://127.0.0.1:{litellm_port}")):
                await run_wrk(url, scenario, concurrency, 1)  # warm-up
                result = await run_wrk(url, scenario, concurrency, args.seconds)
                print(f"{result.scenario:45} c={concurrency:<3} {result.rps:8.1f} req/s", flush=True)
                results.append(result)
        rss = peak_rss_mb({"chat": processes["chat"].pid, "litellm": litellm.pid})
    finally:
        litellm.terminate()
        try:
            litellm.wait(timeout=15)
        except subprocess.TimeoutExpired:
            litellm.kill()
        stop_stack(processes)
        await drop_database(server, database_name)
    by_key = {(r.scenario, r.concurrency): r for r in results}
    ratios = {
        f"c={c}": round(by_key[(ours.name, c)].rps / by_key[(theirs.name, c)].rps, 2)
        for c in CONCURRENCY
        if by_key[(theirs.name, c)].rps
    }
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
        "command": f"python -m bench.passthrough --seconds {args.seconds}",
        "kb_chunks": chunks,
        "results": [r.__dict__ for r in results],
        "chat_rps_over_litellm": ratios,
        "peak_rss_mb": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--venv", default=str(ROOT / ".run" / "bench-litellm"), help="LiteLLM's throwaway environment")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "passthrough.json")
    args = parser.parse_args()
    report = asyncio.run(measure(args))
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["chat_rps_over_litellm"]), "peak RSS (MB):", report["peak_rss_mb"])


if __name__ == "__main__":
    main()
