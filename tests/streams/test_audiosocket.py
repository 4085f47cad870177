"""The AudioSocket door against a real TCP server: an Asterisk-like client sends the UUID,
20 ms slin frames (8 and 16 kHz), DTMF and hang-up, and gets paced audio back from the
echo agent; malformed streams, the allow-list and the stream limit are refused cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest

from streams.audiosocket import (
    ERROR_BUSY,
    ERROR_FORBIDDEN,
    ERROR_PROTOCOL,
    ERROR_TIMEOUT,
    AudioSocketServer,
    AudioSocketSettings,
    start_server,
)
from streams.audiosocket_frames import (
    Frame,
    FrameReader,
    Kind,
    audio_frame,
    dtmf_frame,
    hangup_frame,
    uuid_frame,
)
from tests.streams.conftest import Harness, correlation, frames, until

CALL = uuid.UUID("0f2d6a4e-3b1c-4e8f-9a7d-5c6b4a3e2d1f")


class Asterisk:
    """The Asterisk side of one AudioSocket: sends frames, collects what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames: list[Frame] = []
        self.closed = False
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        framer = FrameReader(65535)
        while data := await self.reader.read(65536):
            self.frames.extend(framer.feed(data))
        self.closed = True

    async def send(self, *frames: Frame | bytes) -> None:
        for frame in frames:
            self.writer.write(bytes(frame))
        await self.writer.drain()

    def audio(self, kind: Kind = Kind.SLIN_8K) -> list[bytes]:
        return [f.payload for f in self.frames if f.kind is kind]

    def kinds(self) -> set[Kind]:
        return {f.kind for f in self.frames}


class Rig:
    def __init__(self, h: Harness, server: AudioSocketServer) -> None:
        self.h = h
        self.server = server
        self.peers: list[Asterisk] = []

    async def connect(self) -> Asterisk:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        peer = Asterisk(reader, writer)
        self.peers.append(peer)
        return peer

    async def audio(self, peer: Asterisk, pcm: bytes, rate: int = 8000) -> None:
        """One 20 ms frame; the tick runs once the server has it."""
        legs = list(self.h.ctx.legs)
        n = legs[0]._frames_in if legs else 0
        await peer.send(audio_frame(pcm, rate))
        if legs:
            await until(lambda: legs[0]._frames_in > n or legs[0].closed)
        await self.h.step()


@contextlib.asynccontextmanager
async def make_rig(h: Harness, networks: tuple[str, ...] = ("127.0.0.0/8",)) -> AsyncIterator[Rig]:
    server = await start_server(h.ctx, AudioSocketSettings(listen="127.0.0.1", port=0,
                                                           allowed_networks=networks))
    rig = Rig(h, server)
    try:
        yield rig
    finally:
        await h.ctx.shutdown(2.0)
        await server.stop()
        for peer in rig.peers:
            peer.writer.close()
            peer.task.cancel()


@pytest.fixture
async def rig(harness: Harness) -> AsyncIterator[Rig]:
    async with make_rig(harness) as r:
        yield r


