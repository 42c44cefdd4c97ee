"""`make run`'s process supervisor: every line of the stack's Procfile as a child process, each output line
prefixed with its name; a child that exits is started again after a backoff (1 s, doubling up to 30 s, back to
1 s once it has run a minute) with a loud line, while the others keep running; SIGINT (Ctrl-C) or SIGTERM stops
them all, with SIGTERM, then SIGKILL after STOP_TIMEOUT_S.

    python -m devtools.supervisor PROCFILE

The children get this process's environment as it is: no env file is read here (devtools.stack hands over the
values python-dotenv read from .env, the reading the services themselves make), so nothing is parsed twice.

Why not honcho (used before): it stops every process when one exits, and reads its env file with its own parser
(it stripped the quotes of JSON values and cut values at a '#'). supervisord restarts, but writes children's
output unprefixed to files or its own stdout, and takes its programs' environment from an INI file with quoting
of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0  # a program that ran this long starts again from the first backoff
STOP_TIMEOUT_S = 15.0


@dataclass
class Program:
    name: str
    command: list[str]
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    output: asyncio.Task[None] | None = field(default=None, repr=False)


def read_procfile(path: Path) -> list[Program]:
    programs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            programs.append(Program(name.strip(), shlex.split(command)))
    return programs


class Supervisor:
    def __init__(
        self, programs: list[Program], *, out: object = sys.stdout, first_backoff_s: float = FIRST_BACKOFF_S
    ) -> None:
        self.programs = programs
        self.out = out
        self.first_backoff_s = first_backoff_s
        self.width = max(len(p.name) for p in programs) if programs else 0
        self.stopping = asyncio.Event()

    def say(self, name: str, line: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        print(f"{stamp} {name:<{self.width}} | {line}", file=self.out, flush=True)  # type: ignore[call-overload]

    def event(self, event: str, level: str, **fields: object) -> None:
        """The supervisor's own lines are JSON, like the services' (grep-able, read by the tests)."""
        entry = {"event": event, "level": level, "service": "supervisor", **fields,
                 "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z")}  # fmt: skip
        self.say("supervisor", json.dumps(entry, ensure_ascii=False))

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stopping.set)
        watchers = [asyncio.ensure_future(self.keep_running(program)) for program in self.programs]
        try:
            await self.stopping.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        self.event("stack_stopping", "info")
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await asyncio.gather(*(self.stop(program) for program in self.programs))
        return 0

    async def keep_running(self, program: Program) -> None:
        backoff_s = self.first_backoff_s
        while not self.stopping.is_set():
            await self.start(program)
            assert program.process is not None
            code = await program.process.wait()
            if program.output is not None:
                await program.output  # its last lines first
            if self.stopping.is_set():
                return
            ran_s = time.monotonic() - program.started_at
            if ran_s >= STABLE_AFTER_S:
                backoff_s = self.first_backoff_s
            program.restarts += 1
            self.event(
                "service_restarting", "error", program=program.name, exit_code=code, ran_s=round(ran_s, 1),
                restarts=program.restarts, backoff_s=backoff_s,
            )  # fmt: skip
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)

    async def start(self, program: Program) -> None:
        program.process = await asyncio.create_subprocess_exec(
            *program.command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        program.started_at = time.monotonic()
        program.output = asyncio.ensure_future(self.relay(program, program.process.stdout))
        self.event("service_started", "info", program=program.name, pid=program.process.pid)

    async def relay(self, program: Program, stream: asyncio.StreamReader | None) -> None:
        assert stream is not None
        while line := await stream.readline():
            self.say(program.name, line.decode("utf-8", "replace").rstrip("\n"))

    async def stop(self, program: Program) -> None:
        process = program.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            self.event("service_killed", "warning", program=program.name, after_s=STOP_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        if program.output is not None:
            await program.output


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m devtools.supervisor PROCFILE", file=sys.stderr)
        return 2
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return asyncio.run(Supervisor(read_procfile(Path(argv[0]))).run())


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
