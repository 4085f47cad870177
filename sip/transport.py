"""SIP over UDP and TCP (RFC 3261 18, RFC 3581): listeners, framing, response routing.

Inbound, every datagram or framed TCP message is parsed; a malformed request gets the
parser's 4xx/5xx straight back (or is dropped when no answer can be routed), a request's
top Via is stamped with received/rport, and the message goes up to `on_message` with
its `Source`. Nothing here raises into the event loop.

Outbound, `send()` is fire-and-forget: UDP to an IP address goes out at once; a host
name is resolved and a TCP connection opened in a task, and a failure is reported to
the caller's `on_error` (the client transaction turns it into a clean failure).
Responses follow RFC 3261 18.2.2: over TCP back on the connection the request came on
while it is open, else to received/sent-by; over UDP to received and rport.
TCP connections nobody uses for `tcp_idle_timeout` seconds are closed; a dialog pins
its connection with hold()/release() so that our BYE can still reach the caller.
An optional FloodGuard (sip.flood) drops messages from flooding sources before parsing.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import socket
import ssl

from media.clock import Clock
from pipeline.metrics import Metrics
from sip.flood import FloodGuard
from sip.framing import KEEPALIVE_PING, KEEPALIVE_PONG, StreamFramer
from sip.grammar import SipParseError
from sip.headers import Via
from sip.message import (
    DEFAULT_LIMITS,
    Limits,
    SipRequest,
    error_response,
    parse_message,
)
from sip.routing import (
    DEFAULT_PORT,
    Addr,
    ErrorHandler,
    MessageHandler,
    Source,
    Target,
    TransportError,
    is_ip,
    response_target,
    stamp_via,
)

__all__ = [
    "DEFAULT_PORT",
    "ErrorHandler",
    "SipTransport",
    "Source",
    "Target",
    "TransportError",
    "response_target",
    "stamp_via",
]

log = logging.getLogger(__name__)

_PICK_ATTEMPTS = 20  # port 0: tries at a number free for both UDP and TCP


def _addr(raw: tuple) -> Addr:  # type: ignore[type-arg]
    return (str(raw[0]), int(raw[1]))


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.owner._on_udp(data, _addr(addr))

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP UDP socket error (ICMP from a far end?): %s", exc)


class _Tcp(asyncio.Protocol):
    """One TCP (or TLS) connection, accepted or opened by us."""

    def __init__(self, owner: SipTransport, kind: str = "tcp") -> None:
        self.owner = owner
        self.kind = kind  # "tcp" | "tls": asyncio does the TLS underneath
        self.id = next(owner._ids)
        self.framer = StreamFramer(owner.limits)
        self.transport: asyncio.Transport | None = None
        self.remote: Addr = ("", 0)
        self.local: Addr = ("", 0)
        self.last_used = owner.clock.now()
        self.holds = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.remote = _addr(transport.get_extra_info("peername"))
        self.local = _addr(transport.get_extra_info("sockname"))
        self.owner._tcp_opened(self)

    def data_received(self, data: bytes) -> None:
        self.last_used = self.owner.clock.now()
        guard = self.owner.guard
        if guard is not None and guard.is_blocked(self.remote[0]):
            self.close()  # a flooding source gets nothing, not even a parse error
            return
        try:
            frames = self.framer.feed(data)
        except SipParseError as err:
            # The stream is out of sync: answer if we can, then drop the connection.
            self.owner._parse_failed(err, self.source)
            self.close()
            return
        for frame in frames:
            if frame == KEEPALIVE_PING:
                self.write(KEEPALIVE_PONG)
            else:
                self.owner.deliver(frame, self.source)

    @property
    def source(self) -> Source:
        return Source(self.kind, self.remote, self.local, self.id)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.last_used = self.owner.clock.now()
            self.transport.write(data)

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._tcp_closed(self)


class SipTransport:
    """UDP and TCP listeners on one address and port, and the sending side."""

    def __init__(
        self,
        on_message: MessageHandler,
        *,
        clock: Clock,
        metrics: Metrics,
        advertised_address: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
        tcp_idle_timeout: float = 120.0,
        max_tcp_connections: int = 2048,
        guard: FloodGuard | None = None,
        max_tcp_per_source: int = 64,
    ) -> None:
        self.on_message = on_message
        self.guard = guard  # per-source flood limits: a blocked source is dropped silently
        self.clock = clock
        self.metrics = metrics
        self.advertised_address = advertised_address
        self.limits = limits
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_connections = max_tcp_connections
        self.max_tcp_per_source = max_tcp_per_source  # one address cannot take them all
        self._per_source: dict[str, int] = {}
        self.listen: Addr = ("0.0.0.0", 0)
        self.transports: tuple[str, ...] = ()
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self.tls_port = 0
        self._ids = itertools.count(1)
        self._conns: dict[int, _Tcp] = {}
        self._by_remote: dict[Addr, int] = {}
        self._connecting: dict[Addr, asyncio.Task[_Tcp]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._route_cache: dict[str, str] = {}
        self._sweeper: asyncio.Task[None] | None = None

    # -- life cycle ----------------------------------------------------------------------

    async def start(
        self, host: str, port: int, transports: tuple[str, ...] = ("udp", "tcp"), *,
        tls_port: int = 5061, tls_context: ssl.SSLContext | None = None,
    ) -> None:
        """Bind the listeners. Port 0 picks a free UDP port, and TCP takes the same one
        (another if TCP has that number in use). TLS (inbound only: we answer on the
        connection, never open one) listens on `tls_port` with `tls_context`."""
        loop = asyncio.get_running_loop()
        if "tls" in transports and tls_context is None:
            raise ValueError("SIP over TLS needs a certificate and key (tls_context)")
        picks = _PICK_ATTEMPTS if port == 0 else 1
        for pick in range(1, picks + 1):
            try:
                bound = await self._bind_udp_tcp(loop, host, port, transports)
                break
            except OSError as exc:
                # A free UDP number can be a TCP port in use: any outgoing connection
                # takes one from the same ephemeral range. Pick again.
                if exc.errno != errno.EADDRINUSE or pick == picks:
                    raise
                log.debug("SIP: UDP port free but TCP's in use (%s); picking another", exc)
        port = bound
        if "tls" in transports:
            self._tls_server = await loop.create_server(
                lambda: _Tcp(self, "tls"), host, tls_port, ssl=tls_context, reuse_address=True,
                ssl_handshake_timeout=10.0,
            )
            self.tls_port = _addr(self._tls_server.sockets[0].getsockname())[1]
        self.listen = (host, port)
        self.transports = tuple(transports)
        self._sweeper = loop.create_task(self._sweep_idle(), name="sip-tcp-idle")
        log.info("SIP listening on %s:%d (%s)%s", host, port, "+".join(transports).upper(),
                 f", TLS on {self.tls_port}" if self._tls_server is not None else "")

    async def _bind_udp_tcp(self, loop: asyncio.AbstractEventLoop, host: str, port: int,
                            transports: tuple[str, ...]) -> int:
        """The UDP and TCP listeners on one port number, or neither: on failure the UDP
        one is closed again."""
        if "udp" in transports:
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(host, port)
            )
            self._udp = udp  # type: ignore[assignment]
            port = _addr(udp.get_extra_info("sockname"))[1]
        if "tcp" in transports:
            try:
                self._server = await loop.create_server(
                    lambda: _Tcp(self), host, port, reuse_address=True
                )
            except OSError:
                if self._udp is not None:
                    self._udp.close()
                    self._udp = None
                raise
            port = _addr(self._server.sockets[0].getsockname())[1]
        return port

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for task in list(self._tasks) + list(self._connecting.values()):
            task.cancel()
        for server in (self._server, self._tls_server):
            if server is not None:
                server.close()
        for conn in list(self._conns.values()):
            conn.close()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for server in (self._server, self._tls_server):
            if server is not None:
                await server.wait_closed()
        self._server = self._tls_server = None

    @property
    def port(self) -> int:
        return self.listen[1]

    # -- addresses -------------------------------------------------------------------------

    def local_host(self, remote_host: str) -> str:
        """Our address as seen from `remote_host`: advertised, bound, or the route's source."""
        if self.advertised_address:
            return self.advertised_address
        bound = self.listen[0]
        if bound not in ("0.0.0.0", "::", ""):
            return bound
        cached = self._route_cache.get(remote_host)
        if cached is not None:
            return cached
        local = "127.0.0.1"
        if is_ip(remote_host):
            family = socket.AF_INET6 if ":" in remote_host else socket.AF_INET
            # connect() on UDP only looks up the route: no packet, no blocking.
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                try:
                    probe.connect((remote_host, 9))
                    local = probe.getsockname()[0]
                except OSError:
                    pass  # no route: the far end cannot reach us either; keep loopback
        if len(self._route_cache) > 4096:
            self._route_cache.clear()
        self._route_cache[remote_host] = local
        return local

    def via_for(self, target: Target, branch: str) -> Via:
        """The Via of a request we send to `target` (rport asked for, RFC 3581)."""
        host = self.local_host(target.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        params = Via("UDP", host).params.with_param("branch", branch).with_param("rport")
        port = self.tls_port if target.transport == "tls" else self.port
        return Via(target.transport.upper(), host, port, params)

    # -- TCP pinning -------------------------------------------------------------------------

    def hold(self, connection: int | None) -> None:
        conn = self._conns.get(connection) if connection is not None else None
        if conn is not None:
            conn.holds += 1

    def release(self, connection: int | None) -> None:
        conn = self._conns.get(connection) if connection is not None else None
        if conn is not None and conn.holds > 0:
            conn.holds -= 1
            conn.last_used = self.clock.now()

    def connection_open(self, connection: int | None) -> bool:
        conn = self._conns.get(connection) if connection is not None else None
        return conn is not None and conn.open

    @property
    def tcp_connections(self) -> int:
        return len(self._conns)

    # -- sending ---------------------------------------------------------------------------

    def send(self, data: bytes, target: Target, on_error: ErrorHandler | None = None) -> None:
        """Send one message; never raises (failures go to `on_error`, or the log)."""
        if target.transport == "udp":
            if self._udp is not None and is_ip(target.host):
                self._udp.sendto(data, (target.host, target.port))
                return
            if self._udp is None:
                self._fail(on_error, TransportError("SIP over UDP is not enabled"))
                return
        elif target.transport == "tcp":
            conn = self._open_conn(target)
            if conn is not None:
                conn.write(data)
                return
        elif target.transport == "tls":
            conn = self._open_conn(target)
            if conn is not None and conn.kind == "tls":
                conn.write(data)
            else:
                self._fail(on_error, TransportError(
                    f"no TLS connection open to {target.host}:{target.port}"))
            return
        else:
            self._fail(on_error, TransportError(f"transport {target.transport!r} not supported"))
            return
        self._spawn(self._send_slow(data, target, on_error))

    def _open_conn(self, target: Target) -> _Tcp | None:
        if target.connection is not None:
            conn = self._conns.get(target.connection)
            if conn is not None and conn.open:
                return conn
        ident = self._by_remote.get((target.host, target.port))
        conn = self._conns.get(ident) if ident is not None else None
        return conn if conn is not None and conn.open else None

    async def _send_slow(self, data: bytes, target: Target, on_error: ErrorHandler | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            host = target.host
            if not is_ip(host):
                infos = await loop.getaddrinfo(host, target.port, type=socket.SOCK_DGRAM)
                if not infos:
                    raise TransportError(f"cannot resolve {host!r}")
                host = str(infos[0][4][0])
            if target.transport == "udp":
                if self._udp is None:
                    raise TransportError("SIP over UDP is not enabled")
                self._udp.sendto(data, (host, target.port))
                return
            conn = await self._connect((host, target.port))
            conn.write(data)
        except asyncio.CancelledError:
            raise
        except (OSError, TransportError) as exc:
            self._fail(on_error, exc if isinstance(exc, TransportError) else
                       TransportError(f"{target.transport} to {target.host}:{target.port}: {exc}"))

    async def _connect(self, remote: Addr) -> _Tcp:
        ident = self._by_remote.get(remote)
        if ident is not None and ident in self._conns and self._conns[ident].open:
            return self._conns[ident]
        task = self._connecting.get(remote)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open_tcp(remote))
            self._connecting[remote] = task
            task.add_done_callback(lambda _t: self._connecting.pop(remote, None))
        return await asyncio.shield(task)

    async def _open_tcp(self, remote: Addr) -> _Tcp:
        if len(self._conns) >= self.max_tcp_connections:
            raise TransportError(f"already {len(self._conns)} TCP connections open")
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: _Tcp(self), remote[0], remote[1]), timeout=10.0
        )
        return proto

    def _fail(self, on_error: ErrorHandler | None, exc: Exception) -> None:
        if on_error is not None:
            on_error(exc)
        else:
            log.warning("SIP send failed: %s", exc)

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- receiving -------------------------------------------------------------------------

    def _on_udp(self, data: bytes, remote: Addr) -> None:
        if not data.strip(b"\r\n\x00 "):
            return  # keepalive (CRLF, or a NAT pinhole's empty/zero datagram)
        local = (self.local_host(remote[0]), self.port)
        self.deliver(data, Source("udp", remote, local))

    def deliver(self, data: bytes, source: Source) -> None:
        """One message's bytes from a socket (or a test): parse, stamp, hand up."""
        if self.guard is not None and not self.guard.admit(source.remote[0], data):
            return  # flooding, or blocked for it: no answer, counted by the guard
        try:
            message = parse_message(data, self.limits)
            if isinstance(message, SipRequest):
                message = stamp_via(message, source.remote)
        except SipParseError as err:
            self._parse_failed(err, source)
            return
        try:
            self.on_message(message, source)
        except Exception:
            # A bug above us costs this message, never the listener.
            log.exception("SIP message handler raised for a message from %s:%d", *source.remote)

    def _parse_failed(self, err: SipParseError, source: Source) -> None:
        self.metrics.sip_parse_errors_total.labels(source.transport).inc()
        if self.guard is not None and not self.guard.malformed(source.remote[0]):
            return  # one malformed message too many: the source is blocked, unanswered
        response = error_response(err)
        log.info("malformed SIP from %s %s:%d: %s%s", source.transport.upper(), *source.remote,
                 err, "" if response else " (dropped)")
        if response is None:
            return
        self.metrics.sip_responses_sent_total.labels(f"{response.status // 100}xx").inc()
        # Straight back to the source: the Via of a broken request is not to be trusted.
        target = Target(source.transport, source.remote[0], source.remote[1], source.connection)
        self.send(bytes(response), target)

    def _tcp_opened(self, conn: _Tcp) -> None:
        ip = conn.remote[0]
        if self.guard is not None and self.guard.is_blocked(ip):
            conn.close()  # blocked for flooding: silently
            return
        if len(self._conns) >= self.max_tcp_connections:
            log.warning("SIP TCP connection from %s:%d refused: %d open",
                        *conn.remote, len(self._conns))
            conn.close()
            return
        if self._per_source.get(ip, 0) >= self.max_tcp_per_source:
            log.debug("SIP TCP connection from %s:%d refused: %d open from there",
                      *conn.remote, self.max_tcp_per_source)
            self.metrics.sip_flood_dropped_total.labels("other", "connections").inc()
            conn.close()
            return
        self._per_source[ip] = self._per_source.get(ip, 0) + 1
        self._conns[conn.id] = conn
        self._by_remote[conn.remote] = conn.id

    def _tcp_closed(self, conn: _Tcp) -> None:
        if self._conns.pop(conn.id, None) is None:
            return  # refused in _tcp_opened: never counted
        ip = conn.remote[0]
        left = self._per_source.get(ip, 1) - 1
        if left > 0:
            self._per_source[ip] = left
        else:
            self._per_source.pop(ip, None)
        if self._by_remote.get(conn.remote) == conn.id:
            del self._by_remote[conn.remote]

    async def _sweep_idle(self) -> None:
        period = max(1.0, self.tcp_idle_timeout / 4)
        while True:
            await self.clock.sleep_until(self.clock.now() + period)
            self.close_idle()

    def close_idle(self) -> int:
        """Close TCP connections idle past the timeout and not held by a dialog."""
        now = self.clock.now()
        idle = [c for c in self._conns.values()
                if not c.holds and now - c.last_used >= self.tcp_idle_timeout]
        for conn in idle:
            log.debug("closing idle SIP TCP connection to %s:%d", *conn.remote)
            conn.close()
        return len(idle)
