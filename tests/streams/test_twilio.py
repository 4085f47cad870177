"""The Twilio door against a real aiohttp server: a documented call replayed over a real
WebSocket (connected, start with custom parameters, a spoken question as 20 ms μ-law
media frames, a DTMF digit, stop), marks, clear, signatures, TwiML, limits."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from twilio.request_validator import RequestValidator

from media.g711 import ulaw_decode, ulaw_encode
from pipeline.echo import EchoHandler
from streams.twilio import STREAM_PATH, VOICE_PATH, TwilioSettings, add_routes
from streams.twilio_messages import Connected, Dtmf, Mark, Media, MediaFormat, Start, Stop
from tests.streams.conftest import Harness, Speaker, correlation, frames, tone, until

TOKEN = "12345678901234567890123456789012"
SID = "MZ00000000000000000000000000000001"
CALL = "CA00000000000000000000000000000001"
ACCOUNT = "AC00000000000000000000000000000001"


@dataclass
class Peer:
    """The Twilio side of one stream: sends documented frames, records what comes back."""

    ws: aiohttp.ClientWebSocketResponse
    received: list[dict] = field(default_factory=list)
    seq: int = 0
    chunk: int = 0

    def media(self) -> list[bytes]:
        return [base64.b64decode(m["media"]["payload"]) for m in self.received
                if m.get("event") == "media"]

    def events(self) -> list[str]:
        return [m["event"] for m in self.received]

    async def send(self, message: object) -> None:
        self.seq += 1
        await self.ws.send_str(message.to_json())  # type: ignore[attr-defined]

    async def start(self, params: dict[str, str] | None = None) -> None:
        await self.ws.send_str(Connected().to_json())
        await self.send(Start(SID, CALL, ACCOUNT, self.seq + 1, ("inbound",),
                              params or {}, MediaFormat()))

    async def audio(self, ulaw: bytes) -> None:
        self.chunk += 1
        await self.send(Media(SID, self.seq + 1, self.chunk, (self.chunk - 1) * 20, ulaw))


async def reader(peer: Peer) -> None:
    async for msg in peer.ws:
        if msg.type is aiohttp.WSMsgType.TEXT:
            peer.received.append(json.loads(msg.data))


class Rig:
    def __init__(self, h: Harness, client: TestClient) -> None:
        self.h = h
        self.client = client
        self.url = f"ws://{client.host}:{client.port}{STREAM_PATH}"
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self, signature: str | None = "valid", **kw: object) -> Peer:
        headers = {}
        if signature == "valid":
            headers["X-Twilio-Signature"] = RequestValidator(TOKEN).compute_signature(self.url, {})
        elif signature is not None:
            headers["X-Twilio-Signature"] = signature
        ws = await self.client.ws_connect(STREAM_PATH, headers=headers, **kw)  # type: ignore[arg-type]
        peer = Peer(ws)
        self.tasks.append(asyncio.get_running_loop().create_task(reader(peer)))
        return peer

    async def frame(self, peer: Peer, ulaw: bytes) -> None:
        """Send one 20 ms frame and let 20 ms pass once the server has it."""
        legs = list(self.h.ctx.legs)
        await peer.audio(ulaw)
        if legs:
            leg = legs[0]
            n = leg._frames_in
            await until(lambda: leg._frames_in > n or leg.closed)
        await self.h.step()


@contextlib.asynccontextmanager
async def make_rig(h: Harness, settings: TwilioSettings) -> AsyncIterator[Rig]:
    app = web.Application()
    add_routes(app, h.ctx, settings)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    rig = Rig(h, client)
    try:
        yield rig
    finally:
        for task in rig.tasks:
            task.cancel()
        await h.ctx.shutdown(2.0)
        await client.close()


@pytest.fixture
async def rig(harness: Harness) -> AsyncIterator[Rig]:
    async with make_rig(harness, TwilioSettings(auth_token=TOKEN, max_lead_ms=100)) as r:
        yield r


async def test_whole_call_echoes_the_question(rig: Rig, speech: dict[int, np.ndarray]) -> None:
    question = speech[8000]
    ulaw = [ulaw_encode(f) for f in frames(question, 160)]
    silence = [b"\xff" * 160] * 50  # a second of quiet while the echo finishes
    peer = await rig.connect()
    await peer.start({"From": "+15550001111", "To": "+15550002222", "agent": "sales"})
    await until(lambda: rig.h.ctx.legs)
    for i, frame in enumerate(ulaw + silence):
        await rig.frame(peer, frame)
        if i == len(ulaw) // 2:
            await peer.send(Dtmf(SID, peer.seq + 1, "5"))
    await peer.send(Stop(SID, peer.seq + 1, ACCOUNT, CALL))
    await until(lambda: peer.ws.closed)

    echo = rig.h.handlers[0]
    assert isinstance(echo, EchoHandler)
    info = rig.h.infos[0]
    assert (info.call_id, info.transport, info.caller, info.callee) == (
        CALL, "twilio", "+15550001111", "+15550002222")
    assert info.params["agent"] == "sales" and info.params["streamSid"] == SID
    assert echo.digits == ["5"] and echo.ended == "remote_stop"
    # Every outbound frame is one whole 20 ms μ-law frame of this stream.
    media = peer.media()
    assert all(m.get("streamSid") == SID for m in peer.received)
    assert media and all(len(p) == 160 for p in media)
    # ... and the audio is the question, delayed by the echo plus the jitter buffer.
    back = np.frombuffer(ulaw_decode(b"".join(media)), dtype="<i2")
    sent = np.frombuffer(ulaw_decode(b"".join(ulaw)), dtype="<i2")
    lag, peak = correlation(sent, np.concatenate([np.zeros(8000, "<i2"), back]))
    delay = lag / 8000 - 1.0 + (len(ulaw) + 50 - len(media)) * 0.02
    assert peak > 0.8, peak
    assert 0.3 <= delay <= 0.6, delay
    h = rig.h
    assert h.value("switchboard_calls_total", transport="twilio", outcome="remote_stop") == 1
    assert h.value("switchboard_dtmf_digits_total", transport="twilio", method="stream") == 1
    assert h.value("switchboard_stream_frames_total", transport="twilio",
                   direction="in") == len(ulaw) + 50
    assert h.value("switchboard_calls_active", transport="twilio") == 0


async def test_marks_are_honoured_only_when_echoed(rig: Rig) -> None:
    speaker = Speaker([(tone(0.2), "first"), (tone(0.2), "second")])
    rig.h._factory = lambda info: speaker
    peer = await rig.connect()
    await peer.start()
    await until(lambda: speaker.leg is not None)
    for _ in range(30):
        await rig.frame(peer, b"\xff" * 160)
    await until(lambda: peer.events().count("mark") == 2)
    events = peer.events()
    # Ten media frames, the first mark, ten more, the second mark; nothing played yet.
    assert events.index("mark") == 10 and events[11:21] == ["media"] * 10
    assert [m["mark"]["name"] for m in peer.received if m["event"] == "mark"] == [
        "first", "second"]
    assert speaker.marks == []
    await peer.send(Mark(SID, peer.seq + 1, "first"))
    await until(lambda: speaker.marks)
    assert speaker.marks == [("first", True)]
    await peer.send(Mark(SID, peer.seq + 1, "second"))
    await until(lambda: len(speaker.marks) == 2)
    assert speaker.marks[1] == ("second", True)


async def test_clear_on_barge_in(rig: Rig) -> None:
    speaker = Speaker([(tone(0.2, freq=300 + 100 * i), f"chunk{i}") for i in range(10)])
    rig.h._factory = lambda info: speaker
    peer = await rig.connect()
    await peer.start()
    await until(lambda: speaker.leg is not None)
    for _ in range(12):
        await rig.frame(peer, b"\xff" * 160)
    await until(lambda: len(peer.media()) >= 16)
    # lead: 5 frames ahead on the first tick, then one per tick
    assert len(peer.media()) <= 12 + 5
    await peer.send(Mark(SID, peer.seq + 1, "chunk0"))  # Twilio played the first chunk
    await until(lambda: speaker.marks)
    await peer.send(Dtmf(SID, peer.seq + 1, "*"))  # the agent's barge-in
    await until(lambda: "clear" in peer.events())
    sent_before = len(peer.media())
    for _ in range(5):
        await rig.frame(peer, b"\xff" * 160)
    assert peer.received[-1]["event"] == "clear"  # no audio after the clear
    assert len(peer.media()) == sent_before
    assert speaker.marks[0] == ("chunk0", True)
    assert speaker.marks[1:] == [(f"chunk{i}", False) for i in range(1, 10)]
    assert rig.h.handlers[0] is speaker and speaker.leg.queued_seconds() == 0  # type: ignore[union-attr]


async def test_signature_refusals(rig: Rig) -> None:
    for signature in (None, "tampered" + "A" * 20):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await rig.connect(signature=signature)
        assert info.value.status == 403
    assert rig.h.value("switchboard_calls_rejected_total", transport="twilio",
                       reason="forbidden") == 2
    peer = await rig.connect()  # the valid one is served
    await peer.start()
    await until(lambda: rig.h.ctx.legs)


async def test_voice_webhook_twiml(rig: Rig) -> None:
    form = {"CallSid": CALL, "From": "+15550001111", "To": "+15550002222",
            "AccountSid": ACCOUNT, "Direction": "inbound"}
    path = f"{VOICE_PATH}?agent=sales&lang=en"
    url = f"http://{rig.client.host}:{rig.client.port}{path}"
    signature = RequestValidator(TOKEN).compute_signature(url, form)
    resp = await rig.client.post(path, data=form, headers={"X-Twilio-Signature": signature})
    assert resp.status == 200 and resp.content_type == "text/xml"
    root = ET.fromstring(await resp.text())
    stream = root.find("./Connect/Stream")
    assert root.tag == "Response" and stream is not None
    # Twilio only connects over TLS: without a public URL we name wss:// on our Host.
    assert stream.get("url") == f"wss://{rig.client.host}:{rig.client.port}{STREAM_PATH}"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {"From": "+15550001111", "To": "+15550002222", "CallSid": CALL,
                      "agent": "sales", "lang": "en"}
    # A field changed after signing: refused.
    tampered = dict(form, From="+19990000000")
    resp = await rig.client.post(path, data=tampered, headers={"X-Twilio-Signature": signature})
    assert resp.status == 403
    resp = await rig.client.post(path, data=form)
    assert resp.status == 403


async def test_public_base_url_names_the_stream(harness: Harness) -> None:
    settings = TwilioSettings(auth_token=TOKEN, public_base_url="https://voice.example.com")
    async with make_rig(harness, settings) as rig:
        form = {"CallSid": CALL, "From": "+1555", "To": "+1666"}
        signature = RequestValidator(TOKEN).compute_signature(
            f"https://voice.example.com{VOICE_PATH}", form)
        resp = await rig.client.post(VOICE_PATH, data=form,
                                     headers={"X-Twilio-Signature": signature})
        root = ET.fromstring(await resp.text())
        stream = root.find("./Connect/Stream")
        assert stream is not None
        assert stream.get("url") == f"wss://voice.example.com{STREAM_PATH}"
        # The upgrade is checked against the public wss:// URL Twilio signed.
        rig.url = f"wss://voice.example.com{STREAM_PATH}"
        peer = await rig.connect()
        await peer.start()
        await until(lambda: harness.ctx.legs)


async def test_garbage_is_refused_and_the_next_stream_served(rig: Rig) -> None:
    peer = await rig.connect()
    await peer.start()
    await until(lambda: rig.h.ctx.legs)
    await peer.ws.send_str('{"event":"media","streamSid":"' + SID + '","media":{}}')
    await until(lambda: peer.ws.closed)
    assert peer.ws.close_code == 1002
    assert rig.h.value("switchboard_stream_messages_invalid_total", transport="twilio",
                       reason="malformed") == 1
    assert rig.h.value("switchboard_calls_total", transport="twilio",
                       outcome="protocol_error") == 1
    # Binary and unknown events
    peer = await rig.connect()
    await peer.start()
    await peer.ws.send_str('{"event":"futureThing"}')  # ignored, counted
    await peer.ws.send_bytes(b"\x00\x01")
    await until(lambda: peer.ws.closed)
    assert rig.h.value("switchboard_stream_messages_invalid_total", transport="twilio",
                       reason="unknown_event") == 1
    # The server keeps serving.
    peer = await rig.connect()
    await peer.start()
    for _ in range(3):
        await rig.frame(peer, b"\xff" * 160)
    assert not peer.ws.closed


async def test_limits(harness: Harness) -> None:
    harness.ctx.max_streams = 1
    harness.ctx.max_message_bytes = 2048
    async with make_rig(harness, TwilioSettings()) as rig:  # no token: no signature check
        first = await rig.connect(signature=None)
        await first.start()
        await until(lambda: harness.ctx.legs)
        second = await rig.connect(signature=None)
        await until(lambda: second.ws.closed)
        assert second.ws.close_code == 1013  # try again later
        assert harness.value("switchboard_calls_rejected_total", transport="twilio",
                             reason="busy") == 1
        await first.ws.send_str(json.dumps({"event": "mark", "x": "y" * 4000}))
        await until(lambda: first.ws.closed)
        assert first.ws.close_code == 1009
        assert harness.value("switchboard_stream_messages_invalid_total", transport="twilio",
                             reason="too_large") == 1
        await until(lambda: harness.ctx.connections == 0)
        third = await rig.connect(signature=None)
        await third.start()
        await until(lambda: harness.ctx.legs)
        # A stream that stops sending is closed after the idle timeout (on our clock).
        await harness.step(round(harness.ctx.idle_timeout / 0.02) + 2)
        await until(lambda: third.ws.closed)
        assert third.ws.close_code == 1001
        assert harness.value("switchboard_calls_total", transport="twilio",
                             outcome="idle_timeout") == 1
        # ... and one that never starts, too.
        fourth = await rig.connect(signature=None)
        await fourth.ws.send_str(Connected().to_json())
        await until(lambda: harness.ctx.connections == 1)
        await harness.idle_until(lambda: fourth.ws.closed)
        assert harness.value("switchboard_calls_rejected_total", transport="twilio",
                             reason="timeout") == 1


async def test_refused_by_the_factory(harness: Harness) -> None:
    class Refusal(Exception):
        metric = "unavailable"

    def refuse(info: object) -> object:
        raise Refusal("503 Service Unavailable")

    harness._factory = refuse  # type: ignore[assignment]
    async with make_rig(harness, TwilioSettings()) as rig:
        peer = await rig.connect(signature=None)
        await peer.start()
        await until(lambda: peer.ws.closed)
        assert peer.ws.close_code == 1013
        assert harness.value("switchboard_calls_rejected_total", transport="twilio",
                             reason="unavailable") == 1
        assert not harness.ctx.legs
