"""The stream doors inside a real `switchboard serve --agent echo` process: the Twilio
webhook and stream, the FreeSWITCH WebSocket and the AudioSocket server answer, share the
process's pacer and metrics, and a signal shuts them down cleanly."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import aiohttp

from streams.audiosocket_frames import FrameReader, Kind, audio_frame, hangup_frame, uuid_frame
from streams.twilio_messages import Connected, Media, Start, Stop
from tests.helpers import free_port, switchboard

SID = "MZ00000000000000000000000000000009"
CALL = "CA00000000000000000000000000000009"


async def _twilio_call(http_port: int) -> list[bytes]:
    async with aiohttp.ClientSession() as session:
        form = {"CallSid": CALL, "From": "+15550001111", "To": "+15550002222"}
        async with session.post(f"http://127.0.0.1:{http_port}/twilio/voice?agent=echo",
                                data=form) as resp:
            assert resp.status == 200
            stream = ET.fromstring(await resp.text()).find("./Connect/Stream")
        assert stream is not None and stream.get("url", "").endswith("/twilio/stream")
        params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
        async with session.ws_connect(f"ws://127.0.0.1:{http_port}/twilio/stream") as ws:
            await ws.send_str(Connected().to_json())
            await ws.send_str(Start(SID, CALL, "AC1", 1, ("inbound",), params).to_json())
            got: list[bytes] = []
            loud = bytes([0x10, 0x90] * 80)  # a loud μ-law square-ish wave
            for i in range(100):  # 2 s at real time: the server's clock is real
                await ws.send_str(Media(SID, i + 2, i + 1, i * 20, loud).to_json())
                await asyncio.sleep(0.02)
                while True:
                    try:
                        msg = await ws.receive(timeout=0.001)
                    except TimeoutError:
                        break
                    if msg.type is aiohttp.WSMsgType.TEXT:
                        data = json.loads(msg.data)
                        if data["event"] == "media":
                            got.append(base64.b64decode(data["media"]["payload"]))
            await ws.send_str(Stop(SID, 200).to_json())
    return got


async def _audiosocket_call(port: int) -> list[Kind]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(bytes(uuid_frame(uuid.uuid4())))
    kinds: list[Kind] = []
    framer = FrameReader(65535)
    for _ in range(25):
        writer.write(bytes(audio_frame(bytes(320))))
        await asyncio.sleep(0.02)
    writer.write(bytes(hangup_frame()))
    await writer.drain()
    while data := await reader.read(65536):
        kinds += [f.kind for f in framer.feed(data)]
    writer.close()
    return kinds


def test_doors_in_the_running_app(tmp_path: Path) -> None:
    as_port = free_port()
    env = {"SWITCHBOARD_STREAMS__AUDIOSOCKET__ENABLED": "true",
           "SWITCHBOARD_STREAMS__AUDIOSOCKET__LISTEN": "127.0.0.1",
           "SWITCHBOARD_STREAMS__AUDIOSOCKET__PORT": str(as_port)}
    with switchboard(tmp_path, "--agent", "echo", env=env) as server:
        got = asyncio.run(_twilio_call(server.http_port))
        assert got and all(len(p) == 160 for p in got)  # the echo, in whole frames
        kinds = asyncio.run(_audiosocket_call(as_port))
        assert kinds and set(kinds) == {Kind.SLIN_8K}  # paced silence/echo, no hang-up back
        metrics = server.metrics()
        assert 'switchboard_calls_total{outcome="remote_stop",transport="twilio"} 1.0' in metrics
        assert ('switchboard_calls_total{outcome="remote_hangup",transport="audiosocket"} 1.0'
                in metrics)
        server.proc.terminate()
        assert server.proc.wait(timeout=20) == 0, server.log()
