"""Audio quality of the whole inbound path, measured with narrowband PESQ (ITU-T P.862).

A real speech clip (the packaged Piper voice, see conftest) is encoded, sent as RTP every
20 ms through the simulated network and received by InboundMedia exactly as a call leg
does (push at arrival, pull every 20 ms). The 16 kHz output is brought back to 8 kHz,
aligned to the reference by cross-correlation (the jitter buffer adds delay) and scored.

Every condition runs with three fixed seeds; the assertion is on their mean, because
one 8.5 s clip has only ~430 frames and the figure of a single seed depends on which
few frames the dice hit. The figures are printed (pytest -s) and listed in the report.
"""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import scipy.signal
import soxr
from pesq import pesq

from media.g711 import alaw_encode, ulaw_encode
from media.inbound import InboundMedia
from media.netsim import NetConditions, NetSim
from media.opus import OpusEncoder
from media.rtp import RtpPacket

pytestmark = pytest.mark.slow

SEEDS = (1, 2, 3)
CONDITIONS = {
    "clean": NetConditions(delay=0.03),
    "5% loss": NetConditions(delay=0.03, loss=0.05),
    # 40 ms jitter: a half-normal extra delay with sigma 40 ms (mean 32 ms, p95 78 ms).
    "10% loss + 40 ms jitter": NetConditions(delay=0.03, loss=0.10, jitter=0.04),
}
G711_FLOOR = {"clean": 4.0, "5% loss": 3.2, "10% loss + 40 ms jitter": 2.7}
# Opus is reported, not specified; these floors only catch a broken decode path.
OPUS_SANITY = {"clean": 3.5, "5% loss": 3.0, "10% loss + 40 ms jitter": 2.5}


def _packets(codec: str, clip: dict[int, np.ndarray]) -> list[RtpPacket]:
    if codec == "opus":
        pcm, size, ticks, pt = clip[16000].tobytes(), 640, 960, 111
        encode = OpusEncoder(16000).encode
    else:
        pcm, size, ticks, pt = clip[8000].tobytes(), 320, 160, 0 if codec == "PCMU" else 8
        encode = ulaw_encode if codec == "PCMU" else alaw_encode
    return [
        RtpPacket(
            pt,
            (4000 + i) & 0xFFFF,
            90_000 + i * ticks,
            0xC0FFEE,
            encode(pcm[off : off + size]),
            i == 0,
        )
        for i, off in enumerate(range(0, len(pcm) - size + 1, size))
    ]


def _receive(
    codec: str, packets: list[RtpPacket], conditions: NetConditions, seed: int
) -> np.ndarray:
    """What the call leg hands the pipeline: 16 kHz PCM, pulled every 20 ms."""
    net = NetSim(conditions, seed)
    arrivals = net.run((net.send_time(i), bytes(p)) for i, p in enumerate(packets))
    media = InboundMedia(codec)
    frames: list[bytes] = []
    i = 0
    for k in range(len(packets) + 40):
        now = 0.013 + k * 0.02
        while i < len(arrivals) and arrivals[i][0] <= now:
            media.push(RtpPacket.parse(arrivals[i][1]), arrivals[i][0])
            i += 1
        frames.append(media.pull(now))
    return np.frombuffer(b"".join(frames), dtype="<i2").astype(np.float64)


def _aligned(reference: np.ndarray, output: np.ndarray) -> np.ndarray:
    """Cut the output where it best matches the reference (removes the buffer delay)."""
    corr = scipy.signal.correlate(output, reference, mode="full", method="fft")
    lag = max(0, int(np.argmax(corr)) - (len(reference) - 1))
    cut = output[lag : lag + len(reference)]
    return np.concatenate([cut, np.zeros(len(reference) - len(cut))])


def _pesq_nb(
    codec: str, clip: dict[int, np.ndarray], conditions: NetConditions, seed: int
) -> float:
    out16 = _receive(codec, _packets(codec, clip), conditions, seed)
    reference = clip[8000].astype(np.float64)
    degraded = _aligned(reference, soxr.resample(out16, 16000, 8000))
    return float(pesq(8000, reference, degraded, "nb"))


def _scores(codec: str, clip: dict[int, np.ndarray], condition: str) -> list[float]:
    scores = [_pesq_nb(codec, clip, CONDITIONS[condition], seed) for seed in SEEDS]
    print(
        f"\nPESQ-NB {codec:5s} {condition:24s} "
        + "  ".join(f"seed {s}: {v:.3f}" for s, v in zip(SEEDS, scores, strict=True))
        + f"  mean {statistics.mean(scores):.3f}"
    )
    return scores


def test_clip_is_real_speech_of_the_right_length(speech_clip: dict[int, np.ndarray]) -> None:
    assert 8.0 <= len(speech_clip[8000]) / 8000 <= 10.0
    assert len(speech_clip[16000]) == pytest.approx(2 * len(speech_clip[8000]), abs=2)
    assert 1000 < np.sqrt(np.mean(speech_clip[8000].astype(np.float64) ** 2)) < 12000


@pytest.mark.parametrize("condition", list(CONDITIONS))
@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_g711_through_the_network_and_jitter_buffer(
    speech_clip: dict[int, np.ndarray], codec: str, condition: str
) -> None:
    scores = _scores(codec, speech_clip, condition)
    assert statistics.mean(scores) >= G711_FLOOR[condition]


@pytest.mark.parametrize("condition", list(CONDITIONS))
def test_opus_through_the_network_and_jitter_buffer(
    speech_clip: dict[int, np.ndarray], condition: str
) -> None:
    scores = _scores("opus", speech_clip, condition)
    assert statistics.mean(scores) >= OPUS_SANITY[condition]


def test_concealment_is_worth_it(
    speech_clip: dict[int, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same 5 % loss with concealment switched off (silence for every lost frame)
    must score clearly worse: the PLC is doing the work, not the dice."""
    from media.plc import G711Plc

    conditions = CONDITIONS["5% loss"]
    with_plc = statistics.mean(_pesq_nb("PCMU", speech_clip, conditions, s) for s in SEEDS)
    original = G711Plc.conceal

    def silence(self: G711Plc, samples: int | None = None) -> bytes:
        original(self, samples)  # keep the state machine as it is
        return bytes(2 * (samples or 160))

    monkeypatch.setattr(G711Plc, "conceal", silence)
    without = statistics.mean(_pesq_nb("PCMU", speech_clip, conditions, s) for s in SEEDS)
    print(f"\nPESQ-NB PCMU 5% loss: with PLC {with_plc:.3f}, zero-fill {without:.3f}")
    assert with_plc > without + 0.3
