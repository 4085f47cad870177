"""Handing accepted HTTP connections from the main process to stream workers.

With streams.workers > 0 the main process still owns the one HTTP port. Its front reads
a connection's request line; a WebSocket stream door's path (Twilio, FreeSWITCH,
chan_websocket) sends the socket itself, with the bytes already read, to a worker over a
Unix socket (SCM_RIGHTS); the worker's aiohttp serves it as if it had accepted it.
Everything else (webhooks, /metrics, the console, the calls API) is served here by the
same aiohttp app as without workers. Why not SO_REUSEPORT: the kernel would spread
/metrics and the API over processes that do not all have them.

The request line is the only thing read before the handoff; the HTTP parsing, upgrade
and every limit stay aiohttp's, in whichever process serves the connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Collection

from aiohttp import web

log = logging.getLogger(__name__)

__all__ = ["MAX_REQUEST_LINE", "Front", "adopt", "request_path"]

MAX_REQUEST_LINE = 8192  # longer: aiohttp here answers it (414/400)
# A handoff message carries what was read with the fd; a read is at most 256 KiB.
MAX_HANDOFF_BYTES = 1 << 18

# Hands (socket, bytes read so far) to a worker; False: no worker took it.
HandOff = Callable[[socket.socket, bytes], bool]


def request_path(line: bytes) -> tuple[str, str] | None:
    """(method, path without query) of an HTTP/1.x request line; None if it is not one."""
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    try:
        method = parts[0].decode("ascii")
        path = parts[1].split(b"?", 1)[0].decode("ascii")
    except UnicodeDecodeError:
        return None
    return method, path


class _Sniff(asyncio.Protocol):
    """A new connection's protocol until its request line is in."""

    def __init__(self, front: Front) -> None:
        self._front = front
        self._transport: asyncio.Transport | None = None
        self._buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        end = self._buf.find(b"\r\n")
        if end < 0 and len(self._buf) < MAX_REQUEST_LINE:
            return
        transport = self._transport
        assert transport is not None
        line = self._buf[:end] if end >= 0 else b""
        try:
            self._front.route(transport, self._buf, line)
        except Exception:  # our bug: this connection fails, the listener goes on
            log.exception("handing a connection on failed")
            transport.abort()

    def eof_received(self) -> bool:
        return False  # closed before a request line: nothing to serve

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


class Front:
    """The main process's listener: stream paths to a worker, the rest to aiohttp."""

    def __init__(self, runner: web.AppRunner, paths: Collection[str], hand_off: HandOff) -> None:
        self._runner = runner
        self._paths = frozenset(paths)
        self._hand_off = hand_off
        self._server: asyncio.Server | None = None
        self.handed_off = 0

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Sniff(self), host, port,
                                                reuse_address=True)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    def route(self, transport: asyncio.Transport, buf: bytes, line: bytes) -> None:
        request = request_path(line)
        if (request is not None and request[0] == "GET" and request[1] in self._paths
                and len(buf) <= MAX_HANDOFF_BYTES):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                transport.pause_reading()
                # A dup: the worker gets its own descriptor; ours closes with the transport.
                dup = sock.dup()
                try:
                    taken = self._hand_off(dup, buf)
                finally:
                    dup.close()
                if taken:
                    self.handed_off += 1
                    transport.abort()  # our descriptor only: the connection lives on
                    return
                transport.resume_reading()
        self._serve_here(transport, buf)

    def _serve_here(self, transport: asyncio.Transport, buf: bytes) -> None:
        server = self._runner.server
        if server is None:  # shutting down
            transport.abort()
            return
        handler = server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(buf)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


class _Prefixed(asyncio.Protocol):
    """Gives a handed-off connection to aiohttp with the bytes the front already read."""

    def __init__(self, inner: asyncio.Protocol, initial: bytes) -> None:
        self._inner = inner
        self._initial = initial

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Runs before the transport's first read: the early bytes stay first.
        transport.set_protocol(self._inner)
        self._inner.connection_made(transport)
        if self._initial:
            self._inner.data_received(self._initial)


async def adopt(runner: web.AppRunner, sock: socket.socket, initial: bytes) -> None:
    """Serve a connection another process accepted, on this process's aiohttp app."""
    server = runner.server
    if server is None:
        sock.close()
        return
    loop = asyncio.get_running_loop()
    await loop.connect_accepted_socket(lambda: _Prefixed(server(), initial), sock)
