"""Faults in the media: the caller's RTP stops without a BYE; a Twilio media-stream
WebSocket closed in the middle of the caller's words.

Each runs a real `switchboard serve` (conversation agent on the packaged Whisper and
Piper, the fake Ollama over HTTP for the answer). The call must end cleanly (BYE from
the server, or the stream's leg closed), the process stay up, the counters and the log
say why, the RTP port and the call's tasks be given back, and the record keep every turn
that was completed before the fault.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import wave
from collections.abc import Callable
from pathlib import Path

import pytest

from loadtest.pcap import pcm_to_rtp, write_rtp_pcap
from tests.faults.common import ROOT, get, metric, ollama_env, record_of, wait_for
from tests.helpers import free_port, switchboard
from tests.pipeline.fake_ollama import FakeOllama

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                       reason="espeak-ng and sox make the spoken question"),
]


def speech_pcap(wav: Path, path: Path, listen_s: float) -> float:
    """The caller's side as RTP: the question WAV, then `listen_s` of silence (the caller
    listening to the answer), then nothing more. Returns the seconds of RTP."""
    with wave.open(str(wav)) as w:
        assert (w.getframerate(), w.getsampwidth()) == (8000, 2)
        pcm = w.readframes(w.getnframes()) + b"\0\0" * int(8000 * listen_s)
    write_rtp_pcap(path, pcm_to_rtp(pcm, "PCMU"))
    return len(pcm) / 16000


@pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp (sip-tester) not installed")
def test_rtp_stops_without_a_bye(tmp_path: Path, ollama: FakeOllama, question: Path) -> None:
    seconds = speech_pcap(question, tmp_path / "speech.pcap", listen_s=6.0)
    env = {**ollama_env(ollama, 44900), "SWITCHBOARD_SIP__MEDIA_TIMEOUT": "3",
           "SWITCHBOARD_SIP__TRANSPORTS": "[udp]"}
    with switchboard(tmp_path, env=env) as server:
        sipp = subprocess.run(
            ["sipp", "-sf", str(ROOT / "loadtest" / "sipp" / "uac_rtp_stops.xml"), "-m", "1",
             "-t", "u1", "-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_port()),
             "-timeout", f"{int(seconds) + 60}s", "-timeout_error", "-trace_msg",
             "-message_file", "messages.log", "-nostdin", f"127.0.0.1:{server.sip_port}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=seconds + 90)
        messages = (tmp_path / "messages.log").read_text(errors="replace")
        # SIPp got the server's BYE (it waits for nothing else) and answered it.
        assert sipp.returncode == 0, sipp.stdout[-3000:] + messages[-3000:]
        assert "BYE sip:" in messages
        call_id = next(line.split(":", 1)[1].strip() for line in messages.splitlines()
                       if line.lower().startswith("call-id:"))
        call = wait_for("the call's record", lambda: record_of(server, call_id))
        text = server.metrics()
        assert server.proc.poll() is None
        log = server.log()
    assert metric(text, "switchboard_calls_total", outcome="media_timeout") == 1, text
    assert metric(text, "switchboard_calls_active") == 0
    assert metric(text, "switchboard_rtp_ports_in_use") == 0
    assert f"call {call_id} ending: media_timeout" in log, log[-3000:]
    # The turn completed before the network dropped is in the record.
    assert (call["outcome"], call["cause"]) == ("media_timeout", "media_timeout"), call
    assert call["turn_count"] == 1 and call["turns"][0]["outcome"] == "answered", call
    assert call["turns"][0]["answer"] == "We open at nine on Saturday."


SID, CALL, ACCOUNT = ("MZ" + "0" * 31 + "7", "CA" + "0" * 31 + "7", "AC" + "0" * 31 + "7")


def ulaw_frames(wav: Path) -> list[bytes]:
    """The WAV (8 kHz int16) as 20 ms μ-law frames, as Twilio carries the caller."""
    import numpy as np

    from media.g711 import ulaw_encode

    with wave.open(str(wav)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % 160, "<i2")])
    return [ulaw_encode(pcm[i:i + 160].tobytes()) for i in range(0, len(pcm), 160)]


async def twilio_caller(url: str, frames: list[bytes], turn_done: Callable[[], bool],
                        cut_after: int) -> dict[str, int]:
    """Twilio's side of a stream: the question in real time, silence until the answer's
    turn is in the record (marks echoed as Twilio does once audio has played), then the
    question again, cut off after `cut_after` frames of it by closing the WebSocket
    without a `stop`. Returns what came back."""
    import aiohttp

    from streams.twilio_messages import Connected, Mark, Media, MediaFormat, Start

    got = {"media": 0, "marks": 0}
    seq = 0

    def next_seq() -> int:
        nonlocal seq
        seq += 1
        return seq

    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        async def read() -> None:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                if m.get("event") == "media":
                    got["media"] += 1
                elif m.get("event") == "mark":
                    got["marks"] += 1
                    await ws.send_str(Mark(SID, next_seq(), m["mark"]["name"]).to_json())

        reader = asyncio.ensure_future(read())
        await ws.send_str(Connected().to_json())
        await ws.send_str(Start(SID, CALL, ACCOUNT, next_seq(), ("inbound",), {},
                                MediaFormat()).to_json())
        loop, chunk = asyncio.get_running_loop(), 0
        t0 = loop.time()

        async def send(frame: bytes) -> None:
            nonlocal chunk
            chunk += 1
            await ws.send_str(Media(SID, next_seq(), chunk, (chunk - 1) * 20, frame).to_json())
            await asyncio.sleep(max(0.0, t0 + chunk * 0.02 - loop.time()))  # real time

        for frame in frames:
            await send(frame)
        silence = b"\xff" * 160  # μ-law silence
        for i in range(50 * 20):  # at most 20 s for the answer to be heard and recorded
            await send(silence)
            if i % 25 == 0 and await asyncio.to_thread(turn_done):
                break
        speech = next(i for i, f in enumerate(frames) if f.count(b"\xff") < 100)
        for frame in frames[:speech + cut_after]:  # mid-utterance...
            await send(frame)
        reader.cancel()
    # ...the WebSocket is closed here, without a `stop`, as when the far end goes away.
    return got


def test_websocket_closed_mid_utterance(tmp_path: Path, ollama: FakeOllama,
                                        question: Path) -> None:
    with switchboard(tmp_path, env=ollama_env(ollama, 45000)) as server:
        baseline = metric(server.metrics(), "switchboard_asyncio_tasks")
        url = f"ws://127.0.0.1:{server.http_port}/twilio/stream"

        def turn_done() -> bool:
            code, call = get(server, f"/calls/{CALL}")
            return code == 200 and call["turn_count"] >= 1

        got = asyncio.run(twilio_caller(url, ulaw_frames(question), turn_done, cut_after=40))
        call = wait_for("the stream's record", lambda: record_of(server, CALL))
        text = wait_for("the call's tasks to end", lambda: (
            t if metric(t := server.metrics(), "switchboard_asyncio_tasks") <= baseline
            else None))
        assert server.proc.poll() is None
        log = server.log()
    assert got["media"] > 100 and got["marks"] >= 2, got  # greeting and answer came back
    assert metric(text, "switchboard_calls_total", transport="twilio",
                  outcome="disconnect") == 1, text
    assert metric(text, "switchboard_calls_active") == 0
    assert "Traceback" not in log, log[-3000:]
    # The answered turn is in the record; the words cut off never made a turn.
    assert (call["outcome"], call["cause"], call["transport"]) == (
        "disconnect", "caller", "twilio"), call
    assert call["turn_count"] == 1 and call["turns"][0]["outcome"] == "answered", call
    assert call["turns"][0]["answer"] == "We open at nine on Saturday."
    # The caller was speaking when the stream closed: one more speech onset than ends.
    ends = sum(1 for e in call["events"] if e["event"] == "speech_end")
    assert metric(text, "switchboard_vad_segments_total", transport="twilio") > ends, text
