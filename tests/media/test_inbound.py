from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pytest

from media.g711 import alaw_encode, ulaw_encode
from media.inbound import FRAME_BYTES, InboundError, InboundMedia
from media.l16 import pcm_to_l16_be
from media.opus import OpusEncoder
from media.rtp import RtpPacket

PHASE = 0.007  # the consumer's 20 ms clock is not aligned with the sender's
NET_DELAY = 0.03


def _tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 8000.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amp * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def _encoder(codec: str, rate: int) -> tuple[Callable[[bytes], bytes], int, int, int]:
    """(encode, pcm rate, RTP ticks per 20 ms, payload type)"""
    if codec == "PCMU":
        return ulaw_encode, 8000, 160, 0
    if codec == "PCMA":
        return alaw_encode, 8000, 160, 8
    if codec == "L16":
        return pcm_to_l16_be, rate, rate // 50, 96
    return OpusEncoder(16000).encode, 16000, 960, 111


def _packets(
    codec: str, pcm: bytes, rate: int = 8000, ptime_ms: int = 20, ssrc: int = 77, seq0: int = 0
) -> list[RtpPacket]:
    encode, pcm_rate, ticks, pt = _encoder(codec, rate)
    size = pcm_rate * ptime_ms // 1000 * 2
    ticks = ticks * ptime_ms // 20
    return [
        RtpPacket(pt, (seq0 + i) & 0xFFFF, 1000 + i * ticks, ssrc, encode(pcm[off : off + size]))
        for i, off in enumerate(range(0, len(pcm) - size + 1, size))
    ]


def _run(
    media: InboundMedia,
    packets: Iterable[tuple[float, RtpPacket]],
    seconds: float,
) -> bytes:
    pending = sorted(packets, key=lambda a: a[0])
    out: list[bytes] = []
    i = 0
    for k in range(int(seconds / 0.02)):
        now = PHASE + k * 0.02
        while i < len(pending) and pending[i][0] <= now:
            media.push(pending[i][1], pending[i][0])
            i += 1
        frame = media.pull(now)
        assert len(frame) == FRAME_BYTES
        out.append(frame)
    return b"".join(out)


