"""The lean Twilio Media Streams client of `python -m loadtest.twilio_echo_bench`.

Here it shares the cores with the server it measures (in production Twilio's side runs
elsewhere), so it costs little: a bare asyncio.Protocol per stream (loadtest.ws_frames
frames and parses; no task or message object per frame), media messages built from
precomputed pieces, and the sockets read in one sweep per 2 ms sender tick (BatchReader)
with the kernel's receive times (SO_TIMESTAMPNS), not the event loop waking per message.
run_streams() opens a set of streams, sends media at real time and returns what each got.
"""

from __future__ import annotations

import asyncio
import base64
import json
import select
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from loadtest import ws_frames

FRAME = 0.020
PHASES = 10  # sender wake-ups per 20 ms; streams are spread over them
PATH = "/twilio/stream"
SID = "MZ{:032x}"
CALL = "CA{:032x}"
MEDIA = b'{"event":"media"'
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0


@dataclass
class Stream:
    """What one stream got: the receive times of the echoed media messages."""
    index: int
    arrivals: list[float] = field(default_factory=list)
    sent: int = 0
    failed: str | None = None


class StreamProtocol(asyncio.Protocol):
    """One Twilio stream on a bare asyncio transport: the upgrade, masked text frames out,
    and a frame parser (`feed`, from data_received or from the BatchReader) that only
    notes when a media message arrives (and answers ping and close). No task per stream,
    no message objects: this client shares the machine with the server it measures, so
    it must cost little."""

    def __init__(self, stream: Stream, host: str, path: str) -> None:
        loop = asyncio.get_running_loop()
        self.stream = stream
        self.stopped = False
        self.transport: asyncio.Transport | None = None
        self.sock: socket.socket | None = None  # the transport's, when _open made it
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self._time = time.time  # the clock of the kernel's receive timestamps
        self._host, self._path = host, path
        self._key = ws_frames.new_key()
        self._upgraded = False
        self._buf = b""
        self._head: bytes | None = None  # the start of a fragmented text message
        self._close_code: int | None = None
        self._close_sent = False

    @property
    def live(self) -> bool:
        return (self.transport is not None and not self.transport.is_closing()
                and self.stream.failed is None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(ws_frames.handshake_request(self._host, self._path, self._key))

    def send_text(self, payload: bytes) -> None:
        """Straight to the socket while the transport has nothing queued (the transport
        would do the same, with more steps); what the socket does not take, and all
        while something is queued, through the transport, in order."""
        frame = ws_frames.client_frame(ws_frames.TEXT, payload)
        transport = self.transport
        assert transport is not None
        if self.sock is not None and not transport.get_write_buffer_size():
            try:
                sent = self.sock.send(frame)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fail(f"send: {exc}")
                return
            if sent == len(frame):
                return
            frame = frame[sent:]
        transport.write(frame)

    def close(self, code: int = 1000) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if not self._close_sent:
            self._close_sent = True
            self.transport.write(ws_frames.client_frame(ws_frames.CLOSE, struct.pack("!H", code)))

    def data_received(self, data: bytes) -> None:
        self.feed(data, None)

    def feed(self, data: bytes, now: float | None) -> None:
        """Bytes from the server, received at `now` (time.time(); None: just now)."""
        if self._buf:
            data = self._buf + data
            self._buf = b""
        pos = 0
        if not self._upgraded:
            try:
                n = ws_frames.check_handshake(data, self._key)
            except ws_frames.HandshakeError as exc:
                self._fail(f"connect: {exc}")
                return
            if n is None:
                self._buf = data
                return
            self._upgraded = True
            self.opened.set_result(None)
            pos = n
        parse = ws_frames.parse_frame
        while True:
            try:
                frame = parse(data, pos)
            except ValueError as exc:
                self._fail(f"receive: {exc}")
                return
            if frame is None:
                break
            fin, opcode, start, pos, key = frame
            if opcode == ws_frames.TEXT or (opcode == 0 and self._head is not None):
                head = data[start : min(pos, start + len(MEDIA))]
                if key is not None:
                    head = ws_frames.unmask(key, head)
                if opcode == 0:
                    assert self._head is not None
                    head = (self._head + head)[: len(MEDIA)]
                if fin:
                    self._head = None
                    if head == MEDIA:
                        if now is None:
                            now = self._time()
                        self.stream.arrivals.append(now)
                else:
                    self._head = head
            elif opcode & 0x8:
                payload = data[start:pos]
                if key is not None:
                    payload = ws_frames.unmask(key, payload)
                self._control(opcode, payload)
        if pos < len(data):
            self._buf = data[pos:]

    def _control(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        if opcode == ws_frames.PING:
            if not self.transport.is_closing():
                self.transport.write(ws_frames.client_frame(ws_frames.PONG, payload))
        elif opcode == ws_frames.CLOSE:
            self._close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self.close(self._close_code if self._close_code != 1005 else 1000)
            self.transport.close()

    def _fail(self, why: str) -> None:
        if self.stream.failed is None:
            self.stream.failed = why
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stopped and self.stream.failed is None:
            self.stream.failed = (f"closed by the server ({self._close_code})" if exc is None
                                  else f"receive: {exc}")
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(self.stream.failed or "closed"))
        if not self.lost.done():
            self.lost.set_result(None)


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not name it
_TIMESPEC = struct.Struct("@qq")
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


class BatchReader:
    """Reads every open stream's socket in one sweep per sender tick (2 ms) instead of
    the event loop waking for each arriving message: on this box those wake-ups were
    most of the client's CPU. Each read carries the kernel's receive time
    (SO_TIMESTAMPNS), so the arrival times lose nothing by waiting for the sweep (bytes
    of two messages that arrive in one sweep get the later one's time). A socket at its
    end or in error goes back to the event loop, which sees it and closes."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._open: dict[int, tuple[StreamProtocol, socket.socket]] = {}

    def add(self, proto: StreamProtocol, sock: socket.socket) -> None:
        assert proto.transport is not None
        if proto.transport.is_closing():
            return
        proto.transport.pause_reading()
        self._epoll.register(sock.fileno(), select.EPOLLIN)
        self._open[sock.fileno()] = (proto, sock)

    def sweep(self) -> None:
        for fd, _ in self._epoll.poll(0):
            proto, sock = self._open[fd]
            try:
                data, ancillary, _, _ = sock.recvmsg(1 << 16, _CMSG_SPACE)
            except BlockingIOError:
                continue
            except OSError as exc:
                if not proto.stopped and proto.stream.failed is None:
                    proto.stream.failed = f"receive: {exc}"
                self._release(fd)
                continue
            if not data:
                self._release(fd)
                continue
            now = None
            for level, kind, raw in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, ns = _TIMESPEC.unpack(raw)
                    now = sec + ns * 1e-9
            proto.feed(data, now)
            assert proto.transport is not None
            if proto.transport.is_closing():
                self._release(fd)

    def _release(self, fd: int) -> None:
        proto, _ = self._open.pop(fd)
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # the transport closed the socket already (a failed send), epoll forgot it
        if proto.transport is not None and not proto.transport.is_closing():
            proto.transport.resume_reading()

    def close(self) -> None:
        """Every socket back to the event loop."""
        for fd in list(self._open):
            self._release(fd)
        self._epoll.close()


async def _open(host: str, port: int, path: str, stream: Stream,
                reader: BatchReader | None = None) -> StreamProtocol | None:
    """Connect, upgrade and start one stream; then, with a `reader`, hand its socket to it."""
    loop = asyncio.get_running_loop()
    proto: StreamProtocol | None = None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), CONNECT_TIMEOUT)
        _, proto = await loop.create_connection(
            lambda: StreamProtocol(stream, f"{host}:{port}", path), sock=sock)
        proto.sock = sock
        await asyncio.wait_for(asyncio.shield(proto.opened), CONNECT_TIMEOUT)
        sid, call = SID.format(stream.index), CALL.format(stream.index)
        proto.send_text(b'{"event":"connected","protocol":"Call","version":"1.0.0"}')
        proto.send_text(json.dumps({
            "event": "start", "sequenceNumber": "1", "streamSid": sid,
            "start": {"accountSid": "AC" + "0" * 32, "streamSid": sid, "callSid": call,
                      "tracks": ["inbound"], "customParameters": {"bench": "1"},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                      "channels": 1}},
        }).encode())
        if reader is not None:
            reader.add(proto, sock)
        return proto
    except (TimeoutError, OSError) as exc:
        if stream.failed is None:
            stream.failed = f"connect: {exc or type(exc).__name__}"
        if proto is not None and proto.transport is not None:
            proto.transport.abort()
        else:
            sock.close()
        return None


async def run_streams(indices: list[int], seconds: float, host: str, port: int,
                       frames: list[bytes], stagger: float,
                       start_at: Callable[[], Awaitable[float]]) -> list[Stream]:
    """Open the streams `indices` (one every `stagger` seconds), wait for `start_at` (a
    loop.time(), i.e. time.monotonic(), shared by every client process), send media at
    real time for `seconds` (stream i in phase i % PHASES of the 20 ms), then stop."""
    streams = [Stream(i) for i in indices]
    protos: list[StreamProtocol | None] = []
    reader = BatchReader()
    try:
        for s in streams:  # calls arrive over a few seconds, not all in one instant
            protos.append(await _open(host, port, PATH, s, reader))
            await asyncio.sleep(stagger)
            reader.sweep()
        await _send_media(protos, seconds, frames, reader, start_at)
    finally:
        reader.close()
    live = [p for p in protos if p is not None]
    for p in live:
        if p.live:
            p.stopped = True
            p.send_text(json.dumps({"event": "stop", "sequenceNumber": "0",
                                    "streamSid": SID.format(p.stream.index),
                                    "stop": {}}).encode())
            p.close()
    pending = [p.lost for p in live if not p.lost.done()]
    if pending:
        await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)
    for p in live:
        if p.transport is not None and not p.lost.done():
            p.transport.abort()
    await asyncio.sleep(0)  # let connection_lost run
    return streams


async def _send_media(protos: list[StreamProtocol | None], seconds: float,
                      frames: list[bytes], reader: BatchReader,
                      start_at: Callable[[], Awaitable[float]]) -> None:
    live = [p for p in protos if p is not None]
    # what can be made once: the tail naming each stream, the payload of each audio frame
    tails = {id(p): f'{SID.format(p.stream.index)}"}}'.encode() for p in live}
    payloads = [base64.b64encode(f).decode() for f in frames]
    groups = [[(p, tails[id(p)]) for p in live if p.stream.index % PHASES == ph]
              for ph in range(PHASES)]
    loop = asyncio.get_running_loop()
    tick = FRAME / PHASES
    starting = asyncio.ensure_future(start_at())
    while not starting.done():  # bounded by start_at's own time limit
        await asyncio.wait({starting}, timeout=tick)
        reader.sweep()
    start = starting.result()
    total = round(seconds / FRAME)
    for k in range(total):
        head = (f'{{"event":"media","sequenceNumber":"{k + 2}","media":{{"track":"inbound",'
                f'"chunk":"{k + 1}","timestamp":"{k * 20}","payload":'
                f'"{payloads[k % len(payloads)]}"}},"streamSid":"').encode()
        for ph, group in enumerate(groups):
            due = start + k * FRAME + ph * tick
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for p, tail in group:
                if p.live:
                    p.send_text(head + tail)
                    p.stream.sent += 1
            reader.sweep()
    for _ in range(round(0.5 / tick)):  # the echo's tail
        await asyncio.sleep(tick)
        reader.sweep()
