"""streams.wsdirect: a door's data messages straight from the parser, order and the
WebSocket's own handling (close, ping, limits) intact; the stock path where it cannot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from streams import wsdirect
from streams.wsout import DoorWebSocket


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


class Door:
    """Takes text messages starting with "d" directly; the rest reach receive()."""

    def __init__(self, *, compress: int = 0, max_msg_size: int = 1 << 16) -> None:
        self.direct: list[Any] = []
        self.queued: list[tuple[WSMsgType, Any]] = []
        self.ws: DoorWebSocket | None = None
        self.done = asyncio.Event()
        self._compress = compress
        self._max = max_msg_size

    def deliver(self, data: Any) -> bool:
        if isinstance(data, str) and data.startswith("boom"):
            raise RuntimeError("a bug in the door")
        if isinstance(data, str) and data.startswith("d"):
            self.direct.append(data)
            return True
        return False

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = self.ws = DoorWebSocket(compress=self._compress, max_msg_size=self._max)
        await ws.prepare(request)
        if ws.direct is not None:
            ws.direct.deliver = self.deliver
        async for msg in ws:
            self.queued.append((msg.type, msg.data))
        self.queued.append((WSMsgType.CLOSED, ws.close_code))
        self.done.set()
        return ws


@asynccontextmanager
async def served(door: Door) -> AsyncIterator[TestClient]:
    app = web.Application()
    app.router.add_get("/ws", door.handle)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def test_data_messages_skip_the_queue_in_order() -> None:
    door = Door()
    async with served(door) as client:
        ws = await client.ws_connect("/ws")
        for i in range(50):
            await ws.send_str(f"d{i}")
        await ws.send_str("queued")
        await ws.send_bytes(b"\x00\x01")
        await ws.send_str("d-after")  # direct, or queued if "queued" is not read yet
        await until(lambda: len(door.queued) + len(door.direct) == 53)
        await ws.close()
        await asyncio.wait_for(door.done.wait(), 5)
    assert door.ws is not None and door.ws.direct is not None  # the pinned aiohttp has it
    assert door.direct[:50] == [f"d{i}" for i in range(50)]
    assert door.queued[:2] == [(WSMsgType.TEXT, "queued"), (WSMsgType.BINARY, b"\x00\x01")]
    assert door.direct[50:] == ["d-after"] or door.queued[2] == (WSMsgType.TEXT, "d-after")
    assert door.queued[-1] == (WSMsgType.CLOSED, 1000)
    assert door.ws.direct.delivered == len(door.direct)


async def test_nothing_overtakes_a_queued_message() -> None:
    door = Door()
    gate = asyncio.Event()

    async def slow_handle(request: web.Request) -> web.WebSocketResponse:
        ws = door.ws = DoorWebSocket()
        await ws.prepare(request)
        assert ws.direct is not None
        ws.direct.deliver = door.deliver
        await gate.wait()  # the reader is not reading: "queued" waits in the queue
        async for msg in ws:
            door.queued.append((msg.type, msg.data))
            if msg.data == "queued":
                door.direct.append("<read queued>")
        door.done.set()
        return ws

    app = web.Application()
    app.router.add_get("/ws", slow_handle)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        ws = await client.ws_connect("/ws")
        await ws.send_str("d1")
        await ws.send_str("queued")
        await ws.send_str("d2")  # behind "queued": must not be delivered before it
        await until(lambda: door.ws is not None and len(door.ws._reader._buffer) == 2)
        assert door.direct == ["d1"]
        gate.set()
        await until(lambda: len(door.queued) == 2)
        await ws.close()
        await asyncio.wait_for(door.done.wait(), 5)
    # Once the queue has drained, direct delivery resumes: "d2" came through receive().
    assert door.direct == ["d1", "<read queued>"]
    assert [data for _, data in door.queued] == ["queued", "d2"]


async def test_ping_close_and_size_limit_stay_with_aiohttp() -> None:
    door = Door(max_msg_size=1024)
    async with served(door) as client:
        ws = await client.ws_connect("/ws", autoping=False)
        await ws.ping(b"are you there")
        reply = await ws.receive(timeout=5)
        assert (reply.type, reply.data) == (WSMsgType.PONG, b"are you there")
        await ws.send_str("d" + "x" * 2000)  # over the limit: refused, never delivered
        closing = await ws.receive(timeout=5)
        assert closing.type is WSMsgType.CLOSE and closing.data == 1009
        await asyncio.wait_for(door.done.wait(), 5)
    assert door.direct == []
    assert door.queued[0][0] is WSMsgType.ERROR


async def test_a_failing_door_leaves_the_message_queued(
        caplog: pytest.LogCaptureFixture) -> None:
    door = Door()
    async with served(door) as client:
        ws = await client.ws_connect("/ws")
        await ws.send_str("boom")
        await ws.send_str("d1")
        await until(lambda: len(door.queued) + len(door.direct) == 2)
        await ws.close()
        await asyncio.wait_for(door.done.wait(), 5)
    assert "direct WebSocket delivery failed" in caplog.text
    assert door.queued[0] == (WSMsgType.TEXT, "boom")  # the reader's to deal with
    assert door.direct == ["d1"] or door.queued[1] == (WSMsgType.TEXT, "d1")


async def test_compressed_websockets_keep_the_stock_reader(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wsdirect, "_warned", False)
    door = Door(compress=15)
    async with served(door) as client:
        ws = await client.ws_connect("/ws", compress=15)
        await ws.send_str("d1")
        await until(lambda: bool(door.queued))
        await ws.close()
        await asyncio.wait_for(door.done.wait(), 5)
    assert door.ws is not None and door.ws.direct is None
    assert door.queued[0] == (WSMsgType.TEXT, "d1")  # through receive(), as aiohttp has it
    assert "no direct message delivery" in caplog.text
