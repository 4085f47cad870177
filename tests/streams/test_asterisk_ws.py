"""The chan_websocket door against a real aiohttp server. A client plays Asterisk's part
as the docs describe it: it connects with the `media` subprotocol and the
websocket_client.conf credentials (HTTP Basic), sends MEDIA_START (plain text or JSON),
then the channel's codec in BINARY frames every 20 ms, DTMF_END, XOFF/XON and mark
reports as TEXT, and reads our media and commands back."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from pipeline.leg import TransferError
from streams.asterisk_ws import PATH, SUBPROTOCOL, AsteriskWsSettings, add_routes
from streams.asterisk_ws_messages import Command, parse_command
from tests.streams.conftest import Harness, Speaker, correlation, frames, tone, until

TOKEN = "s3cret-token"
CHANNEL_ID = "pbx1-1712345678.42"
FRAME = {"ulaw": 160, "alaw": 160, "slin": 320, "slin16": 640}
ENCODE = {"ulaw": ulaw_encode, "alaw": alaw_encode}  # slin and slin16: PCM as it is
DECODE = {"ulaw": ulaw_decode, "alaw": alaw_decode}


def start_message(fmt: str = "ulaw", json_format: bool = False, **variables: str) -> str:
    fields = {"connection_id": "6f1c5a52-4a8e-4b5e-9f0d-2b1e0c7d9a31",
              "channel": "WebSocket/switchboard/0x7f3a5c001234", "channel_id": CHANNEL_ID,
              "format": fmt, "optimal_frame_size": FRAME[fmt], "ptime": 20}
    if json_format:
        return json.dumps({"event": "MEDIA_START", **fields, "channel_variables": variables})
    return "MEDIA_START " + " ".join(f"{k}:{v}" for k, v in fields.items())


class Asterisk:
    """chan_websocket's side of one call: what it sends, and what it got back."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, json_format: bool) -> None:
        self.ws = ws
        self.json_format = json_format
        self.media: list[bytes] = []
        self.commands: list[Command] = []
        self.log: list[str] = []  # "media" or the command name, in arrival order
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                self.media.append(msg.data)
                self.log.append("media")
            elif msg.type is aiohttp.WSMsgType.TEXT:
                command = parse_command(msg.data)  # raises if Asterisk could not read it
                assert command.json == self.json_format
                self.commands.append(command)
                self.log.append(command.name)

    def names(self) -> list[str]:
        return [c.name for c in self.commands]

    async def event(self, name: str, **fields: str) -> None:
        if self.json_format:
            await self.ws.send_str(json.dumps({"event": name, "channel_id": CHANNEL_ID,
                                               **fields}))
        else:
            words = [f"{k}:{v}" for k, v in fields.items() if k != "correlation_id"]
            words += [fields["correlation_id"]] if "correlation_id" in fields else []
            await self.ws.send_str(" ".join([name, *words]))


