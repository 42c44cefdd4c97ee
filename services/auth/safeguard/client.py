"""The Safeguard server's HTTP API, as this gateway calls it (SAFEGUARD_URL, SAFEGUARD_HEADER, a timeout)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from shared import Settings
from shared.logs import get_logger

log = get_logger("wibot.safeguard")

# Upstream answers larger than this are not a list of approvals: refused rather than held in memory.
MAX_UPSTREAM_BYTES = 4 * 1024 * 1024


class SafeguardUnavailable(Exception):
    """Not configured, unreachable, too slow, or answering something that is not the Safeguard API."""


class SafeguardClient:
    def __init__(self, session: aiohttp.ClientSession | None, base_url: str | None) -> None:
        self._session = session
        self._base_url = (base_url or "").rstrip("/")

    async def pending(self) -> list[dict[str, Any]]:
        return _request_list(await self._call("GET", "/api/safeguard/pending"))

    async def history(self, limit: int) -> list[dict[str, Any]]:
        return _request_list(await self._call("GET", "/api/safeguard/history", params={"limit": str(limit)}))

    async def get(self, approval_id: str) -> dict[str, Any] | None:
        """The request, or None when the server does not know it."""
        status, body = await self._call_with_status("GET", f"/api/safeguard/{approval_id}")
        if status == 404:
            return None
        if status != 200 or not isinstance(body.get("approval_id"), str):
            raise SafeguardUnavailable(f"detail answered {status}")
        return body

    async def decide(self, approval_id: str, action: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return await self._call_with_status("POST", f"/api/safeguard/{approval_id}/{action}", json=payload)

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        status, body = await self._call_with_status(method, path, **kwargs)
        if status != 200:
            raise SafeguardUnavailable(f"{path} answered {status}")
        return body

    async def _call_with_status(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        if self._session is None:
            raise SafeguardUnavailable("SAFEGUARD_URL is not set")
        try:
            async with self._session.request(method, self._base_url + path, **kwargs) as response:
                return response.status, _json_object(await read_whole(response, path))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SafeguardUnavailable(f"{path}: {type(exc).__name__}") from None


async def read_whole(response: aiohttp.ClientResponse, path: str) -> bytes:
    """The whole body, however many writes it arrives in (`content.read(n)` returns only what has arrived),
    refused past MAX_UPSTREAM_BYTES without holding more than that."""
    if (response.content_length or 0) > MAX_UPSTREAM_BYTES:
        raise SafeguardUnavailable(f"{path}: answer larger than {MAX_UPSTREAM_BYTES} bytes")
    body = bytearray()
    async for piece in response.content.iter_chunked(64 * 1024):
        body += piece
        if len(body) > MAX_UPSTREAM_BYTES:
            raise SafeguardUnavailable(f"{path}: answer larger than {MAX_UPSTREAM_BYTES} bytes")
    return bytes(body)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw) if raw else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _request_list(body: dict[str, Any]) -> list[dict[str, Any]]:
    requests = body.get("requests")
    if not isinstance(requests, list):
        raise SafeguardUnavailable("answer without a `requests` list")
    return [item for item in requests if isinstance(item, dict)]


SAFEGUARD = web.AppKey("safeguard", SafeguardClient)


@contextlib.asynccontextmanager
async def safeguard_client(settings: Settings) -> AsyncIterator[SafeguardClient]:
    """The client for the service's lifetime (its HTTP session closed at the end); without SAFEGUARD_URL, a
    client that answers "unavailable" to everything."""
    if not settings.safeguard_url:
        log.warning("safeguard_not_configured", hint="set SAFEGUARD_URL; the Safeguard page shows nothing")
        yield SafeguardClient(None, None)
        return
    timeout = aiohttp.ClientTimeout(total=settings.safeguard_timeout_s)
    async with aiohttp.ClientSession(headers=settings.safeguard_header, timeout=timeout) as session:
        yield SafeguardClient(session, settings.safeguard_url)
