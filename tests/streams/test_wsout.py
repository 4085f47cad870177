"""WsOutbox: direct frame writes (at once, from inside the tick) when the socket
keeps up, the writer task otherwise, one order either way; the frame builder against
RFC 6455 and aiohttp's own reader."""

from __future__ import annotations

import asyncio
import struct

import aiohttp
import pytest
from aiohttp import web

from streams.wsout import OP_BINARY, OP_TEXT, DoorWebSocket, WsOutbox, ws_frame
from tests.streams.conftest import until


@pytest.mark.parametrize("size", [0, 1, 125, 126, 300, 65535, 65536, 70000])
def test_ws_frame_header(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    frame = ws_frame(payload, OP_BINARY)
    assert frame[0] == 0x82  # FIN, binary
    assert frame[1] & 0x80 == 0  # a server never masks
    if size < 126:
        assert frame[1] == size and frame[2:] == payload
    elif size < 65536:
        assert frame[1] == 126 and struct.unpack("!H", frame[2:4])[0] == size
        assert frame[4:] == payload
    else:
        assert frame[1] == 127 and struct.unpack("!Q", frame[2:10])[0] == size
        assert frame[10:] == payload
    assert ws_frame(b"hi")[:2] == b"\x81\x02"  # text is the default


class FakeTransport:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.buffered = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.frames.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered


class FakeWs:
    """What WsOutbox uses of a WebSocketResponse; its sends land in the same list as the
    transport's direct writes, framed alike, so the order can be checked."""

    def __init__(self, transport: FakeTransport, compress: int = 0) -> None:
        self.transport = transport
        self.compress = compress
        self.closed = False
        self.stalled: asyncio.Event | None = None
        self.close_code: int | None = None

    async def send_str(self, data: str) -> None:
        if self.stalled is not None:
            await self.stalled.wait()
        if self.transport.closing:  # as aiohttp's writer does
            raise ConnectionResetError("Cannot write to closing transport")
        self.transport.frames.append(ws_frame(data.encode(), OP_TEXT))

    async def send_bytes(self, data: bytes) -> None:
        self.transport.frames.append(ws_frame(data, OP_BINARY))

    async def close(self, code: int, message: bytes) -> None:
        self.closed = True
        self.close_code = code


def texts(t: FakeTransport) -> list[str]:
    out = []
    for f in t.frames:
        assert f[0] in (0x81, 0x82)
        body = f[2:] if f[1] < 126 else f[4:]
        out.append(body.decode() if f[0] == 0x81 else repr(body))
    return out


async def test_direct_when_idle_and_in_order() -> None:
    t = FakeTransport()
    failures: list[str] = []
    out = WsOutbox(FakeWs(t), failures.append, transport=t)  # type: ignore[arg-type]
    out.audio("a1")
    out.audio(b"\x01\x02")
    assert texts(t) == ["a1", repr(b"\x01\x02")]  # at once: no task, no waiting
    assert out.direct == 2 and out.backlog == 0
    out.control("clear")  # control goes through the task ...
    out.audio("a2")  # ... and audio after it waits its turn
    assert out.backlog == 2
    await until(lambda: out.backlog == 0)
    assert texts(t)[2:] == ["clear", "a2"]
    out.audio("a3")
    out.control("c2")  # after a direct frame: still after it on the wire
    await until(lambda: out.backlog == 0)
    assert texts(t)[-2:] == ["a3", "c2"] and out.direct == 3
    await out.close("remote_stop")
    assert failures == []


async def test_barge_in_drops_queued_audio_and_a_closed_peer_fails_the_stream() -> None:
    t = FakeTransport()
    failures: list[str] = []
    ws = FakeWs(t)
    ws.stalled = asyncio.Event()
    out = WsOutbox(ws, failures.append, transport=t)  # type: ignore[arg-type]
    out.audio("sent")  # on the wire at once: a barge-in now is the far end's to clear
    out.control("clear")  # the task takes it and stalls in send_str ...
    out.audio("queued")  # ... so this waits behind it
    await asyncio.sleep(0)
    out.drop_audio()  # barge-in: the queued audio never goes out
    out.control("clear")
    ws.stalled.set()
    await until(lambda: out.backlog == 0)
    assert texts(t) == ["sent", "clear", "clear"]
    t.closing = True  # the peer vanished
    out.audio("gone")
    await until(lambda: bool(failures))
    assert failures == ["disconnect"] and texts(t) == ["sent", "clear", "clear"]
    out2 = WsOutbox(FakeWs(t2 := FakeTransport()), [].append, transport=t2)  # type: ignore[arg-type]
    t2.buffered = 1 << 20  # backed up: audio waits in the queue
    out2.audio("unsent")
    await out2.close("remote_stop")  # closing drops audio not yet written
    assert t2.frames == []


async def test_backed_up_transport_queues_then_resumes() -> None:
    t = FakeTransport()
    ws = FakeWs(t)
    ws.stalled = asyncio.Event()
    out = WsOutbox(ws, [].append, transport=t,  # type: ignore[arg-type]
                   write_buffer_limit=1000)
    t.buffered = 5000  # the peer reads slowly
    for i in range(5):
        out.audio(f"m{i}")
    assert t.frames == [] and out.backlog == 5
    t.buffered = 0  # drained, but the task still holds m0: no overtaking it
    await asyncio.sleep(0.01)
    out.audio("m5")
    assert t.frames == [] and out.direct == 0
    ws.stalled.set()
    await until(lambda: out.backlog == 0 and len(t.frames) == 6)
    await asyncio.sleep(0.01)  # the task finishes its round
    out.audio("m6")
    await asyncio.sleep(0)
    assert texts(t) == [f"m{i}" for i in range(7)]
    assert out.direct == 1
    await out.close("remote_stop")


async def test_slow_consumer_still_fails_the_stream() -> None:
    t = FakeTransport()
    ws = FakeWs(t)
    ws.stalled = asyncio.Event()
    failures: list[str] = []
    out = WsOutbox(ws, failures.append, transport=t,  # type: ignore[arg-type]
                   max_backlog=10, write_buffer_limit=100)
    t.buffered = 101
    for i in range(20):
        out.audio(f"m{i}")
    assert failures == ["slow_consumer"]
    out.audio("late")  # closing: dropped
    assert out.backlog <= 10
    ws.stalled.set()
    await out.close("slow_consumer")
    assert ws.closed and "late" not in texts(t)


async def test_compression_or_no_transport_use_the_task() -> None:
    for ws, transport in ((FakeWs(FakeTransport(), compress=15), True), (None, False)):
        t = FakeTransport()
        ws = ws or FakeWs(t)
        t = ws.transport
        out = WsOutbox(ws, [].append,  # type: ignore[arg-type]
                       transport=t if transport else None)
        out.audio("x")
        assert t.frames == []  # queued, not framed by us
        await until(lambda t=t: len(t.frames) == 1)  # type: ignore[misc]
        assert out.direct == 0
        await out.close("remote_stop")


async def test_closed_socket_is_left_to_the_task() -> None:
    t = FakeTransport()
    t.closing = True
    out = WsOutbox(FakeWs(t), [].append, transport=t)  # type: ignore[arg-type]
    out.audio("x")
    assert out.direct == 0 and out.backlog == 1
    await out.close("disconnect")


async def test_real_socket_round_trip() -> None:
    """A DoorWebSocket keeps its transport; aiohttp's client reads our frames (text,
    binary, both header sizes) in the order written, mixed with the task's."""
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = DoorWebSocket(compress=False)
        await ws.prepare(request)
        ws.door_transport = request.transport  # type: ignore[assignment]
        out = WsOutbox(ws, [].append)
        out.audio("short")
        out.audio("x" * 300)
        out.audio(b"\x00" * 200)
        out.control("ctl")
        out.audio("after")
        assert out.direct == 3
        await until(lambda: out.backlog == 0)
        await asyncio.sleep(0.01)
        out.audio("last")
        assert out.direct == 4
        await done.wait()
        await out.close("remote_stop")
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(f"http://127.0.0.1:{port}/ws", compress=15) as ws:
            got: list[object] = []
            async with asyncio.timeout(10):
                while len(got) < 6:
                    msg = await ws.receive()
                    got.append(msg.data)
            done.set()
            assert got == ["short", "x" * 300, b"\x00" * 200, "ctl", "after", "last"]
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE
    finally:
        await runner.cleanup()