def _timed(
    packets: list[RtpPacket], ptime_ms: int = 20, start: float = 0.0
) -> list[tuple[float, RtpPacket]]:
    return [(start + i * ptime_ms / 1000 + NET_DELAY, p) for i, p in enumerate(packets)]


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def _peak_hz(x: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


def _frame_rms(pcm: bytes) -> np.ndarray:
    x = _samples(pcm)
    return np.sqrt(np.mean(x[: len(x) // 320 * 320].reshape(-1, 320) ** 2, axis=1))


def test_silence_before_the_first_packet() -> None:
    media = InboundMedia("PCMU")
    assert [media.pull(t * 0.02) for t in range(5)] == [bytes(FRAME_BYTES)] * 5
    assert media.stats.frames == 5
    assert media.stats.jitter.received == 0


@pytest.mark.parametrize(
    ("codec", "rate"),
    [("PCMU", 8000), ("PCMA", 8000), ("L16", 8000), ("L16", 16000), ("opus", 16000)],
)
def test_every_codec_gives_640_byte_16khz_frames_of_the_same_tone(codec: str, rate: int) -> None:
    pcm_rate = 16000 if codec == "opus" else rate
    packets = _packets(codec, _tone(pcm_rate, 2.0), rate)
    media = InboundMedia(codec, rate=rate if codec == "L16" else None)
    out = _samples(_run(media, _timed(packets), 2.5))
    steady = out[int(0.4 * 16000) : int(2.0 * 16000)]
    assert _peak_hz(steady) == pytest.approx(440, abs=5)
    # Level kept within 1 dB (a 8000-amplitude sine has an RMS of 5657).
    assert 20 * np.log10(_rms(steady) / 5657) == pytest.approx(0, abs=1)
    s = media.stats
    assert s.decoded == len(packets) and s.decode_errors == 0
    assert s.jitter.lost == s.jitter.late == 0


def test_audio_starts_after_the_initial_jitter_delay() -> None:
    packets = _packets("PCMU", _tone(8000, 1.0))
    media = InboundMedia("PCMU", initial_delay=0.06)
    levels = _frame_rms(_run(media, _timed(packets), 1.2))
    first = int(np.argmax(levels > 100))
    # 30 ms network + 60 ms buffer + resampler and PLC lags: the fifth or sixth frame.
    assert 4 <= first <= 6


def test_lost_g711_frames_are_concealed_not_silent() -> None:
    packets = _packets("PCMU", _tone(8000, 3.0))
    kept = [(t, p) for t, p in _timed(packets) if p.sequence % 10 != 5]
    media = InboundMedia("PCMU")
    levels = _frame_rms(_run(media, kept, 3.4))
    assert levels[20:140].min() > 0.5 * 5657  # every frame carries the tone
    assert media.stats.jitter.lost == 15
    assert media.stats.jitter.concealed >= 15


def test_lost_opus_frames_come_back_from_fec_in_the_next_packet() -> None:
    packets = _packets("opus", _tone(16000, 3.0))
    kept = [(t, p) for t, p in _timed(packets) if p.sequence % 10 != 5]
    media = InboundMedia("opus")
    out = _samples(_run(media, kept, 3.4))
    s = media.stats
    assert s.fec_recovered == 15
    assert s.decode_errors == 0
    assert _peak_hz(out[16000:48000]) == pytest.approx(440, abs=5)


def test_packets_of_other_payload_types_or_empty_are_ignored() -> None:
    media = InboundMedia("PCMU")
    assert not media.push(RtpPacket(101, 1, 160, 7, b"\x01\x00\x00\xa0"), 0.0)
    assert not media.push(RtpPacket(0, 2, 320, 7, b""), 0.0)
    assert media.stats.ignored == 2
    dynamic = InboundMedia("opus", payload_type=111)
    assert not dynamic.push(RtpPacket(96, 1, 960, 7, b"\x78"), 0.0)


def test_packet_duration_is_taken_from_the_first_packet() -> None:
    packets = _packets("PCMU", _tone(8000, 3.0), ptime_ms=30)
    media = InboundMedia("PCMU")
    out = _run(media, _timed(packets, 30), 3.2)
    assert media.jitter_buffer.frame_ticks == 240
    levels = _frame_rms(out)
    assert levels[20:140].min() > 0.9 * 5657  # continuous: no gaps, no doubled frames
    assert _peak_hz(_samples(out)[16000:40000]) == pytest.approx(440, abs=5)


def test_bad_l16_payload_is_counted_and_concealed() -> None:
    packets = _packets("L16", _tone(8000, 1.0), 8000)
    broken = RtpPacket(96, packets[20].sequence, packets[20].timestamp, 77, b"\x00" * 319)
    packets[20] = broken
    media = InboundMedia("L16", rate=8000)
    levels = _frame_rms(_run(media, _timed(packets), 1.2))
    assert media.stats.decode_errors == 1
    assert levels[10:50].min() > 0.5 * 5657


def test_new_ssrc_mid_call_decodes_cleanly() -> None:
    tone = _tone(16000, 1.0)
    first = _packets("opus", tone, ssrc=1)
    second = _packets("opus", tone, ssrc=2, seq0=5000)
    media = InboundMedia("opus")
    timed = _timed(first) + _timed(second, start=1.0)
    out = _samples(_run(media, timed, 2.4))
    assert media.stats.jitter.resets == 1
    assert media.stats.decode_errors == 0
    assert _peak_hz(out[int(1.3 * 16000) : int(2.0 * 16000)]) == pytest.approx(440, abs=5)


def test_a_pause_fades_out_then_is_digital_silence_then_speech_resumes() -> None:
    spurt = _packets("PCMU", _tone(8000, 1.0))
    later = [
        RtpPacket(0, p.sequence + 50, p.timestamp + 100 * 160, 77, p.payload, i == 0)
        for i, p in enumerate(spurt)
    ]
    media = InboundMedia("PCMU")
    levels = _frame_rms(_run(media, _timed(spurt) + _timed(later, start=2.0), 3.5))
    pause = levels[60:105]
    assert np.all(np.diff(pause[:8]) <= 1)  # fading, never louder
    assert not pause[8:].any()
    assert levels[115:150].min() > 0.9 * 5657
    assert media.stats.jitter.lost == 0


def test_bad_codec_or_rate_is_refused() -> None:
    with pytest.raises(InboundError, match="unknown inbound codec 'G729'"):
        InboundMedia("G729")
    with pytest.raises(InboundError, match="L16 needs rate=8000 or 16000"):
        InboundMedia("L16")
    with pytest.raises(InboundError, match="PCMU runs at 8000 Hz"):
        InboundMedia("PCMU", rate=16000)
    assert InboundMedia("pcma").codec == "pcma"


def test_dtmf_packets_in_the_sequence_are_not_counted_as_loss():
    """RFC 4733 events share the audio stream's sequence numbers; while they play the
    sender sends no audio. Those gaps are not network loss."""
    from media.g711 import ulaw_encode
    from media.inbound import InboundMedia
    from media.rtp import RtpPacket

    inbound = InboundMedia("PCMU", payload_type=0)
    payload = ulaw_encode(b"\x00\x10" * 160)
    seq = ts = 0
    t = 0.0
    for i in range(60):
        if 20 <= i < 26:  # a digit: six event packets in place of audio
            pkt = RtpPacket(101, seq, 4000, 0x1234, b"\x05\x0a\x00\xa0")
        else:
            pkt = RtpPacket(0, seq, ts, 0x1234, payload)
        inbound.push(pkt, t)
        inbound.pull(t)
        seq, ts, t = seq + 1, ts + 160, t + 0.02
    for _ in range(20):
        inbound.pull(t)
        t += 0.02
    assert inbound.stats.jitter.lost == 0
