"""The model client's cost (issue #32, bench/RESULTS.md): the mistralai SDK kept for its request and response models,
errors, retries and streaming API, given the transport and hooks that cost least.

- **Transport**: the SDK speaks httpx2 (its fork of httpx); its default transport (httpcore2 over anyio) costs
  more per call than the request itself on loopback. `AiohttpTransport` sends the SDK's requests through the
  aiohttp client the services already run (one connector per process), and turns aiohttp's failures into the
  httpx2 errors the SDK retries and llm.py maps. (httpx-aiohttp does this for httpx, not for the httpx2 fork.)
- **Hooks**: the SDK runs its request hooks in a thread (`run_sync_in_thread`, twice per call) because two of
  them may block: the service-account hook reads a token file when MISTRAL_SA_TOKEN_PATH is set, and the tracing
  hook exports spans when OpenTelemetry is configured. When neither is, they are plain computations: run inline.

Both are checked against one SDK version (sdk_models.CHECKED_VERSION) and tested (tests/test_model_transport.py).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import aiohttp
import httpx2
from multidict import CIMultiDict

T = TypeVar("T")


class AiohttpTransport(httpx2.AsyncBaseTransport):
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        headers = CIMultiDict((key.decode("latin-1"), value.decode("latin-1")) for key, value in request.headers.raw)
        try:
            response = await self._session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=await request.aread() or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=timeouts.get("connect"), sock_read=timeouts.get("read")
                ),
            )
        except Exception as exc:
            raise transport_error(exc, request) from exc
        return httpx2.Response(
            status_code=response.status,
            headers=[(key.decode("latin-1"), value.decode("latin-1")) for key, value in response.raw_headers],
            stream=ResponseStream(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )


class ResponseStream(httpx2.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx2.Request) -> None:
        self._response, self._request = response, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._response.content.iter_any():
                yield piece
        except Exception as exc:
            raise transport_error(exc, self._request) from exc

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # read to its end: the connection goes back to the pool
        else:
            self._response.close()  # a reply left midway (the client left): the connection is dropped with it


def transport_error(exc: Exception, request: httpx2.Request) -> Exception:
    """aiohttp's failures as the httpx2 errors the SDK retries (connect errors, timeouts) and llm.py maps."""
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return httpx2.ReadTimeout(str(exc) or "timeout", request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx2.ConnectError(str(exc), request=request)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return httpx2.ReadError(str(exc) or type(exc).__name__, request=request)
    return exc


def model_http_client(session: aiohttp.ClientSession) -> httpx2.AsyncClient:
    """The SDK's HTTP client: redirects followed as before, every request sent by `session`."""
    return httpx2.AsyncClient(transport=AiohttpTransport(session), follow_redirects=True)


def model_session() -> aiohttp.ClientSession:
    # No decompression here: httpx2 decodes the body by its Content-Encoding, as it would have.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200), auto_decompress=False)


def hooks_may_block() -> bool:
    """True when one of the SDK's hooks may do I/O: a service-account token file to read, or OpenTelemetry set
    up to export spans (by environment, or a tracer provider installed in this process)."""
    if os.getenv("MISTRAL_SA_TOKEN_PATH"):
        return True
    if any(name.startswith("OTEL_") for name in os.environ):
        return True
    from opentelemetry import trace

    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


async def run_inline(func: Callable[..., T], *args: Any) -> T:
    return func(*args)


def run_hooks_inline() -> bool:
    """The SDK's hooks run on the event loop when none of them may block (checked once, at client construction);
    True when they do."""
    from mistralai.client import basesdk
    from mistralai.client.utils import run_sync_in_thread  # the SDK's own, put back when a hook may block

    if hooks_may_block():
        basesdk.run_sync_in_thread = run_sync_in_thread  # type: ignore[attr-defined]
        return False
    basesdk.run_sync_in_thread = run_inline  # type: ignore[attr-defined]
    return True
