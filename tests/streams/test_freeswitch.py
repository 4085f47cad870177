"""The FreeSWITCH door against a real aiohttp server: a mod_audio_stream client (metadata
text frame, then binary L16) holds a call with the echo agent; streamAudio and binary
output; barge-in; token and malformed-frame refusals."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from streams.freeswitch import (
    CLEAR_AUDIO,
    PATH,
    FreeswitchSettings,
    MetadataError,
    add_routes,
    metadata_rate,
    parse_metadata,
)
from tests.streams.conftest import Harness, Speaker, correlation, frames, tone, until

TOKEN = "s3cret-token"
UUID = "6a3f7c2e-1b7e-4c59-9d7a-2f0c1e5b9a11"


class Module:
    """The mod_audio_stream side: what it sends, and everything it got back."""

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

    def played(self) -> bytes:
        """The PCM of every streamAudio message, in order."""
        return b"".join(base64.b64decode(m["data"]["audioData"]) for m in self.text
                        if m.get("type") == "streamAudio")


class Rig:
    def __init__(self, h: Harness, client: TestClient) -> None:
        self.h = h
        self.client = client
        self.modules: list[Module] = []

    async def connect(self, query: str = f"?token={TOKEN}", **kw: object) -> Module:
        ws = await self.client.ws_connect(PATH + query, **kw)  # type: ignore[arg-type]
        module = Module(ws)
        self.modules.append(module)
        return module

    async def audio(self, module: Module, pcm: bytes) -> None:
        """One binary frame; 20 ms per 20 ms of audio pass once the server has it."""
        legs = list(self.h.ctx.legs)
        await module.ws.send_bytes(pcm)
        if legs:
            leg = legs[0]
            n = leg._frames_in
            await until(lambda: leg._frames_in > n or leg.closed)
        await self.h.step(max(1, len(pcm) // (legs[0].wire_rate // 25) if legs else 1))


@contextlib.asynccontextmanager
async def make_rig(h: Harness, settings: FreeswitchSettings) -> AsyncIterator[Rig]:
    app = web.Application()
    add_routes(app, h.ctx, settings)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    rig = Rig(h, client)
    try:
        yield rig
    finally:
        for module in rig.modules:
            module.task.cancel()
        await h.ctx.shutdown(2.0)
        await client.close()


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_call_echoes_through_stream_audio(harness: Harness, speech: dict[int, np.ndarray],
                                                rate: int) -> None:
    settings = FreeswitchSettings(token=TOKEN, output="stream_audio", chunk_ms=200)
    async with make_rig(harness, settings) as rig:
        module = await rig.connect()
        await module.ws.send_str(json.dumps({"uuid": UUID, "caller": "1001",
                                             "destination_number": "5000",
                                             "sample_rate": rate, "vars": {"lang": "en"}}))
        question = speech[rate]
        # mod_audio_stream with STREAM_BUFFER_SIZE=40: two 20 ms frames per message
        chunks = frames(np.concatenate([question, np.zeros(rate, "<i2")]), rate // 25)
        await rig.audio(module, chunks[0])
        await until(lambda: harness.ctx.legs)
        for chunk in chunks[1:]:
            await rig.audio(module, chunk)
        await harness.step(30)
        await module.ws.close()
        await until(lambda: not harness.ctx.legs)

        info = harness.infos[0]
        assert (info.call_id, info.caller, info.callee) == (UUID, "1001", "5000")
        assert info.params["vars"] == '{"lang":"en"}' and info.params["sample_rate"] == str(rate)
        audio_messages = [m for m in module.text if m.get("type") == "streamAudio"]
        assert audio_messages
        for m in audio_messages:
            assert m["data"]["audioDataType"] == "raw" and m["data"]["sampleRate"] == rate
            assert len(m["data"]["audioData"]) <= 8000  # small chunks
            assert len(base64.b64decode(m["data"]["audioData"])) % (rate // 50 * 2) == 0
        back = np.frombuffer(module.played(), dtype="<i2")
        _, peak = correlation(question, back)
        assert peak > 0.8, peak
        assert harness.value("switchboard_calls_total", transport="freeswitch",
                             outcome="disconnect") == 1


async def test_binary_output_and_plain_text_metadata(harness: Harness,
                                                     speech: dict[int, np.ndarray]) -> None:
    settings = FreeswitchSettings(output="binary", sample_rate=8000)
    async with make_rig(harness, settings) as rig:
        module = await rig.connect(query="")  # no token configured: none needed
        await module.ws.send_str("caller=1001 campaign=spring")
        question = speech[8000]
        for chunk in frames(np.concatenate([question, np.zeros(8000, "<i2")]), 160):
            await rig.audio(module, chunk)
        await harness.step(20)
        assert harness.infos[0].params == {"metadata": "caller=1001 campaign=spring"}
        assert len(harness.infos[0].call_id) == 36  # no uuid in the metadata: one is made
        assert module.binary and all(len(b) == 320 for b in module.binary)
        back = np.frombuffer(b"".join(module.binary), dtype="<i2")
        _, peak = correlation(question, back)
        assert peak > 0.8, peak


async def test_barge_in_sends_clear_audio_and_dtmf_from_text(harness: Harness) -> None:
    speaker = Speaker([(tone(0.2), f"c{i}") for i in range(10)])
    harness._factory = lambda info: speaker
    async with make_rig(harness, FreeswitchSettings(token=TOKEN, chunk_ms=100)) as rig:
        module = await rig.connect()
        await rig.audio(module, bytes(320))  # no metadata: audio first
        await until(lambda: speaker.leg is not None)
        for _ in range(10):
            await rig.audio(module, bytes(320))
        await until(lambda: len(module.text) >= 3)
        assert all(len(base64.b64decode(m["data"]["audioData"])) == 1600 for m in module.text)
        await module.ws.send_str('{"type":"dtmf","digit":"*"}')  # send_text from the dialplan
        await until(lambda: {"type": "clearAudio"} in module.text)
        assert json.loads(CLEAR_AUDIO) == module.text[-1]
        count = len(module.text)
        for _ in range(10):
            await rig.audio(module, bytes(320))
        assert len(module.text) == count  # nothing after the clear
        assert speaker.digits == ["*"]
        assert any(not played for _, played in speaker.marks)
        assert harness.value("switchboard_dtmf_digits_total", transport="freeswitch",
                             method="text") == 1


async def test_token_refusals(harness: Harness) -> None:
    async with make_rig(harness, FreeswitchSettings(token=TOKEN)) as rig:
        for query, headers in (("", {}), ("?token=wrong", {}),
                               ("", {"Authorization": "Bearer wrong"})):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await rig.connect(query=query, headers=headers)
            assert info.value.status == 403
        assert harness.value("switchboard_calls_rejected_total", transport="freeswitch",
                             reason="forbidden") == 3
        for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"X-Switchboard-Token": TOKEN}):
            module = await rig.connect(query="", headers=headers)
            await module.ws.send_bytes(bytes(320))
            await until(lambda: len(harness.ctx.legs) == 1)
            await module.ws.close()
            await until(lambda: not harness.ctx.legs)


@pytest.mark.parametrize(
    ("first", "then", "label", "code"),
    [
        ('{"uuid":"x"}', "not json at all", "malformed", 1002),
        ('{"uuid":"x"}', b"\x00" * 100, "frame_size", 1002),  # not a 20 ms multiple
        (b"\x00" * 321, None, "frame_size", 1002),
        ('{"sample_rate": 44100}', None, "metadata", 1003),
        ('{"uuid":"x"}', "[1,2,3]", "malformed", 1002),
    ],
)
async def test_malformed_frames_are_refused_cleanly(harness: Harness, first: str | bytes,
                                                    then: str | bytes | None, label: str,
                                                    code: int) -> None:
    async with make_rig(harness, FreeswitchSettings(token=TOKEN)) as rig:
        module = await rig.connect()
        for data in (first, then):
            if isinstance(data, str):
                await module.ws.send_str(data)
            elif data is not None:
                await module.ws.send_bytes(data)
        await until(lambda: module.ws.closed)
        assert module.ws.close_code == code
        assert harness.value("switchboard_stream_messages_invalid_total",
                             transport="freeswitch", reason=label) == 1
        # The server keeps serving the next client.
        good = await rig.connect()
        await good.ws.send_bytes(bytes(320))
        await until(lambda: harness.ctx.legs)
        for _ in range(3):
            await rig.audio(good, bytes(320))
        assert not good.ws.closed


async def test_oversized_message(harness: Harness) -> None:
    harness.ctx.max_message_bytes = 4096
    async with make_rig(harness, FreeswitchSettings()) as rig:
        module = await rig.connect(query="")
        await module.ws.send_bytes(bytes(320))
        await until(lambda: harness.ctx.legs)
        await module.ws.send_bytes(bytes(6400))
        await until(lambda: module.ws.closed)
        assert module.ws.close_code == 1009
        assert harness.value("switchboard_calls_total", transport="freeswitch",
                             outcome="too_large") == 1


def test_metadata_parsing() -> None:
    assert parse_metadata('{"a": 1, "b": "x", "c": [1, 2]}') == {"a": "1", "b": "x",
                                                                "c": "[1,2]"}
    assert parse_metadata("hello") == {"metadata": "hello"}
    assert parse_metadata("[1]") == {"metadata": "[1]"}
    assert metadata_rate({"rate": "16k"}, 8000) == 16000
    assert metadata_rate({}, 16000) == 16000
    with pytest.raises(MetadataError, match="expected 8000 or 16000"):
        metadata_rate({"sampleRate": "22050"}, 8000)
    with pytest.raises(MetadataError, match="keys"):
        parse_metadata(json.dumps({str(i): i for i in range(100)}))
    with pytest.raises(MetadataError, match="longer than"):
        parse_metadata("x" * 5000)
