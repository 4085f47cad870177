"""The browser door against a real aiohttp server, without a browser: a page-like client
sends the start message and 16 kHz PCM, gets paced PCM, live events, `clear` at barge-in
and a hangup message; token, loopback, limit and malformed-message refusals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from unittest import mock

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from media.clock import ManualClock
from pipeline.calllog import CallLog
from pipeline.leg import CallInfo, CallLeg
from streams.browser import (
    FRAME_BYTES,
    PATH,
    BrowserMessageError,
    BrowserSettings,
    StartMessage,
    add_routes,
    console_access,
)
from tests.streams.conftest import Harness, Speaker, correlation, frames, tone, until

TOKEN = "console-s3cret"
START = json.dumps({"type": "start", "agent": "echo", "caller": "Ada"})


class Page:
    """The Talk page's side of the socket: everything it got back."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.text: list[dict] = []
        self.binary: list[bytes] = []
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                self.text.append(json.loads(msg.data))
            elif msg.type is aiohttp.WSMsgType.BINARY:
                self.binary.append(msg.data)

    def of(self, kind: str) -> list[dict]:
        return [m for m in self.text if m.get("type") == kind]


class Rig:
    def __init__(self, h: Harness, client: TestClient) -> None:
        self.h = h
        self.client = client
        self.pages: list[Page] = []

    async def connect(self, query: str = f"?token={TOKEN}", **kw: object) -> Page:
        ws = await self.client.ws_connect(PATH + query, **kw)  # type: ignore[arg-type]
        page = Page(ws)
        self.pages.append(page)
        return page

    async def call(self, start: str = START) -> Page:
        page = await self.connect()
        await page.ws.send_str(start)
        await until(lambda: page.of("started") and self.h.ctx.legs)
        return page

    async def audio(self, page: Page, pcm: bytes) -> None:
        """One binary message; then 20 ms pass per 20 ms of audio."""
        leg = next(iter(self.h.ctx.legs))
        n = leg._frames_in
        await page.ws.send_bytes(pcm)
        await until(lambda: leg._frames_in > n or leg.closed)
        await self.h.step(max(1, len(pcm) // FRAME_BYTES))


@contextlib.asynccontextmanager
async def make_rig(h: Harness, settings: BrowserSettings | None = None
                   ) -> AsyncIterator[Rig]:
    app = web.Application()
    add_routes(app, h.ctx, settings or BrowserSettings(token=TOKEN, agents=lambda: ["echo"]))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    rig = Rig(h, client)
    try:
        yield rig
    finally:
        for page in rig.pages:
            page.task.cancel()
        await h.ctx.shutdown(2.0)
        await client.close()


async def test_a_call_echoes_paced_audio_and_hangs_up(harness: Harness,
                                                     speech: dict[int, np.ndarray]) -> None:
    async with make_rig(harness) as rig:
        page = await rig.call()
        started = page.of("started")[0]
        assert started["agent"] == "echo" and started["sample_rate"] == 16000
        info = harness.infos[0]
        assert (info.transport, info.agent, info.caller, info.callee) == (
            "browser", "echo", "Ada", "echo")
        assert info.call_id == started["call_id"] and info.params["remote"] == "127.0.0.1"
        question = speech[16000]
        for chunk in frames(np.concatenate([question, np.zeros(16000, "<i2")]), 320):
            await rig.audio(page, chunk)
        await harness.step(30)
        assert {"type": "state", "state": "listening"} in page.text  # the echo agent has no log
        assert page.binary and all(len(b) == FRAME_BYTES for b in page.binary)
        _, peak = correlation(question, np.frombuffer(b"".join(page.binary), dtype="<i2"))
        assert peak > 0.8, peak

        await page.ws.send_str('{"type":"hangup"}')
        await until(lambda: not harness.ctx.legs and page.ws.closed)
        assert page.text[-1] == {"type": "hangup", "reason": "remote_hangup"}
        assert page.ws.close_code == 1000
        assert harness.value("switchboard_calls_total", transport="browser",
                             outcome="remote_hangup") == 1
        assert harness.value("switchboard_stream_frames_total", transport="browser",
                             direction="in") > 100


async def test_barge_in_tells_the_page_to_clear(harness: Harness) -> None:
    speaker = Speaker([(tone(0.2, 16000), f"c{i}") for i in range(10)], rate=16000)
    harness._factory = lambda info: speaker
    async with make_rig(harness) as rig:
        page = await rig.call()
        for _ in range(10):
            await rig.audio(page, bytes(FRAME_BYTES))
        await until(lambda: len(page.binary) >= 10)
        assert speaker.leg is not None
        speaker.leg.clear_audio()  # what a conversation does when the caller talks over it
        await until(lambda: page.of("clear"))
        count = len(page.binary)
        for _ in range(10):
            await rig.audio(page, bytes(FRAME_BYTES))
        assert len(page.binary) == count  # no audio after the clear
        assert any(not played for _, played in speaker.marks)


class LoggedAgent:
    """An agent with a call log, as a conversation has: it replays one turn's events."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.calllog: CallLog | None = None

    async def on_start(self, leg: CallLeg) -> None:
        self.calllog = CallLog(leg.info, self.clock)
        # Before anyone follows: replayed to the page when it subscribes.
        self.calllog.event("say", phrase="greeting", text="Hello, how can I help?")

    def on_frame(self, pcm: bytes) -> None:
        pass

    def on_dtmf(self, digit: str) -> None:
        pass

    def on_mark(self, mark: str, played: bool) -> None:
        pass

    async def on_end(self, reason: str) -> None:
        pass

    def one_turn(self) -> None:
        log = self.calllog
        assert log is not None
        self.clock.advance(2.3)
        log.event("speech_end", speech_s=1.2)
        turn = log.new_turn(self.clock.now() - 0.3)
        log.event("state", logging.DEBUG, state="thinking")
        log.event("caller_said", turn=1, text="What time do you open?")
        turn.transcript = "What time do you open?"
        log.event("agent_said", logging.DEBUG, turn=1, text="We open at nine.")
        turn.answer = turn.heard = "We open at nine."
        turn.timings.update(speech=1.2, asr=0.25, llm_first_token=0.4, tts_first_audio=0.12,
                            response_latency=0.9, llm_total=1.1)
        log.event("state", logging.DEBUG, state="speaking")
        log.turn_done(turn, "answered")


async def test_the_call_log_is_relayed_live(harness: Harness) -> None:
    agent = LoggedAgent(harness.clock)
    harness._factory = lambda info: agent
    async with make_rig(harness) as rig:
        page = await rig.call()
        await rig.audio(page, bytes(FRAME_BYTES))
        await until(lambda: page.of("phrase"))
        agent.one_turn()
        await until(lambda: page.of("turn"))
        assert page.of("phrase") == [{"type": "phrase", "phrase": "greeting",
                                      "text": "Hello, how can I help?"}]
        assert [m["state"] for m in page.of("state")] == ["thinking", "speaking"]
        assert page.of("transcript") == [
            {"type": "transcript", "role": "caller", "turn": 1, "text": "What time do you open?"},
            {"type": "transcript", "role": "agent", "turn": 1, "text": "We open at nine."}]
        turn = page.of("turn")[0]
        assert (turn["caller"], turn["agent"], turn["outcome"]) == (
            "What time do you open?", "We open at nine.", "answered")
        assert turn["timings"] == {"endpointing": 300, "asr": 250, "llm_first_token": 400,
                                   "tts_first_audio": 120, "response_latency": 900,
                                   "speech": 1200, "llm_total": 1100}
        await page.ws.close()
        await until(lambda: not harness.ctx.legs)
        assert agent.calllog is not None and not agent.calllog._listeners  # unsubscribed


async def test_token_and_loopback_access(harness: Harness) -> None:
    async with make_rig(harness) as rig:
        for query, headers in (("", {}), ("?token=wrong", {}),
                               ("", {"Authorization": "Bearer wrong"})):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await rig.connect(query=query, headers=headers)
            assert info.value.status == 403
        assert harness.value("switchboard_calls_rejected_total", transport="browser",
                             reason="forbidden") == 3
        for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"X-Switchboard-Token": TOKEN}):
            page = await rig.connect(query="", headers=headers)
            await page.ws.send_str(START)
            await until(lambda p=page: p.of("started"))  # type: ignore[misc]
            await page.ws.close()
            await until(lambda: not harness.ctx.legs)

    def request(remote: str, path: str = PATH) -> web.Request:
        transport = mock.Mock()
        transport.get_extra_info.return_value = (remote, 50000)
        return make_mocked_request("GET", path, transport=transport)

    # No token configured: loopback only.
    assert console_access(request("127.0.0.1"), "") and console_access(request("::1"), "")
    assert not console_access(request("192.168.1.20"), "")
    # A token configured: required from everyone, loopback included.
    assert not console_access(request("127.0.0.1"), TOKEN)
    assert console_access(request("192.168.1.20", f"{PATH}?token={TOKEN}"), TOKEN)


@pytest.mark.parametrize(
    ("first", "then", "label", "code", "error"),
    [
        (b"\x00" * FRAME_BYTES, None, "no_start", 1003, "audio before start"),
        ("not json", None, "malformed", 1003, "text frame is not JSON"),
        ('{"type":"start","agent":"nobody"}', None, "agent", 1003, "no agent 'nobody'"),
        ('{"type":"hello"}', None, "malformed", 1003, "the first message must be"),
        (START, b"\x00" * 100, "frame_size", 1002, None),  # not whole 20 ms frames
        (START, "[1,2]", "malformed", 1002, None),
    ],
)
async def test_malformed_messages_end_the_stream(harness: Harness, first: str | bytes,
                                                 then: str | bytes | None, label: str,
                                                 code: int, error: str | None) -> None:
    async with make_rig(harness) as rig:
        page = await rig.connect()
        for message in (first, then):
            if isinstance(message, bytes):
                await page.ws.send_bytes(message)
            elif message is not None:
                await page.ws.send_str(message)
        await until(lambda: page.ws.closed)
        await until(lambda: not harness.ctx.legs and harness.ctx.connections == 0)
        assert page.ws.close_code == code
        assert harness.value("switchboard_stream_messages_invalid_total", transport="browser",
                             reason=label) == 1
        if error is not None:
            assert error in page.of("error")[0]["message"]
            assert not harness.infos  # no call was placed


async def test_limits_busy_too_large_and_idle(harness: Harness) -> None:
    harness.ctx.max_streams = 1
    harness.ctx.max_message_bytes = 4096
    async with make_rig(harness) as rig:
        page = await rig.call()
        other = await rig.connect()
        await until(lambda: other.ws.closed)
        assert other.ws.close_code == 1013  # busy: try again later
        await page.ws.send_bytes(bytes(FRAME_BYTES * 8))  # 5120 bytes > 4096
        await until(lambda: page.ws.closed and not harness.ctx.legs)
        assert page.ws.close_code == 1009
        assert harness.value("switchboard_calls_total", transport="browser",
                             outcome="too_large") == 1

        silent = await rig.call()  # started, then nothing: the idle timeout ends it
        await harness.idle_until(lambda: silent.ws.closed)
        assert silent.of("hangup") == [{"type": "hangup", "reason": "idle_timeout"}]
        quiet = await rig.connect()  # no start message at all
        await harness.idle_until(lambda: quiet.ws.closed)
        assert harness.value("switchboard_calls_rejected_total", transport="browser",
                             reason="timeout") == 1


def test_start_message_parsing() -> None:
    assert StartMessage.parse('{"type":"start","agent":"front-desk"}') == StartMessage(
        "front-desk", "")
    assert StartMessage.parse(START) == StartMessage("echo", "Ada")
    for bad, why in (('{"type":"start"}', "start.agent"),
                     ('{"type":"start","agent":""}', "start.agent"),
                     ('{"type":"start","agent":"a","caller":7}', "start.caller"),
                     ('{"type":"start","agent":"' + "x" * 65 + '"}', "start.agent"),
                     ("[]", "not a JSON object"), ("{", "not JSON")):
        with pytest.raises(BrowserMessageError, match=why):
            StartMessage.parse(bad)


async def test_refused_by_the_factory(harness: Harness) -> None:
    class Refused(Exception):
        metric = "unavailable"

    def refuse(info: CallInfo) -> Speaker:
        raise Refused("engines not loaded")

    harness._factory = refuse
    async with make_rig(harness) as rig:
        page = await rig.connect()
        await page.ws.send_str(START)
        await until(lambda: page.ws.closed)
        assert page.ws.close_code == 1013
        assert page.of("error") == [{"type": "error", "message": "call refused: unavailable"}]
        assert harness.value("switchboard_calls_rejected_total", transport="browser",
                             reason="unavailable") == 1  # counted once
