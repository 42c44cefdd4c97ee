"""`python -m shared.probe`: the container's health check. It asks the service running as the container's first
process on the port that service listens on (its `--port`, else PORT, else 8001), so one image's check is right for
auth, chat and conversations alike (a fixed 8001 made every service look as healthy as auth is)."""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

DEFAULT_PORT = 8001


def listening_port(cmdline: list[str], env: dict[str, str]) -> int:
    """The port a `python -m services.<name>` command line listens on."""
    for i, arg in enumerate(cmdline):
        if arg == "--port" and i + 1 < len(cmdline):
            return int(cmdline[i + 1])
        if arg.startswith("--port="):
            return int(arg.partition("=")[2])
    return int(env.get("PORT") or DEFAULT_PORT)


def main() -> int:
    cmdline = Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0")
    port = listening_port(cmdline, dict(os.environ))
    path = sys.argv[1] if len(sys.argv) > 1 else "/healthz"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: 127.0.0.1:{port}{path}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
