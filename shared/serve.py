"""How a service runs as a process: its event loop, the server options production and tests share, the launcher."""

from __future__ import annotations

import asyncio
import ctypes
import os
from collections.abc import Callable
from typing import Any

import uvloop
from aiohttp import web

from shared.logs import get_logger
from shared.settings import Settings

log = get_logger("wibot.http")


def new_event_loop(settings: Settings) -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if settings.event_loop == "uvloop" else asyncio.new_event_loop()


# How every service's server runs, in production as in the tests (pytest-aiohttp's TestServer always cancels):
# a client that leaves cancels its handler, so the model call, an extraction job or a retrieval it started stops
# instead of running to its end for nobody (aiohttp's own default is not to cancel). tests/test_server_process.py
# starts a real process and shows it.
SERVER_OPTIONS: dict[str, Any] = {"handler_cancellation": True}


# glibc's mallopt parameters: blocks up to this size come from the heap instead of a mapping of their own, and
# this much free memory at the heap's top is kept for the next request instead of returned to the system.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_BLOCKS_UP_TO = 32 * 1024 * 1024
HEAP_KEPT_FREE = 64 * 1024 * 1024
GLIBC_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def reuse_freed_memory() -> bool:
    """A request's large buffers (a chat's megabytes of attachments: the body, its JSON, the copy sent to a worker)
    reuse memory freed by the previous one. By default glibc maps each such block fresh and unmaps it when freed:
    ~4,000 page faults per 4 MB, a quarter of the chat process's CPU for such a body, on the event loop (bench
    /bodies.py). Costs up to HEAP_KEPT_FREE of memory kept after a peak. False where the C library is not glibc,
    or where the operator set glibc's own MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ (theirs win)."""
    if any(name in os.environ for name in GLIBC_TUNABLES):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO)) and bool(mallopt(M_TRIM_THRESHOLD, HEAP_KEPT_FREE))


def serve(
    create_app: Callable[[Settings], web.Application], *, service: str, default_port: int, epilog: str | None = None
) -> None:
    """`python -m services.<name> [--host H] [--port P]`: one service, alone, in the foreground."""
    import argparse
    import sys

    from shared.logs import configure_logging
    from shared.migrations import DatabaseBehind
    from shared.settings import load_settings_or_exit

    parser = argparse.ArgumentParser(
        prog=f"python -m services.{service}",
        description=f"WIBOT {service} service",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or default_port))
    args = parser.parse_args()
    settings = load_settings_or_exit()
    configure_logging(level=settings.log_level, fmt=settings.log_format, service=service)
    loop = new_event_loop(settings)
    event_loop = type(loop).__module__.partition(".")[0]  # "uvloop" or "asyncio": what runs, not what was asked
    reused = reuse_freed_memory()
    log.info(
        "service_starting", service=service, host=args.host, port=args.port, event_loop=event_loop,
        freed_memory_reused=reused,
    )  # fmt: skip
    try:
        web.run_app(
            create_app(settings),
            host=args.host,
            port=args.port,
            access_log=None,
            print=None,
            loop=loop,
            **SERVER_OPTIONS,
        )
    except DatabaseBehind as exc:
        log.error("database_behind", missing=exc.missing)
        print(f"{service}: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
