"""The benchmark's ceiling: bare aiohttp handlers behind the same nginx.

    GET /bench/ceiling   SELECT 1 on an asyncpg pool: what any route that touches the database can hope for
    GET /bench/jwt       JWT decode only (no database)
    GET /bench/session   JWT decode + the session/revocation query on every request (before migration 0012)
    GET /bench/session-cached   JWT decode + the process's session copy (shared.sessions): what services do
    GET /bench/sse?chunks=N&delay_ms=D   N SSE events, one every D ms: the streaming ceiling
/bench/jwt and the two session routes give the cost of the token-revocation check, with and without the copy.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

from shared import AppKeys, Settings, decode_token, load_settings_or_exit
from shared.auth import bearer_token, load_session_user
from shared.db import pool_context
from shared.serve import new_event_loop
from shared.sessions import SessionCache, sessions_context


async def ceiling(request: web.Request) -> web.Response:
    value = await request.app[AppKeys.DB].fetchval("SELECT 1")
    return web.json_response({"success": True, "value": value})


async def jwt_only(request: web.Request) -> web.Response:
    claims = decode_token(bearer_token(request), request.app[AppKeys.SETTINGS].jwt_secret.get_secret_value())
    return web.json_response({"success": True, "user_id": claims["user_id"]})


NEVER_LOADED = SessionCache()  # a copy that is never ready: every lookup asks the database


async def session(request: web.Request) -> web.Response:
    return await _session(request, NEVER_LOADED)


async def session_cached(request: web.Request) -> web.Response:
    return await _session(request, request.app[AppKeys.SESSIONS])


async def _session(request: web.Request, sessions: SessionCache) -> web.Response:
    token = bearer_token(request)
    claims = decode_token(token, request.app[AppKeys.SETTINGS].jwt_secret.get_secret_value())
    user = await load_session_user(request.app[AppKeys.DB], sessions, claims, token)
    return web.json_response({"success": True, "user_id": user.user_id})


async def sse(request: web.Request) -> web.StreamResponse:
    chunks, delay = int(request.query.get("chunks", "20")), float(request.query.get("delay_ms", "0")) / 1000
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    for number in range(chunks):
        if number and delay:
            await asyncio.sleep(delay)
        await response.write(b'event: delta\ndata: {"content": "12345678"}\n\n')
    await response.write(b"event: done\ndata: {}\n\n")
    await response.write_eof()
    return response


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[AppKeys.SETTINGS] = settings
    app.cleanup_ctx.append(pool_context(settings, application_name="wibot-bench-ceiling"))
    app.cleanup_ctx.append(sessions_context(settings, service="bench-ceiling"))
    app.router.add_get("/bench/ceiling", ceiling)
    app.router.add_get("/bench/jwt", jwt_only)
    app.router.add_get("/bench/session", session)
    app.router.add_get("/bench/session-cached", session_cached)
    app.router.add_get("/bench/sse", sse)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = load_settings_or_exit()
    # The services' loop (EVENT_LOOP), so that ratios to the ceiling compare like with like.
    loop = new_event_loop(settings)
    web.run_app(create_app(settings), host="127.0.0.1", port=args.port, access_log=None, print=None, loop=loop)