@pytest.mark.parametrize(("rate", "kind"), [(8000, Kind.SLIN_8K), (16000, Kind.SLIN_16K)])
async def test_call_echoes_the_question(rig: Rig, speech: dict[int, np.ndarray], rate: int,
                                        kind: Kind) -> None:
    peer = await rig.connect()
    await peer.send(uuid_frame(CALL))
    await until(lambda: rig.h.ctx.legs)
    question = speech[rate]
    pcm = frames(np.concatenate([question, np.zeros(rate, "<i2")]), rate // 50)
    for i, frame in enumerate(pcm):
        await rig.audio(peer, frame, rate)
        if i == 20:
            await peer.send(dtmf_frame("7"))
    await peer.send(hangup_frame())
    await until(lambda: peer.closed)

    echo = rig.h.handlers[0]
    info = rig.h.infos[0]
    assert (info.call_id, info.transport, info.params["uuid"]) == (str(CALL), "audiosocket",
                                                                   str(CALL))
    assert echo.digits == ["7"] and echo.ended == "remote_hangup"  # type: ignore[attr-defined]
    # One frame per tick, always (silence before the echo), in the kind the peer sends.
    out = peer.audio(kind)
    assert len(out) >= len(pcm) - 2
    assert {len(f) for f in out} == {rate // 50 * 2}
    back = np.frombuffer(b"".join(out), dtype="<i2")
    lag, peak = correlation(question, back)
    assert peak > 0.8, peak
    assert 0.3 <= lag / rate <= 0.6
    assert Kind.HANGUP not in peer.kinds()  # the peer hung up: we do not say it back
    assert rig.h.value("switchboard_calls_total", transport="audiosocket",
                       outcome="remote_hangup") == 1


async def test_we_hang_up(rig: Rig) -> None:
    peer = await rig.connect()
    await peer.send(uuid_frame(CALL))
    await until(lambda: rig.h.ctx.legs)
    leg = next(iter(rig.h.ctx.legs))
    await rig.audio(peer, bytes(320))
    await leg.hangup("goodbye")
    await until(lambda: peer.closed)
    assert peer.frames[-1].kind is Kind.HANGUP


@pytest.mark.parametrize(
    ("data", "label", "code"),
    [
        (b"\x42\x00\x00", "unknown_kind", ERROR_PROTOCOL),  # bad kind
        (b"\x10\xff\xff", "too_large", ERROR_PROTOCOL),  # length past the limit
        (bytes(audio_frame(bytes(320))), "out_of_order", ERROR_PROTOCOL),  # no UUID first
        (b"\x01\x00\x04abcd", "malformed", ERROR_PROTOCOL),  # a 4-byte "UUID"
    ],
)
async def test_malformed_first_frames(harness: Harness, data: bytes, label: str,
                                      code: int) -> None:
    harness.ctx.max_message_bytes = 4096
    async with make_rig(harness) as rig:
        peer = await rig.connect()
        await peer.send(data)
        await until(lambda: peer.closed)
        assert peer.frames == [Frame(Kind.ERROR, bytes((code,)))]
        assert harness.value("switchboard_stream_messages_invalid_total",
                             transport="audiosocket", reason=label) == 1
        await _serves_next(rig)


@pytest.mark.parametrize(
    ("data", "label"),
    [
        (b"\x42\x00\x00", "unknown_kind"),
        (b"\x10\x40\x00", "too_large"),
        (b"\x10\x00\x03abc", "malformed"),  # half a sample
        (bytes(audio_frame(bytes(960), 48000)), "unsupported_rate"),
    ],
)
async def test_malformed_frames_mid_call(harness: Harness, data: bytes, label: str) -> None:
    harness.ctx.max_message_bytes = 4096
    async with make_rig(harness) as rig:
        peer = await rig.connect()
        await peer.send(uuid_frame(CALL))
        await until(lambda: harness.ctx.legs)
        await rig.audio(peer, bytes(320))
        await peer.send(data)
        await until(lambda: peer.closed)
        assert peer.frames[-1] == Frame(Kind.ERROR, bytes((ERROR_PROTOCOL,)))
        assert harness.value("switchboard_stream_messages_invalid_total",
                             transport="audiosocket", reason=label) == 1
        assert harness.value("switchboard_calls_total", transport="audiosocket",
                             outcome="protocol_error") == 1
        await _serves_next(rig)


async def _serves_next(rig: Rig) -> None:
    peer = await rig.connect()
    await peer.send(uuid_frame(uuid.uuid4()))
    await until(lambda: rig.h.ctx.legs)
    for _ in range(3):
        await rig.audio(peer, bytes(320))
    assert not peer.closed and len(peer.audio()) >= 3


async def test_allow_list(harness: Harness) -> None:
    async with make_rig(harness, networks=("10.0.0.0/8", "::1/128")) as rig:
        peer = await rig.connect()
        await until(lambda: peer.closed)
        assert peer.frames == [Frame(Kind.ERROR, bytes((ERROR_FORBIDDEN,)))]
        assert harness.value("switchboard_calls_rejected_total", transport="audiosocket",
                             reason="forbidden") == 1
        assert rig.server.allowed("10.1.2.3") and rig.server.allowed("::ffff:10.0.0.1")
        assert not rig.server.allowed("127.0.0.1") and not rig.server.allowed("garbage")


async def test_stream_limit_and_uuid_timeout(harness: Harness) -> None:
    harness.ctx.max_streams = 1
    async with make_rig(harness) as rig:
        first = await rig.connect()
        await first.send(uuid_frame(CALL))
        await until(lambda: harness.ctx.legs)
        second = await rig.connect()
        await until(lambda: second.closed)
        assert second.frames == [Frame(Kind.ERROR, bytes((ERROR_BUSY,)))]
        await first.send(hangup_frame())
        await until(lambda: harness.ctx.connections == 0)
        # A connection that never sends its UUID is dropped after the idle timeout.
        silent = await rig.connect()
        await until(lambda: harness.ctx.connections == 1)
        await harness.idle_until(lambda: silent.closed)
        assert silent.frames == [Frame(Kind.ERROR, bytes((ERROR_TIMEOUT,)))]
        assert harness.value("switchboard_calls_rejected_total", transport="audiosocket",
                             reason="timeout") == 1


async def test_idle_and_disconnect(rig: Rig) -> None:
    peer = await rig.connect()
    await peer.send(uuid_frame(CALL))
    await until(lambda: rig.h.ctx.legs)
    await rig.h.step(round(rig.h.ctx.idle_timeout / 0.02) + 2)
    await until(lambda: peer.closed)
    assert peer.frames[-1].kind is Kind.HANGUP
    assert rig.h.value("switchboard_calls_total", transport="audiosocket",
                       outcome="idle_timeout") == 1
    other = await rig.connect()
    await other.send(uuid_frame(uuid.uuid4()))
    await until(lambda: rig.h.ctx.legs)
    other.writer.close()  # the socket just goes away
    await until(lambda: not rig.h.ctx.legs)
    assert rig.h.value("switchboard_calls_total", transport="audiosocket",
                       outcome="disconnect") == 1
