"""EchoHandler: the caller's audio comes back, delayed by the configured amount."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.echo import EchoHandler
from pipeline.leg import FRAME_BYTES, CallInfo


class RecordingLeg:
    def __init__(self) -> None:
        self.info = CallInfo(call_id="echo-test", transport="sip")
        self.sent: list[tuple[bytes, int, str | None]] = []
        self.dtmf: list[str] = []

    def send_audio(self, pcm: bytes, rate: int, mark: str | None = None) -> None:
        self.sent.append((pcm, rate, mark))

    def clear_audio(self) -> None:
        pass

    def queued_seconds(self) -> float:
        return 0.0

    def send_dtmf(self, digits: str) -> None:
        self.dtmf.append(digits)

    async def transfer(self, target: str) -> None:
        raise AssertionError("not used")

    async def hangup(self, reason: str = "normal") -> None:
        pass


def sweep(seconds: float, rate: int = 16000, f0: float = 300.0, f1: float = 3000.0) -> np.ndarray:
    """A linear chirp: one sharp autocorrelation peak, unlike a steady tone."""
    t = np.arange(round(seconds * rate)) / rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds))
    return (8000 * np.sin(phase)).astype("<i2")


def frames_of(samples: np.ndarray) -> list[bytes]:
    data = samples.tobytes()
    data += bytes(-len(data) % FRAME_BYTES)
    return [data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)]


def peak_lag(reference: np.ndarray, signal: np.ndarray) -> int:
    corr = np.correlate(signal.astype(np.float64), reference.astype(np.float64), mode="valid")
    return int(np.argmax(corr))


@pytest.mark.parametrize("delay", [0.2, 0.3, 0.5])
async def test_tone_comes_back_delayed(delay: float) -> None:
    leg = RecordingLeg()
    echo = EchoHandler(delay=delay)
    await echo.on_start(leg)
    burst = sweep(0.4)
    silence = np.zeros(16000, dtype="<i2")
    stream = np.concatenate([np.zeros(1600, dtype="<i2"), burst, silence])
    for frame in frames_of(stream):
        echo.on_frame(frame)
    assert all(rate == 16000 and mark is None for _, rate, mark in leg.sent)
    assert len(leg.sent) == echo.frames_in - echo.delay_frames
    # Output timeline: frame k of the output is played at tick k + delay_frames.
    played = np.concatenate(
        [np.zeros(echo.delay_frames * 320, dtype="<i2")]
        + [np.frombuffer(pcm, dtype="<i2") for pcm, _, _ in leg.sent]
    )
    lag = peak_lag(burst, played) - 1600
    assert lag == round(delay * 16000)


async def test_zero_delay_echoes_at_once() -> None:
    leg = RecordingLeg()
    echo = EchoHandler(delay=0)
    await echo.on_start(leg)
    frame = b"\x01\x00" * 320
    echo.on_frame(frame)
    assert leg.sent == [(frame, 16000, None)]


async def test_frames_before_start_and_after_end_are_ignored() -> None:
    leg = RecordingLeg()
    echo = EchoHandler(delay=0)
    echo.on_frame(bytes(FRAME_BYTES))
    await echo.on_start(leg)
    await echo.on_end("bye")
    echo.on_frame(bytes(FRAME_BYTES))
    assert leg.sent == [] and echo.ended == "bye"


async def test_dtmf_is_echoed() -> None:
    leg = RecordingLeg()
    echo = EchoHandler()
    await echo.on_start(leg)
    echo.on_dtmf("5")
    echo.on_dtmf("#")
    assert leg.dtmf == ["5", "#"] and echo.digits == ["5", "#"]
    quiet = EchoHandler(echo_dtmf=False)
    await quiet.on_start(leg)
    quiet.on_dtmf("1")
    assert leg.dtmf == ["5", "#"]


def test_rejects_bad_delay_and_frame_size() -> None:
    with pytest.raises(ValueError, match=r"0\.\.10 s"):
        EchoHandler(delay=-1)
    echo = EchoHandler()
    echo.leg = RecordingLeg()
    with pytest.raises(ValueError, match="640 bytes"):
        echo.on_frame(bytes(100))
