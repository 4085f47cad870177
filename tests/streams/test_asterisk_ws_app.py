"""The chan_websocket door inside a real `switchboard serve --agent echo` process: enabled
by config, it takes Asterisk's connection (subprotocol `media`, Basic auth), echoes the
caller in whole μ-law frames, takes DTMF, counts the call under transport asterisk_ws,
and refuses a wrong password."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import aiohttp
import pytest

from media.g711 import ulaw_decode, ulaw_encode
from streams.asterisk_ws import PATH, SUBPROTOCOL
from tests.helpers import switchboard

TOKEN = "app-test-token"


def _tone_frame(i: int) -> bytes:
    samples = [int(8000 * math.sin(2 * math.pi * 440 * (i * 160 + n) / 8000)) for n in range(160)]
    return ulaw_encode(b"".join(s.to_bytes(2, "little", signed=True) for s in samples))


async def _call(http_port: int) -> tuple[list[bytes], list[str], int | None]:
    url = f"ws://127.0.0.1:{http_port}{PATH}?caller=1001&callee=5000"
    auth = {"Authorization": aiohttp.encode_basic_auth("asterisk", TOKEN)}
    media: list[bytes] = []
    text: list[str] = []
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError):
            bad = {"Authorization": aiohttp.encode_basic_auth("asterisk", "wrong")}
            await session.ws_connect(url, protocols=(SUBPROTOCOL,), headers=bad)
        async with session.ws_connect(url, protocols=(SUBPROTOCOL,), headers=auth) as ws:
            assert ws.protocol == SUBPROTOCOL
            await ws.send_str(json.dumps({
                "event": "MEDIA_START", "connection_id": "c0ffee", "channel_id": "1712.7",
                "channel": "WebSocket/switchboard/0x1", "format": "ulaw",
                "optimal_frame_size": 160, "ptime": 20, "channel_variables": {}}))
            for i in range(100):  # 2 s at real time: the server's clock is real
                await ws.send_bytes(_tone_frame(i) if i < 50 else b"\xff" * 160)
                if i == 60:
                    await ws.send_str(json.dumps({"event": "DTMF_END", "digit": "5"}))
                await asyncio.sleep(0.02)
                while True:
                    try:
                        msg = await ws.receive(timeout=0.001)
                    except TimeoutError:
                        break
                    if msg.type is aiohttp.WSMsgType.BINARY:
                        media.append(msg.data)
                    elif msg.type is aiohttp.WSMsgType.TEXT:
                        text.append(msg.data)
                    else:
                        break
            await ws.close()  # Asterisk hangs the channel up
            return media, text, ws.close_code


def test_asterisk_ws_door_in_the_running_app(tmp_path: Path) -> None:
    env = {"SWITCHBOARD_STREAMS__ASTERISK_WS__ENABLED": "true",
           "SWITCHBOARD_STREAMS__ASTERISK_WS__TOKEN": TOKEN}
    with switchboard(tmp_path, "--agent", "echo", env=env) as server:
        media, text, _ = asyncio.run(_call(server.http_port))
        assert media and all(len(m) == 160 for m in media)  # whole 20 ms μ-law frames
        loudest = max(max(abs(s) for s in memoryview(ulaw_decode(m)).cast("h")) for m in media)
        assert loudest > 2000  # the echoed tone, not just silence
        assert text == []  # no barge-in, no hang-up from the echo agent: no commands
        ended = 'switchboard_calls_active{transport="asterisk_ws"} 0.0'
        for _ in range(100):  # the server may still be closing the call: wait, bounded
            metrics = server.metrics()
            if ended in metrics:
                break
            time.sleep(0.05)
        assert ('switchboard_calls_total{outcome="remote_hangup",transport="asterisk_ws"} 1.0'
                in metrics), metrics
        assert ('switchboard_dtmf_digits_total{method="text",transport="asterisk_ws"} 1.0'
                in metrics)
        assert ('switchboard_calls_rejected_total{reason="forbidden",transport="asterisk_ws"} 1.0'
                in metrics)
        server.proc.terminate()
        assert server.proc.wait(timeout=20) == 0, server.log()
