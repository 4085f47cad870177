"""Faults in the media: the caller's RTP stops without a BYE; a Twilio media-stream
WebSocket closed in the middle of the caller's words.

Each runs a real `switchboard serve` (conversation agent on the packaged Whisper and
Piper, the fake Ollama over HTTP for the answer). The call must end cleanly (BYE from
the server, or the stream's leg closed), the process stay up, the counters and the log
say why, the RTP port and the call's tasks be given back, and the record keep every turn
that was completed before the fault.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import pytest

from loadtest.pcap import pcm_to_rtp, write_rtp_pcap
from tests.faults.common import ROOT, metric, ollama_env, record_of, wait_for
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