class Rig:
    def __init__(self, h: Harness, client: TestClient) -> None:
        self.h = h
        self.client = client
        self.peers: list[Asterisk] = []

    async def connect(self, query: str = "", password: str = TOKEN, json_format: bool = False,
                      headers: dict[str, str] | None = None) -> Asterisk:
        """websocket_client.conf's username and password go as HTTP Basic auth."""
        auth = {"Authorization": aiohttp.encode_basic_auth("asterisk", password)}
        ws = await self.client.ws_connect(PATH + query, protocols=(SUBPROTOCOL,),
                                          headers={**auth, **(headers or {})})
        peer = Asterisk(ws, json_format)
        self.peers.append(peer)
        return peer

    async def call(self, fmt: str = "ulaw", json_format: bool = False, query: str = "",
                   **variables: str) -> Asterisk:
        peer = await self.connect(query, json_format=json_format)
        await peer.ws.send_str(start_message(fmt, json_format, **variables))
        await until(lambda: self.h.ctx.legs)
        return peer

    async def media(self, peer: Asterisk, data: bytes) -> None:
        """One BINARY frame; then 20 ms pass per 20 ms of audio."""
        leg = next(iter(self.h.ctx.legs))
        n = leg._frames_in
        await peer.ws.send_bytes(data)
        await until(lambda: leg._frames_in > n or leg.closed)
        await self.h.step(max(1, len(data) // (leg.wire_rate // 50 * 2)))


@contextlib.asynccontextmanager
async def make_rig(h: Harness, settings: AsteriskWsSettings) -> AsyncIterator[Rig]:
    app = web.Application()
    add_routes(app, h.ctx, settings)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    rig = Rig(h, client)
    try:
        yield rig
    finally:
        for peer in rig.peers:
            peer.task.cancel()
        await h.ctx.shutdown(2.0)
        await client.close()


@pytest.mark.parametrize(("fmt", "json_format"), [("ulaw", False), ("slin16", True),
                                                  ("slin", False), ("alaw", True)])
async def test_call_echoes_in_the_channel_codec(harness: Harness, speech: dict[int, np.ndarray],
                                               fmt: str, json_format: bool) -> None:
    rate = 16000 if fmt == "slin16" else 8000
    async with make_rig(harness, AsteriskWsSettings(token=TOKEN)) as rig:
        # v(caller=...,callee=...) in the dial string: URI parameters
        peer = await rig.call(fmt, json_format, query="?caller=1001&callee=5000",
                              SB_LANG="en")
        assert peer.ws.protocol == SUBPROTOCOL
        question = speech[rate]
        pcm = frames(np.concatenate([question, np.zeros(rate, "<i2")]), rate // 50)
        for frame in pcm:  # 20 ms frames, as Asterisk sends them
            await rig.media(peer, ENCODE.get(fmt, bytes)(frame))
        await harness.step(20)
        await peer.ws.close()  # Asterisk hangs up: it closes the WebSocket (1000)
        await until(lambda: not harness.ctx.legs)

        info = harness.infos[0]
        assert (info.call_id, info.transport, info.caller, info.callee) == (
            CHANNEL_ID, "asterisk_ws", "1001", "5000")
        assert info.params["channel"] == "WebSocket/switchboard/0x7f3a5c001234"
        assert info.params["format"] == fmt
        assert info.params.get("SB_LANG") == ("en" if json_format else None)
        assert peer.media and all(len(m) == FRAME[fmt] for m in peer.media)  # whole frames
        back = b"".join(DECODE.get(fmt, bytes)(m) for m in peer.media)
        _, peak = correlation(question, np.frombuffer(back, dtype="<i2"))
        assert peak > 0.8, peak
        assert "HANGUP" not in peer.names()  # Asterisk hung up: nothing to tell it
        assert harness.value("switchboard_calls_total", transport="asterisk_ws",
                             outcome="remote_hangup") == 1
        assert harness.value("switchboard_stream_frames_total", transport="asterisk_ws",
                             direction="in") == len(pcm)


@pytest.mark.parametrize("json_format", [False, True])
async def test_barge_in_flushes_and_dtmf(harness: Harness, json_format: bool) -> None:
    speaker = Speaker([(tone(0.2), f"c{i}") for i in range(10)])
    harness._factory = lambda info: speaker
    async with make_rig(harness, AsteriskWsSettings(token=TOKEN, max_lead_ms=100)) as rig:
        peer = await rig.call("ulaw", json_format)
        await until(lambda: speaker.leg is not None)
        for _ in range(20):
            await rig.media(peer, b"\xff" * 160)
        await until(lambda: len(peer.media) >= 20)
        assert len(peer.media) <= 20 + 5  # never more than max_lead_ms ahead
        await peer.event("DTMF_END", digit="*")  # the Speaker clears its audio on '*'
        await until(lambda: "FLUSH_MEDIA" in peer.names())
        count = len(peer.media)
        for _ in range(10):
            await rig.media(peer, b"\xff" * 160)
        assert len(peer.media) == count  # nothing after the flush
        assert speaker.digits == ["*"]
        played = [m for m, ok in speaker.marks if ok]
        unplayed = [m for m, ok in speaker.marks if not ok]
        assert played and unplayed and played + unplayed == [f"c{i}" for i in range(10)]
        assert harness.value("switchboard_dtmf_digits_total", transport="asterisk_ws",
                             method="text") == 1


async def test_marks_confirmed_by_asterisk(harness: Harness) -> None:
    speaker = Speaker([(tone(0.1), "first"), (tone(0.1), "second"), (tone(2.0), "third")])
    harness._factory = lambda info: speaker
    settings = AsteriskWsSettings(token=TOKEN, marks="asterisk", max_lead_ms=400)
    async with make_rig(harness, settings) as rig:
        peer = await rig.call("ulaw", json_format=True)
        await until(lambda: speaker.leg is not None)
        for _ in range(12):
            await rig.media(peer, b"\xff" * 160)
        await until(lambda: peer.names().count("MARK_MEDIA") >= 2)
        first, second = [c for c in peer.commands if c.name == "MARK_MEDIA"][:2]
        # Each MARK_MEDIA follows exactly the audio before its mark: 5 frames each.
        assert peer.log[:12] == ["media"] * 5 + ["MARK_MEDIA"] + ["media"] * 5 + ["MARK_MEDIA"]
        assert speaker.marks == []  # our timeline does not fire them: Asterisk does
        await peer.event("MEDIA_MARK_PROCESSED", correlation_id="not-ours")
        await peer.event("MEDIA_MARK_PROCESSED", correlation_id=second.correlation_id)
        await until(lambda: len(speaker.marks) == 2)
        assert speaker.marks == [("first", True), ("second", True)]  # in order, both played
        await peer.event("MEDIA_MARK_PROCESSED", correlation_id=first.correlation_id)  # late
        speaker.leg.clear_audio()  # type: ignore[union-attr]
        await harness.step(1)
        assert speaker.marks[-1] == ("third", False)
        assert "FLUSH_MEDIA" in peer.names()
        assert not peer.ws.closed


async def test_xoff_pauses_output_until_xon(harness: Harness) -> None:
    speaker = Speaker([(tone(2.0), "long")])
    harness._factory = lambda info: speaker
    async with make_rig(harness, AsteriskWsSettings(token=TOKEN)) as rig:
        peer = await rig.call()
        await until(lambda: speaker.leg is not None)
        for _ in range(5):
            await rig.media(peer, b"\xff" * 160)
        leg = speaker.leg
        await peer.event("MEDIA_XOFF")
        await rig.media(peer, b"\xff" * 160)  # TEXT and BINARY are read in order
        count = leg._frames_out  # type: ignore[union-attr]
        for _ in range(10):
            await rig.media(peer, b"\xff" * 160)
        assert leg._frames_out == count  # type: ignore[union-attr]  # Asterisk is full: hold
        await until(lambda: len(peer.media) == count)
        await peer.event("MEDIA_XON")
        for _ in range(5):
            await rig.media(peer, b"\xff" * 160)
        await until(lambda: len(peer.media) > count)
        await peer.event("STATUS", queue_length="3", queue_full="false")  # read and ignored
        await rig.media(peer, b"\xff" * 160)
        assert not peer.ws.closed


async def test_agent_hangs_up_and_cannot_transfer(harness: Harness) -> None:
    speaker = Speaker([])
    harness._factory = lambda info: speaker
    async with make_rig(harness, AsteriskWsSettings(token=TOKEN, answer=True)) as rig:
        peer = await rig.call(json_format=True)
        await until(lambda: speaker.leg is not None)
        await until(lambda: peer.commands)
        assert peer.names() == ["ANSWER"]  # the dial string's `n`: we answer
        with pytest.raises(TransferError, match="cannot transfer"):
            await speaker.leg.transfer("sip:2000@pbx")  # type: ignore[union-attr]
        await speaker.leg.hangup()  # type: ignore[union-attr]
        await until(lambda: peer.ws.closed and not harness.ctx.legs)
        assert peer.names() == ["ANSWER", "HANGUP"]
        assert speaker.ended == "hangup"
        assert harness.value("switchboard_calls_total", transport="asterisk_ws",
                             outcome="hangup") == 1


async def test_token_refusals(harness: Harness) -> None:
    async with make_rig(harness, AsteriskWsSettings(token=TOKEN)) as rig:
        for query, password, headers in (
            ("", "wrong", {}),
            ("?token=wrong", "", {}),
            ("", "", {"X-Switchboard-Token": "nope"}),
            ("", "", {}),
        ):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await rig.connect(query, password=password, headers=headers)
            assert info.value.status == 403
        assert harness.value("switchboard_calls_rejected_total", transport="asterisk_ws",
                             reason="forbidden") == 4
        for query, headers in ((f"?token={TOKEN}", {}), ("", {"X-Switchboard-Token": TOKEN}),
                               ("", {"Authorization": f"Bearer {TOKEN}"})):
            peer = await rig.connect(query, password="", headers=headers)
            await peer.ws.send_str(start_message())
            await until(lambda: len(harness.ctx.legs) == 1)
            await peer.ws.close()
            await until(lambda: not harness.ctx.legs)


@pytest.mark.parametrize(
    ("first", "then", "label", "code"),
    [
        (b"\xff" * 160, None, "no_media_start", 1002),  # media before MEDIA_START
        ("DTMF_END digit:1", None, "media_start", 1003),
        ("MEDIA_START connection_id:c format:opus optimal_frame_size:0", None,
         "media_start", 1003),
        (start_message(), "garbage that is not an event", "malformed", 1002),
        (start_message(), "DTMF_END digit:Z", "malformed", 1002),
        (start_message(), start_message(), "malformed", 1002),  # MEDIA_START twice
        (start_message(json_format=True), '{"event": "DTMF_END", "digit":', "malformed", 1002),
    ],
)
async def test_malformed_messages_are_refused_cleanly(
        harness: Harness, first: str | bytes, then: str | None, label: str, code: int) -> None:
    async with make_rig(harness, AsteriskWsSettings(token=TOKEN)) as rig:
        peer = await rig.connect(json_format=isinstance(first, str) and first[0] == "{")
        for data in (first, then):
            if isinstance(data, str):
                await peer.ws.send_str(data)
            elif data is not None:
                await peer.ws.send_bytes(data)
        await until(lambda: peer.ws.closed)
        assert peer.ws.close_code == code
        assert harness.value("switchboard_stream_messages_invalid_total",
                             transport="asterisk_ws", reason=label) == 1
        assert "HANGUP" in peer.names() if then is not None else not peer.commands
        # The server keeps serving the next call.
        good = await rig.call()
        for _ in range(3):
            await rig.media(good, b"\xff" * 160)
        assert not good.ws.closed


async def test_limits(harness: Harness) -> None:
    harness.ctx.max_streams = 1
    harness.ctx.max_message_bytes = 4096
    async with make_rig(harness, AsteriskWsSettings()) as rig:  # no token configured
        first = await rig.call()
        second = await rig.connect(password="")
        await until(lambda: second.ws.closed)
        assert second.ws.close_code == 1013  # try again later
        assert harness.value("switchboard_calls_rejected_total", transport="asterisk_ws",
                             reason="busy") == 1
        await first.ws.send_bytes(bytes(8000))  # over max_message_bytes
        await until(lambda: first.ws.closed and not harness.ctx.legs)
        assert first.ws.close_code == 1009
        assert harness.value("switchboard_calls_total", transport="asterisk_ws",
                             outcome="too_large") == 1
        await until(lambda: harness.ctx.connections == 0)
        # A stream that stops sending is closed after the idle timeout (on our clock).
        third = await rig.call()
        await harness.step(round(harness.ctx.idle_timeout / 0.02) + 2)
        await until(lambda: third.ws.closed and not harness.ctx.legs)
        assert third.ws.close_code == 1001
        assert harness.value("switchboard_calls_total", transport="asterisk_ws",
                             outcome="idle_timeout") == 1
        # ... and one that never sends MEDIA_START, too.
        await until(lambda: harness.ctx.connections == 0)
        fourth = await rig.connect()
        await until(lambda: harness.ctx.connections == 1)
        await harness.idle_until(lambda: fourth.ws.closed)
        assert harness.value("switchboard_calls_rejected_total", transport="asterisk_ws",
                             reason="timeout") == 1
