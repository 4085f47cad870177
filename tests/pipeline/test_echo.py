"""EchoHandler: the caller's audio comes back, delayed by the configured amount."""

from __future__ import annotations

import asyncio
import random
import socket

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from media import g711
from media.clock import ManualClock
from media.pacer import Pacer
from media.rtp import RtpPacket
from pipeline.echo import EchoHandler
from pipeline.leg import FRAME_BYTES, CallInfo
from pipeline.metrics import Metrics
from sip.ports import PortAllocator
from sip.rtp_session import MediaParams, RtpSession


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


# -- end to end over RTP: PCMU in, jitter buffer, 16 kHz, echo, resample, PCMU out ------


class SessionLeg(RecordingLeg):
    """The part of a SIP call leg the echo agent uses, straight onto an RtpSession."""

    def __init__(self, session: RtpSession) -> None:
        super().__init__()
        self.session = session

    def send_audio(self, pcm: bytes, rate: int, mark: str | None = None) -> None:
        self.session.send_audio(pcm, rate, mark)


async def echo_lag_over_rtp(delay: float) -> tuple[float, float]:
    """Seconds from a chirp sent in to its echo coming back, and the normalised peak."""
    clock = ManualClock(50.0)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    echo = EchoHandler(delay=delay)
    session = await RtpSession.open(
        MediaParams("127.0.0.1", peer.getsockname()[1], dtmf_payload_type=101),
        local_host="127.0.0.1", ports=PortAllocator(42000, 42999), clock=clock,
        pacer=Pacer(clock), metrics=Metrics(CollectorRegistry()), on_frame=echo.on_frame,
        rng=random.Random(3),
    )
    await echo.on_start(SessionLeg(session))
    # Up to 1.5 kHz: the path's fractional-sample delay would decorrelate the top octave.
    chirp = sweep(0.5, rate=8000, f1=1500.0)
    lead = 25  # packets of silence before the chirp
    sent = np.concatenate([np.zeros(lead * 160, "<i2"), chirp, np.zeros(8000 * 2, "<i2")])
    back: list[bytes] = []
    try:
        for i in range(len(sent) // 160):
            payload = g711.ulaw_encode(sent[i * 160 : (i + 1) * 160].tobytes())
            peer.sendto(bytes(RtpPacket(0, i, i * 160, 0xABC, payload)),
                        ("127.0.0.1", session.local_port))
            for _ in range(200):  # one select pass delivers it
                if session.stats.packets_in > i:
                    break
                await asyncio.sleep(0)
            clock.advance(0.02)
            session.tick(i)  # packet i goes out on the tick after packet i came in
            back.append(peer.recv(2048))
    finally:
        session.close()
        peer.close()
        await asyncio.sleep(0)
    played = np.frombuffer(
        b"".join(g711.ulaw_decode(RtpPacket.parse(d).payload) for d in back), dtype="<i2"
    ).astype(np.float64)
    ref = chirp.astype(np.float64)
    corr = np.correlate(played, ref, mode="valid")
    peak = int(np.argmax(corr))
    window = played[peak : peak + len(ref)]
    score = corr[peak] / (np.linalg.norm(ref) * np.linalg.norm(window))
    return (peak - lead * 160) / 8000, float(score)


async def test_echo_over_rtp_comes_back_after_the_configured_delay() -> None:
    base, base_score = await echo_lag_over_rtp(0.0)
    lag, score = await echo_lag_over_rtp(0.3)
    # The media path itself (jitter buffer, 8 -> 16 -> 8 kHz filters) adds a little...
    assert 0.0 < base < 0.15
    # ...and the echo delay adds exactly its frames on top.
    assert lag - base == pytest.approx(0.3, abs=1 / 8000)
    assert base_score > 0.9 and score > 0.9
