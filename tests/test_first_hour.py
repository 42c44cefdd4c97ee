"""README's "Your first hour", executed: its commands, taken from the README itself, run as written in a fresh clone
of this checkout, against `make run` started by its own first block, on this machine kind — whose PostgreSQL has no
pgvector, so `make run` starts its private cluster on 5433 and the CLIs must find it (#44: they used to connect to
5432 and fail). A command that fails fails the test.

Assumes the default ports are free (5678, 8001-8003, 8098, 8099, 5433): a developer's `make run` must be stopped.
The clone shares this checkout's virtualenv (installing one would take minutes and the network).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.stack import port_open

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README[README.index("## Your first hour") : README.index("## Layout")]
BLOCKS = [textwrap.dedent(block) for block in re.findall(r"^ *```bash\n(.*?)^ *```", SECTION, flags=re.S | re.M)]
PORTS = (5678, 8001, 8002, 8003, 8098, 8099, 5433)
PASSWORD_TYPED = "alice-pw-2026-first-hour\n"  # what the operator types when a command asks for a password
pytestmark = pytest.mark.timeout(600)


def test_the_first_hour_is_a_list_of_commands_starting_with_make_run():
    assert BLOCKS[0].strip().startswith("make run") and len(BLOCKS) >= 4, BLOCKS


def fresh_clone(dest: Path) -> None:
    """This checkout as a clean clone would have it, uncommitted changes included."""
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(dest)], check=True, timeout=120)
    diff = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=ROOT, capture_output=True, check=True).stdout
    if diff:
        subprocess.run(["git", "apply", "--whitespace=nowarn"], cwd=dest, input=diff, check=True)
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, untracked):
        target = dest / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name.decode(), target)
    (dest / ".venv").symlink_to(ROOT / ".venv")
    os.utime(dest / "pyproject.toml", (0, 0))  # older than the shared venv's .installed: make installs nothing


@pytest.fixture
def clone() -> Iterator[Path]:
    for port in PORTS:
        assert not port_open("127.0.0.1", port), f"port {port} is taken: stop `make run` (or what holds it)"
    base = Path(tempfile.mkdtemp(prefix="wibot-first-hour-"))
    base.chmod(0o755)  # the private cluster runs as the postgres user, who must reach its data folder
    dest = base / "wibot"
    fresh_clone(dest)
    try:
        yield dest
    finally:
        shutil.rmtree(base, ignore_errors=True)


def environment() -> dict[str, str]:
    """A newcomer's shell: none of the suite's variables (no DATABASE_URL: make run decides)."""
    keep = ("PATH", "HOME", "LANG", "TERM", "USER", "LOGNAME", "TMPDIR")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env["PATH"] = f"{env.get('PATH', '/usr/bin:/bin')}:/usr/sbin:/sbin"
    return env


def test_every_command_of_the_first_hour_runs_against_make_run(clone):
    log_path = clone / "make-run.log"
    env = environment()
    with log_path.open("w") as log:
        stack = subprocess.Popen(
            ["bash", "-c", BLOCKS[0]], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while "WIBOT is ready." not in log_path.read_text(errors="replace"):
            assert stack.poll() is None, f"make run exited: {log_path.read_text(errors='replace')[-4000:]}"
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-4000:]
            time.sleep(0.5)
        log = log_path.read_text(errors="replace")
        assert "no pgvector: starting a private cluster" in log  # this machine kind: the case the CLIs missed
        outputs = []
        for block in BLOCKS[1:]:
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block], cwd=clone, env=env, input=PASSWORD_TYPED,
                capture_output=True, text=True, timeout=180,
            )  # fmt: skip
            assert done.returncode == 0, (block, done.stdout[-2000:], done.stderr[-2000:])
            outputs.append(done.stdout)
        chat, people, knowledge, watch = outputs[:4]
        reply = json.loads(chat.strip().splitlines()[-1])
        assert reply["success"] is True and reply["response"].startswith("[fake-mistral]"), reply
        assert "alice" in people and "khora" in people  # the demo user: make run's database, not another
        assert "pgvector" in watch  # /readyz: the private cluster's vector path
        assert "chunks" in knowledge.lower() or "documents" in knowledge.lower(), knowledge
    finally:
        os.killpg(stack.pid, signal.SIGINT)  # Ctrl-C
        try:
            stack.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            raise
    time.sleep(0.5)
    still_open = [port for port in PORTS if port_open("127.0.0.1", port)]
    assert not still_open, f"ports still open after Ctrl-C: {still_open}"
