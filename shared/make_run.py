"""The operators' CLIs (`users`, `kb`, `data`) work on what `make run` runs: its database, its model server and its
knowledge base folder.

`make run` (devtools/stack.py) records them in `.run/make-run.json` (mode 0600: a database URL may hold a
password) as it hands over to its supervisor. While that supervisor runs, the CLIs use them: the private cluster
with pgvector it starts on 5433 when the machine's PostgreSQL has none, its fake model server, the demo corpus it
indexes when KB_ROOT is unset. What the operator sets in the CLI's own environment (DATABASE_URL or POSTGRES_*,
MISTRAL_SERVER_URL or MISTRAL_API_KEY, KB_ROOT) wins.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from shared.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RECORD = "make-run.json"
SUPERVISOR = b"devtools.supervisor"


def record_path() -> Path:
    """STACK_RUN_DIR, as devtools/stack.py reads it (the routed tests run their own stack beside a developer's)."""
    return Path(os.environ.get("STACK_RUN_DIR") or PROJECT_ROOT / ".run") / RECORD


def write_record(path: Path, *, pid: int, environment: dict[str, str]) -> None:
    record = {"pid": pid, "database_url": environment["DATABASE_URL"]}
    record |= {name.lower(): environment[name] for name in ("MISTRAL_SERVER_URL", "KB_ROOT") if environment.get(name)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(record, out)


def running_stack(path: Path | None = None) -> dict[str, Any] | None:
    """What `make run` uses, while it runs (its supervisor's pid is alive and is that supervisor); else None."""
    try:
        record = json.loads((path or record_path()).read_text(encoding="utf-8"))
        with open(f"/proc/{int(record['pid'])}/cmdline", "rb") as cmdline:
            alive = SUPERVISOR in cmdline.read()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if alive and isinstance(record.get("database_url"), str) else None


def of_make_run(settings: Settings) -> Settings:
    """The settings a CLI works with: the running `make run`'s database and model server, unless the operator's
    environment names others."""
    stack = running_stack()
    if stack is None:
        return settings
    update: dict[str, Any] = {}
    if not any(name == "DATABASE_URL" or name.startswith("POSTGRES_") for name in os.environ):
        update["database_url"] = stack["database_url"]
    if stack.get("mistral_server_url") and not {"MISTRAL_SERVER_URL", "MISTRAL_API_KEY"} & set(os.environ):
        update["mistral_server_url"] = stack["mistral_server_url"]
    if stack.get("kb_root") and "KB_ROOT" not in os.environ:
        update["kb_root"] = Path(stack["kb_root"])
    return settings.model_copy(update=update)
