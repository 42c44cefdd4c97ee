"""A fake Safeguard server: the HTTP API the Safeguard page's gateway calls, with requests held in memory.

    GET  /api/safeguard/pending            {"requests": [...]}        (pending ones)
    GET  /api/safeguard/history?limit=N    {"requests": [...]}        (decided ones, newest first)
    GET  /api/safeguard/{id}               the request, or 404
    POST /api/safeguard/{id}/approve       {"success", "status", "message"}; 409 when not pending
    POST /api/safeguard/{id}/reject        idem

One implementation for the tests (they seed it and read what it received) and for `make run` when
SAFEGUARD_URL is unset (a development stand-in, seeded with demo requests: its answers say so).
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

DEMO_NOTE = "[fake-safeguard] demande de démonstration, aucune action réelle"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def held_request(
    *, tool_name: str, security_level: str, expires_in_s: float, status: str = "pending", **extra: Any
) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "approval_id": extra.pop("approval_id", uuid.uuid4().hex[:16]),
        "tool_name": tool_name,
        "arguments": extra.pop("arguments", {}),
        "security_level": security_level,
        "status": status,
        "created_at": iso(now - timedelta(minutes=2)),
        "expires_at": iso(now + timedelta(seconds=expires_in_s)),
        **extra,
    }


def demo_requests() -> list[dict[str, Any]]:
    context = {"client_name": "EHPAD de démonstration", "description": DEMO_NOTE}
    return [
        held_request(
            tool_name="ad_unlock_account",
            security_level="L1",
            expires_in_s=3600,
            arguments={"user": "j.dupont"},
            context=context,
        ),
        held_request(
            tool_name="ad_reset_password",
            security_level="L2",
            expires_in_s=1800,
            arguments={"user": "m.martin"},
            context=context,
        ),
        held_request(
            tool_name="ad_disable_account",
            security_level="L3",
            expires_in_s=900,
            arguments={"user": "ancien.compte"},
            context=context,
        ),
    ]


@dataclass
class FakeSafeguard:
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)  # what the gateway sent, in order
    required_header: tuple[str, str] | None = None  # (name, value) the gateway must send
    unauthorized: int = 0  # calls refused for a missing or wrong header
    # Requests someone else decides between the gateway's check and its call: the decision answers 409.
    decided_elsewhere: set[str] = field(default_factory=set)
    # Above 0: each answer is sent in two writes this far apart, as a real server's answer may arrive.
    split_answer_s: float = 0.0

    def add(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests[request["approval_id"]] = request
        return request


async def in_two_writes(request: web.Request, response: web.Response, pause_s: float) -> web.StreamResponse:
    body = bytes(response.body)  # type: ignore[arg-type]
    # Chunked, without Content-Length: the gateway cannot know the size before it has read it all.
    split = web.StreamResponse(status=response.status, headers={"Content-Type": response.content_type})
    await split.prepare(request)
    await split.write(body[: len(body) // 2])
    await asyncio.sleep(pause_s)
    await split.write(body[len(body) // 2 :])
    await split.write_eof()
    return split


def create_app(state: FakeSafeguard) -> web.Application:
    @web.middleware
    async def check_header(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if state.required_header is not None:
            name, value = state.required_header
            if request.headers.get(name) != value:
                state.unauthorized += 1
                return web.json_response({"error": "unauthorized"}, status=401)
        response = await handler(request)
        if state.split_answer_s <= 0 or not isinstance(response, web.Response) or response.body is None:
            return response
        return await in_two_writes(request, response, state.split_answer_s)

    async def pending(_request: web.Request) -> web.Response:
        return web.json_response({"requests": [r for r in state.requests.values() if r["status"] == "pending"]})

    async def history(request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "50"))
        decided = [r for r in state.requests.values() if r["status"] != "pending"]
        return web.json_response({"requests": decided[::-1][:limit]})

    async def detail(request: web.Request) -> web.Response:
        found = state.requests.get(request.match_info["approval_id"])
        if found is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(found)

    async def decide(request: web.Request) -> web.Response:
        approval_id, action = request.match_info["approval_id"], request.match_info["action"]
        found = state.requests.get(approval_id)
        if found is None:
            return web.json_response({"error": "not found"}, status=404)
        body = await request.json()
        state.decisions.append({"approval_id": approval_id, "action": action, **body})
        if approval_id in state.decided_elsewhere:
            found["status"] = "approved"
        if found["status"] != "pending":
            return web.json_response({"success": False, "message": f"already {found['status']}"}, status=409)
        found["status"] = "approved" if action == "approve" else "rejected"
        found["approver"] = body.get("approver")
        found["approval_comment"] = body.get("comment")
        state.requests[approval_id] = state.requests.pop(approval_id)  # last decided, first in the history
        return web.json_response({"success": True, "status": found["status"], "message": f"{action}d"})

    app = web.Application(middlewares=[check_header])
    app.router.add_get("/api/safeguard/pending", pending)
    app.router.add_get("/api/safeguard/history", history)
    app.router.add_get("/api/safeguard/{approval_id}", detail)
    app.router.add_post("/api/safeguard/{approval_id}/{action:approve|reject}", decide)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.fake_safeguard", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8098)
    args = parser.parse_args()
    print(
        f"!!! FAKE SAFEGUARD on http://{args.host}:{args.port} - development stand-in with demo requests, NOT a"
        " real Safeguard server: approvals here act on nothing. Set SAFEGUARD_URL to use yours.",
        flush=True,
    )
    state = FakeSafeguard()
    for request in demo_requests():
        state.add(request)
    web.run_app(create_app(state), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
