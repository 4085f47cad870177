"""A real phone call to the conversation agent on the real packaged models.

A PJSIP user agent (pjsua2) calls `switchboard serve` (default agent: conversation),
plays a spoken question as 8 kHz speech, and records what the bot says. The reply is
transcribed with the same packaged Whisper model; the server's /metrics must show every
stage. A second call talks over the greeting: the bot's audio must stop (barge-in).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import switchboard

pytestmark = pytest.mark.slow
PEER = Path(__file__).with_name("pjsua_peer.py")
RATE = 8000


def say(path: Path, text: str, lead_s: float, tail_s: float = 0.0) -> float:
    """espeak-ng speech as a phone carries it (8 kHz mono), after `lead_s` of silence.
    Returns the time (s) at which the speech ends in the file."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-s", "140", "-w", str(raw), text], check=True,
                   capture_output=True)
    subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(path),
                    "pad", str(lead_s), str(tail_s)], check=True, capture_output=True)
    with wave.open(str(path)) as w:
        return w.getnframes() / RATE - tail_s


def read_pcm(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


def level_dbfs(pcm: np.ndarray, rate: int, start: float, end: float) -> float:
    seg = pcm[int(start * rate):int(end * rate)].astype(np.float64)
    rms = np.sqrt(np.mean(seg * seg)) if len(seg) else 0.0
    return 20 * np.log10(max(rms, 1e-3) / 32768)


def call(server_port: int, play: Path, record: Path, seconds: float) -> dict:
    out = subprocess.run(
        [sys.executable, str(PEER), "--uri", f"sip:bot@127.0.0.1:{server_port}",
         "--play", str(play), "--record", str(record), "--seconds", str(seconds)],
        capture_output=True, text=True, timeout=seconds + 60)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def stage_count(metrics: str, stage: str) -> float:
    m = re.search(rf'switchboard_stage_duration_seconds_count\{{stage="{stage}"\}} (\S+)',
                  metrics)
    return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module")
def whisper():
    from pipeline.asr import WhisperAsr
    return WhisperAsr()


def test_a_spoken_question_gets_a_spoken_answer(tmp_path, whisper):
    question, reply = tmp_path / "question.wav", tmp_path / "reply.wav"
    # Let the greeting (about 3 s) finish before asking, as a polite caller does.
    asked_until = say(question, "What time do you open on Saturday?", lead_s=4.0)
    with switchboard(tmp_path) as server:
        result = call(server.sip_port, question, reply, seconds=asked_until + 9)
        metrics = server.metrics()
    assert result["confirmed"] and result["media_active"], result

    pcm, rate = read_pcm(reply)
    greeting = level_dbfs(pcm, rate, 0.3, 2.0)
    assert greeting > -40, f"no greeting heard ({greeting:.1f} dBFS)"
    from scipy.signal import resample_poly
    answer = pcm[int((asked_until + 0.3) * rate):]
    answer16 = resample_poly(answer.astype(np.float64), 16000, rate)
    text = whisper.transcribe(np.clip(answer16, -32768, 32767).astype("<i2").tobytes()).text
    assert re.search(r"[A-Za-z]{2,}.*[A-Za-z]{2,}", text), f"no English answer: {text!r}"

    for stage in ("asr", "llm_first_token", "tts_first_audio"):
        assert stage_count(metrics, stage) >= 1, (stage, metrics)
    assert re.search(r'switchboard_response_latency_seconds_count\{transport="sip"\} [1-9]',
                     metrics)


def test_talking_over_the_greeting_stops_the_bot(tmp_path):
    interrupt, reply = tmp_path / "interrupt.wav", tmp_path / "reply.wav"
    onset = 0.8
    spoken_until = say(interrupt, "Wait, wait, I need to talk to a person please.",
                       lead_s=onset)
    with switchboard(tmp_path) as server:
        result = call(server.sip_port, interrupt, reply, seconds=spoken_until + 3)
        metrics = server.metrics()
    assert result["confirmed"], result
    pcm, rate = read_pcm(reply)
    before = level_dbfs(pcm, rate, 0.2, onset)
    # Confirmed onset needs 240 ms of speech; allow a generous 600 ms more for the
    # path both ways. Until the caller stops talking nothing new may be said.
    after = level_dbfs(pcm, rate, onset + 0.85, spoken_until)
    assert before > -40, f"the greeting was not playing ({before:.1f} dBFS)"
    assert after < before - 25, f"the bot kept talking: {before:.1f} -> {after:.1f} dBFS"
    assert re.search(r'switchboard_bargeins_total\{transport="sip"\} [1-9]', metrics), metrics
