"""Shared pieces for the stream-door tests.

Time is a ManualClock: the shared pacer ticks only when a test calls `step()`, so a
"real-time" call is replayed frame by frame, as fast as the machine goes, with the
same timeline every run. Sockets are real (aiohttp WebSockets, asyncio TCP on
loopback); `until()` waits (bounded) for the other side to have done something.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import wave
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from media.clock import ManualClock
from media.pacer import Pacer
from media.resample import StreamResampler
from pipeline.echo import EchoHandler
from pipeline.leg import CallHandler, CallInfo, CallLeg
from pipeline.metrics import Metrics
from streams.context import StreamContext

QUESTION = "Hello, what time does the store open tomorrow morning?"


def _resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    r = StreamResampler(rate_in, rate_out)
    pcm = r.process(samples.astype("<i2").tobytes()) + r.flush()
    return np.frombuffer(pcm, dtype="<i2").copy()


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[int, np.ndarray]:
    """A spoken question (espeak-ng), int16 arrays keyed by rate: {8000: ..., 16000: ...}."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed")
    path = tmp_path_factory.mktemp("speech") / "question.wav"
    subprocess.run([exe, "-w", str(path), QUESTION], check=True, capture_output=True)
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return {8000: _resample(samples, rate, 8000), 16000: _resample(samples, rate, 16000)}


def frames(samples: np.ndarray, frame_samples: int) -> list[bytes]:
    data = samples.astype("<i2").tobytes()
    size = frame_samples * 2
    data += bytes(-len(data) % size)
    return [data[i : i + size] for i in range(0, len(data), size)]


def correlation(sent: np.ndarray, received: np.ndarray) -> tuple[int, float]:
    """Lag (in samples) of `sent` inside `received`, and the normalised peak."""
    a = sent.astype(np.float64)
    b = received.astype(np.float64)
    corr = np.correlate(b, a, mode="valid")
    lag = int(np.argmax(corr))
    window = b[lag : lag + len(a)]
    norm = float(np.sqrt(np.dot(a, a) * np.dot(window, window))) or 1.0
    return lag, float(corr[lag] / norm)


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait for the other end of a socket (bounded); time on the ManualClock stands still."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


class Harness:
    """A StreamContext on a ManualClock pacer, with handlers recorded as they are made."""

    def __init__(self, factory: Callable[[CallInfo], CallHandler] | None = None,
                 **limits: float) -> None:
        self.clock = ManualClock(1000.0)
        self.metrics = Metrics(CollectorRegistry())
        self.pacer = Pacer(self.clock)
        self.handlers: list[CallHandler] = []
        self.infos: list[CallInfo] = []
        self._factory = factory or (lambda info: EchoHandler(delay=0.3))
        self.ctx = StreamContext(handler_factory=self._make, metrics=self.metrics,
                                 clock=self.clock, pacer=self.pacer, **limits)  # type: ignore[arg-type]

    def _make(self, info: CallInfo) -> CallHandler:
        handler = self._factory(info)
        self.infos.append(info)
        self.handlers.append(handler)
        return handler

    async def step(self, n: int = 1) -> None:
        """Let n ticks of 20 ms pass, each one run before the next."""
        for _ in range(n):
            target = self.pacer.tick + 1
            self.clock.advance(0.020)
            await until(lambda t=target: self.pacer.tick >= t)  # type: ignore[misc]

    async def idle_until(self, condition: Callable[[], object]) -> None:
        """Let idle timeouts pass until `condition` holds. The clock jumps repeatedly: a
        timer armed just after one jump still expires at the next."""
        async with asyncio.timeout(10.0):
            while not condition():
                self.clock.advance(self.ctx.idle_timeout + 1)
                await asyncio.sleep(0.005)

    def value(self, name: str, **labels: str) -> float:
        v = self.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else v


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    h.pacer.start()
    yield h
    await h.ctx.shutdown(2.0)
    await h.pacer.stop()


class Speaker:
    """A tiny agent: speaks `chunks` (PCM at `rate`, each followed by its mark) when the
    call starts, records marks, and is interrupted (clear_audio) by DTMF '*'."""

    def __init__(self, chunks: list[tuple[bytes, str]], rate: int = 8000) -> None:
        self.chunks = chunks
        self.rate = rate
        self.leg: CallLeg | None = None
        self.marks: list[tuple[str, bool]] = []
        self.digits: list[str] = []
        self.frames = 0
        self.ended: str | None = None

    async def on_start(self, leg: CallLeg) -> None:
        self.leg = leg
        for pcm, mark in self.chunks:
            leg.send_audio(pcm, self.rate, mark=mark)

    def on_frame(self, pcm: bytes) -> None:
        self.frames += 1

    def on_dtmf(self, digit: str) -> None:
        self.digits.append(digit)
        if digit == "*" and self.leg is not None:
            self.leg.clear_audio()

    def on_mark(self, mark: str, played: bool) -> None:
        self.marks.append((mark, played))

    async def on_end(self, reason: str) -> None:
        self.ended = reason


def tone(seconds: float, rate: int = 8000, freq: float = 440.0) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    return (6000 * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()
