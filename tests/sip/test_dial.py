"""`switchboard call` (switchboard.dial): the WAV feeding, recording and reply timing on a
ManualClock, then the real thing: the client against a real `switchboard serve --agent
echo` subprocess, checking the recorded reply against the played WAV."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from media.clock import ManualClock
from media.outbound import OutboundAudio
from pipeline.leg import FRAME_BYTES, PIPELINE_RATE
from switchboard.dial import LEAD_S, CallClient, WavError, load_wav, write_wav
from tests.helpers import EXE, free_port, switchboard

RATE = PIPELINE_RATE


def speechlike(seconds: float = 2.0, rate: int = RATE, lead: float = 0.3,
               tail: float = 0.5) -> np.ndarray:
    """Deterministic voiced 'speech': harmonics on a gliding pitch, 4 Hz syllables."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 150 + 50 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t - np.pi / 2)) ** 1.5
    audio = np.concatenate([np.zeros(int(lead * rate)), voice * envelope * 6000,
                            np.zeros(int(tail * rate))])
    return audio.astype(np.int16)


def save(path: Path, audio: np.ndarray, rate: int = RATE, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(audio.astype("<i2").tobytes())
    return path


def read(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)


def best_lag(played: np.ndarray, recorded: np.ndarray) -> tuple[float, float]:
    """(lag in seconds, normalised correlation) of `played` inside `recorded`."""
    n = len(played) + len(recorded)
    xc = np.fft.irfft(np.fft.rfft(recorded, 2 * n) * np.conj(np.fft.rfft(played, 2 * n)))
    lag = int(np.argmax(xc[: len(recorded)]))
    seg = recorded[lag: lag + len(played)]
    corr = float(np.corrcoef(played[: len(seg)], seg)[0, 1])
    return lag / RATE, corr


# -- WAV loading -----------------------------------------------------------------------------


def test_load_wav_resamples_and_mixes_down(tmp_path: Path) -> None:
    mono8k = save(tmp_path / "a.wav", speechlike(rate=8000), rate=8000)
    frames = load_wav(mono8k)
    assert all(len(f) == FRAME_BYTES for f in frames)
    assert len(frames) == pytest.approx(2.8 / 0.02, abs=2)
    stereo = np.repeat(speechlike(rate=48000), 2)
    frames48 = load_wav(save(tmp_path / "b.wav", stereo, rate=48000, channels=2))
    assert len(frames48) == pytest.approx(140, abs=2)
    pcm = np.frombuffer(b"".join(frames48), "<i2").astype(np.float64)
    ref = speechlike().astype(np.float64)
    _, corr = best_lag(ref, pcm)
    assert corr > 0.99


def test_load_wav_errors(tmp_path: Path) -> None:
    with pytest.raises(WavError, match="cannot read"):
        load_wav(tmp_path / "missing.wav")
    path = tmp_path / "u8.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(bytes(800))
    with pytest.raises(WavError, match="8-bit samples"):
        load_wav(path)


# -- the client handler on a manual clock ----------------------------------------------------


class Leg:
    """A call leg whose outbound queue is the real OutboundAudio at 16 kHz."""

    def __init__(self) -> None:
        self.queue = OutboundAudio(RATE)
        self.digits = ""
        self.sent: list[bytes] = []

    def send_audio(self, pcm: bytes, rate: int, mark: str | None = None) -> None:
        self.queue.push(pcm, rate, mark)

    def clear_audio(self) -> None:
        self.queue.clear()

    def queued_seconds(self) -> float:
        return self.queue.queued_seconds()

    def send_dtmf(self, digits: str) -> None:
        if digits == "x":
            raise ValueError("bad digit")
        self.digits += digits

    async def transfer(self, target: str) -> None: ...

    async def hangup(self, reason: str = "normal") -> None: ...


async def test_client_feeds_in_real_time_and_times_the_reply() -> None:
    clock = ManualClock()
    frames = load_wav_frames()
    client = CallClient(frames, clock, dtmf="12")
    leg = Leg()
    await client.on_start(leg)
    assert client.play_seconds == pytest.approx(len(frames) * 0.02)
    reply = np.full(320, 3000, dtype="<i2").tobytes()
    silence = bytes(FRAME_BYTES)
    # The far end answers 0.4 s after our speech ends, for 0.5 s.
    answer_at: float | None = None
    for tick in range(len(frames) + 60):
        clock.set(tick * 0.02)
        client.on_frame(reply if answer_at is not None and
                        answer_at <= clock.now() < answer_at + 0.5 else silence)
        assert leg.queued_seconds() <= LEAD_S + 1e-9  # never more than a few frames ahead
        frame, marks = leg.queue.pop()  # the pacer sends one frame per tick
        if frame is not None:
            leg.sent.append(frame)
        for mark in marks:
            client.on_mark(mark, True)
        if answer_at is None and "speech_end" in client.marks:
            answer_at = client.marks["speech_end"] + 0.4
    assert list(client.marks) == ["speech_start", "speech_end", "play_end"]
    timings = client.timings()
    assert timings["speech_s"] == pytest.approx(2.0, abs=0.1)  # the quiet edges are not speech
    assert timings["reply_latency_s"] == pytest.approx(0.4, abs=0.021)
    assert timings["reply_end_lag_s"] == pytest.approx(0.88, abs=0.021)
    assert timings["first_reply_s"] == pytest.approx(timings["speech_s"] + 0.4, abs=0.021)
    assert leg.digits == "12"  # sent once our speech was over
    assert len(client.recording) == (len(frames) + 60) * FRAME_BYTES
    played = np.frombuffer(b"".join(leg.sent), "<i2").astype(np.float64)
    _, corr = best_lag(np.frombuffer(b"".join(frames), "<i2").astype(np.float64), played)
    assert corr > 0.99  # what went out is the WAV


async def test_client_without_speech_or_reply() -> None:
    clock = ManualClock()
    client = CallClient([], clock, dtmf="x")
    await client.on_start(Leg())
    assert client.dtmf_error == "bad digit"
    client.on_frame(bytes(FRAME_BYTES))
    assert client.timings() == {"reply_latency_s": None, "first_reply_s": None,
                                "reply_end_lag_s": None, "speech_s": None}
    await client.on_end("remote_bye")
    await client.wait_ended()
    assert client.ended == "remote_bye"


def load_wav_frames() -> list[bytes]:
    pcm = speechlike().tobytes()
    return [pcm[i: i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


def test_write_wav_round_trip(tmp_path: Path) -> None:
    write_wav(tmp_path / "r.wav", b"\x01\x00" * 320)
    assert read(tmp_path / "r.wav").tolist() == [1.0] * 320


# -- against a real server -------------------------------------------------------------------


def call_cli(*args: str, timeout: float = 60.0) -> tuple[int, dict[str, object]]:
    """Run the client as a user does; its one JSON line on stdout."""
    proc = subprocess.run([EXE, "call", *args],
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"stdout: {proc.stdout!r} stderr: {proc.stderr[-2000:]}"
    return proc.returncode, json.loads(lines[0])


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "opus"])
def test_call_echo_agent_records_the_played_wav(tmp_path: Path, codec: str) -> None:
    played = speechlike()
    wav = save(tmp_path / "in.wav", played)
    out = tmp_path / "out.wav"
    with switchboard(tmp_path, "--agent", "echo") as server:
        code, result = call_cli(f"sip:echo@127.0.0.1:{server.sip_port}", "--play", str(wav),
                                "--record", str(out), "--codec", codec, "--tail", "1.5")
    assert code == 0, result
    assert result["status"] == "completed" and result["sip_status"] == 200
    assert result["codec"].upper() == codec.upper()  # type: ignore[union-attr]
    assert 0 < result["setup_time_s"] < 2.0  # type: ignore[operator]
    assert result["hangup"] == "local" and result["end_reason"] == "hangup"
    assert result["duration_s"] == pytest.approx(2.8 + 1.5, abs=0.3)
    assert result["speech_s"] == pytest.approx(2.0, abs=0.1)
    # The echo agent returns our audio 0.3 s later, plus both jitter buffers and codecs.
    assert 0.3 < result["first_reply_s"] < 1.2  # type: ignore[operator]
    assert 0.3 < result["reply_end_lag_s"] < 1.2  # type: ignore[operator]
    assert result["reply_latency_s"] is not None
    sent, received = result["packets_sent"], result["packets_received"]
    assert sent == pytest.approx(4.3 / 0.02, rel=0.1)
    assert received == pytest.approx(sent, rel=0.1)
    assert result["packets_lost"] == 0 and result["concealed"] == 0  # loopback
    assert result["jitter_ms"] < 20  # type: ignore[operator]
    assert result["recorded_s"] == pytest.approx(result["duration_s"], abs=0.2)
    recorded = read(out)
    lag, corr = best_lag(played.astype(np.float64), recorded)
    # The recording starts as our audio does, so the WAV sits one round trip into it.
    assert lag == pytest.approx(result["first_reply_s"], abs=0.1)
    assert corr > (0.9 if codec != "opus" else 0.5)  # opus keeps the sound, not the waveform


@pytest.mark.slow
def test_call_sends_dtmf_and_the_echo_agent_returns_it(tmp_path: Path) -> None:
    with switchboard(tmp_path, "--agent", "echo") as server:
        code, result = call_cli(f"sip:echo@127.0.0.1:{server.sip_port}", "--dtmf", "5#",
                                "--seconds", "1.5")
    assert code == 0, result
    assert result["dtmf_sent"] == "5#" and result["dtmf_received"] == "5#"  # RFC 4733 both ways
    assert result["speech_s"] is None and result["reply_latency_s"] is None
    assert result["duration_s"] == pytest.approx(1.5, abs=0.3)


@pytest.mark.slow
def test_call_failures_exit_non_zero(tmp_path: Path) -> None:
    code, result = call_cli("not a uri")
    assert code == 1 and "not a SIP URI" in str(result["error"])
    code, result = call_cli("sip:echo@127.0.0.1:9", "--play", str(tmp_path / "none.wav"))
    assert code == 1 and "cannot read" in str(result["error"])
    with switchboard(tmp_path, "--agent", "echo",
                     env={"SWITCHBOARD_SIP__MAX_CALLS": "1",
                          "SWITCHBOARD_SIP__TRUSTED_NETWORKS": "[10.9.9.0/24]"}) as server:
        code, result = call_cli(f"sip:echo@127.0.0.1:{server.sip_port}", "--seconds", "1")
    assert code == 1 and result["status"] == "failed" and result["sip_status"] == 403


@pytest.mark.slow
def test_call_answers_a_407_with_user_and_password(tmp_path: Path) -> None:
    from tests.sip.test_registration import start_sipp

    port, rtp = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    sipp = start_sipp("uas_auth_refer.xml", port, tmp_path, "-rtp_echo", "-mp", str(rtp),
                      "-mi", "127.0.0.1")
    try:
        time.sleep(0.3)
        code, result = call_cli(f"sip:+15551234@127.0.0.1:{port}", "--user", "alice",
                                "--password", "s3cret", "--seconds", "1.5")
        assert code == 0, result
        assert result["status"] == "completed" and result["sip_status"] == 200
        assert result["codec"] == "PCMU" and result["packets_received"] > 20  # type: ignore[operator]
    finally:
        sipp.kill()  # the scenario waits for a REFER this call never sends
        sipp.wait()
