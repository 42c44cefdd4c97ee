"""How a service runs as a process: its event loop, the server options production and tests share, the launcher."""

from __future__ import annotations

import asyncio
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
    log.info("service_starting", service=service, host=args.host, port=args.port, event_loop=event_loop)
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
