"""A TCP proxy on loopback in front of a real dependency (slapd, PostgreSQL, a model server), whose behaviour a test
switches while the services keep their connections through it: the faults a network and a sick server make.

- `pass`: bytes go through.
- `hang`: connections are accepted, what arrives is read and dropped, nothing is answered; connections already
  open hang too (a frozen server, a firewall that dropped its state).
- `refuse`: nothing listens on the port (connection refused); connections already open are reset.
- `reset`: connections are accepted, and reset (RST) as soon as their first bytes arrive: a bind, a startup
  message or a request cut mid-way; connections already open are reset at their next bytes.
- `slow`: every chunk, either way, waits `delay_s` before it is forwarded.
- `cut_after`: responses are cut (RST) once this many bytes went back to the client (mid-stream), then `pass`.
- `serve`: new connections are answered by `handler(reader, writer)` instead of the dependency: what a server
  says when it refuses (PostgreSQL's "too many clients", written as the server writes it).

It runs its own event loop in a thread, so that a test on any loop (or none) drives it, and so that it keeps
answering while a test blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Literal

from devtools.stack import free_ports

Mode = Literal["pass", "hang", "refuse", "reset", "slow", "serve"]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
CHUNK = 65536


class FaultProxy:
    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        (self.port,) = free_ports(1)
        self.mode: Mode = "pass"
        self.delay_s = 0.0
        self.cut_after: int | None = None
        self.handler: Handler | None = None
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        self._call(self._close(reset_open=True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def set(self, mode: Mode, *, delay_s: float = 0.0, handler: Handler | None = None) -> None:
        """Switch the fault; `refuse` closes the port, any other mode opens it again."""
        self.mode, self.delay_s, self.handler = mode, delay_s, handler
        if mode == "refuse":
            self._call(self._close(reset_open=True))
        elif self._server is None:
            self._call(self._listen())

    @contextlib.contextmanager
    def fault(self, mode: Mode, *, delay_s: float = 0.0) -> Iterator[None]:
        self.set(mode, delay_s=delay_s)
        try:
            yield
        finally:
            self.set("pass")

    def reset_all(self) -> None:
        """Every open connection reset now (a dependency restarted, a load balancer failed over)."""
        self._call(self._reset_open())

    def open_connections(self) -> int:
        return len(self._writers)

    def _call(self, coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port, reuse_address=True)

    async def _close(self, *, reset_open: bool) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if reset_open:
            await self._reset_open()

    async def _reset_open(self) -> None:
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            if self.mode == "reset":
                await reader.read(CHUNK)
                _reset(writer)
                return
            if self.mode == "hang":
                while await reader.read(CHUNK):
                    pass
                return
            if self.mode == "serve" and self.handler is not None:
                await self.handler(reader, writer)
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(upstream_writer)
            await asyncio.gather(
                self._pipe(reader, upstream_writer, client=writer, to_client=False),
                self._pipe(upstream_reader, writer, client=writer, to_client=True),
            )
        except (ConnectionError, OSError):
            pass
        finally:
            for each in (writer, upstream_writer):
                if each is not None:
                    self._writers.discard(each)
                    each.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, client: asyncio.StreamWriter,
        to_client: bool,
    ) -> None:  # fmt: skip
        sent = 0
        while data := await reader.read(CHUNK):
            if self.mode == "hang":
                continue  # read and dropped: the other side waits for ever
            if self.mode == "reset":
                _reset(client)
                _reset(writer)
                return
            if self.mode == "slow":
                await asyncio.sleep(self.delay_s)
            if to_client and self.cut_after is not None and sent + len(data) > self.cut_after:
                writer.write(data[: max(0, self.cut_after - sent)])
                await writer.drain()
                self.cut_after = None
                _reset(writer)
                return
            sent += len(data)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST, not a FIN: SO_LINGER on, with a zero timeout."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
