"""Opus through the system libopus: framing, rates, concealment and in-band FEC."""

from __future__ import annotations

import functools

import numpy as np
import opuslib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.opus import (
    FRAME_TICKS,
    RTP_CLOCK_RATE,
    OpusDecoder,
    OpusEncoder,
    OpusError,
)

RATE = 16000
FRAME = RATE // 50  # 320 samples


@functools.cache
def voiced(rate: int = RATE, seconds: float = 2.0) -> np.ndarray:
    """A vowel-like test signal: 29 harmonics of a wandering pitch (100-220 Hz), two
    formant bumps, and a 2.3 Hz syllable envelope. Loss concealment cannot just repeat
    the last period of it, which is what makes FEC measurable."""
    t = np.arange(int(rate * seconds)) / rate
    f0 = 150 + 50 * np.sin(2 * np.pi * 0.9 * t) + 20 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    sig = np.zeros_like(t)
    for k in range(1, 30):
        f = k * f0
        gain = 1 + 1.5 * np.exp(-(((f - 700) / 250) ** 2)) + np.exp(-(((f - 1800) / 300) ** 2))
        sig += np.where(f < 0.45 * rate, gain / k, 0.0) * np.sin(k * phase)
    sig *= 0.55 + 0.45 * np.sin(2 * np.pi * 2.3 * t)
    return np.round(sig / np.max(np.abs(sig)) * 14000).astype(np.int16)


def frames_of(x: np.ndarray, n: int = FRAME) -> list[bytes]:
    return [x[i : i + n].tobytes() for i in range(0, len(x) - n + 1, n)]


@functools.cache
def packets(fec: bool = True, loss: int = 10) -> tuple[bytes, ...]:
    enc = OpusEncoder(RATE, fec=fec, expected_loss_pct=loss)
    return tuple(enc.encode(f) for f in frames_of(voiced()))


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float64)


def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - test) ** 2)))


def codec_delay(original: np.ndarray, decoded: np.ndarray) -> int:
    """Lag (samples) that best lines the decoded stream up with the input."""
    a = original[2000:-2000].astype(np.float64)
    scores = [np.dot(a, decoded[2000 + lag : 2000 + lag + len(a)]) for lag in range(400)]
    return int(np.argmax(scores))


def toc(packet: bytes) -> tuple[str, float, bool, int]:
    """RFC 6716 §3.1 table-of-contents byte: (mode, frame ms, stereo, frame-count code)."""
    config, stereo, code = packet[0] >> 3, bool(packet[0] & 4), packet[0] & 3
    if config < 12:
        mode, ms = "SILK", (10, 20, 40, 60)[config % 4]
    elif config < 16:
        mode, ms = "hybrid", (10, 20)[config % 2]
    else:
        mode, ms = "CELT", (2.5, 5, 10, 20)[config % 4]
    return mode, ms, stereo, code


def test_rtp_clock_is_48k_whatever_the_audio_rate() -> None:
    assert RTP_CLOCK_RATE == 48000
    assert FRAME_TICKS == 960


def test_packets_are_single_mono_20ms_frames() -> None:
    for packet in packets():
        mode, ms, stereo, code = toc(packet)
        assert (ms, stereo, code) == (20, False, 0)
        assert mode in ("SILK", "hybrid")  # the modes that carry FEC
    assert 20 < np.mean([len(p) for p in packets()]) < OpusEncoder().bitrate / 8 / 50 * 1.5


def test_defaults_are_the_measured_cheap_settings() -> None:
    """Complexity 1 at 32 kbit/s with FEC: cheaper and better than complexity 5 at 24
    kbit/s (see media/opus.py); complexity 0 would drop the FEC."""
    enc = OpusEncoder()
    assert (enc.rate, enc.bitrate, enc.fec, enc.expected_loss_pct) == (16000, 32000, True, 10)
    assert enc.complexity == 1


def test_packets_do_not_share_the_output_buffer() -> None:
    enc = OpusEncoder(RATE)
    frames = frames_of(voiced())
    first = enc.encode(bytearray(frames[10]))
    kept = bytes(first)
    second = enc.encode(memoryview(frames[11]))
    assert first == kept and first != second


def test_decoded_audio_follows_the_input() -> None:
    x = voiced()
    dec = OpusDecoder(RATE)
    y = np.concatenate([samples(dec.decode(p)) for p in packets()])
    assert len(y) == len(packets()) * FRAME
    lag = codec_delay(x, y)
    assert 60 < lag < 200  # libopus look-ahead is 6.5 ms = 104 samples at 16 kHz
    a = x[2000:-2000].astype(np.float64)
    b = y[2000 + lag : 2000 + lag + len(a)]
    assert np.corrcoef(a, b)[0, 1] > 0.8


@pytest.mark.parametrize("rate", [8000, 12000, 16000, 24000, 48000])
def test_decoder_outputs_the_asked_rate_directly(rate: int) -> None:
    dec = OpusDecoder(rate)
    pcm = [dec.decode(p) for p in packets()[:50]]
    assert {len(f) for f in pcm} == {rate // 50 * 2}
    assert len(dec.conceal()) == rate // 50 * 2
    assert len(dec.decode_fec(packets()[51])) == rate // 50 * 2
    # The voice survives: same level as the 16 kHz decode, whatever the output rate.
    level = np.sqrt(np.mean(samples(b"".join(pcm[10:])) ** 2))
    ref = OpusDecoder(RATE)
    ref_pcm = b"".join([ref.decode(p) for p in packets()[:50]][10:])
    assert level == pytest.approx(np.sqrt(np.mean(samples(ref_pcm) ** 2)), rel=0.15)


@pytest.mark.parametrize("rate", [8000, 48000])
def test_encoder_at_other_rates(rate: int) -> None:
    enc = OpusEncoder(rate)
    dec = OpusDecoder(rate)
    x = voiced(rate, 0.5)
    out = [dec.decode(enc.encode(f)) for f in frames_of(x, rate // 50)]
    assert {len(f) for f in out} == {rate // 50 * 2}


def test_decoder_returns_every_frame_of_a_longer_packet() -> None:
    # A peer with ptime 40: one packet, two 20 ms frames.
    enc = opuslib.Encoder(RATE, 1, opuslib.APPLICATION_VOIP)
    packet = enc.encode(voiced()[: 2 * FRAME].tobytes(), 2 * FRAME)
    assert toc(packet)[1] == 40
    assert len(OpusDecoder(RATE).decode(packet)) == 2 * FRAME * 2


def test_fec_costs_bits_only_when_expected_loss_is_set() -> None:
    with_fec = np.mean([len(p) for p in packets(fec=True, loss=10)])
    no_fec = np.mean([len(p) for p in packets(fec=False, loss=10)])
    assert with_fec > 1.15 * no_fec  # the redundant copy of the previous frame


def lost_frame_outputs(pk: tuple[bytes, ...], lost: int) -> tuple[bytes, bytes]:
    """(decode_fec, conceal) for frame `lost`, each from a decoder that saw the same past."""
    fec_dec, plc_dec = OpusDecoder(RATE), OpusDecoder(RATE)
    for p in pk[:lost]:
        fec_dec.decode(p)
        plc_dec.decode(p)
    return fec_dec.decode_fec(pk[lost + 1]), plc_dec.conceal()


LOSSES = range(10, 95, 3)


def test_fec_recovers_a_lost_frame_better_than_concealment() -> None:
    x = voiced()
    pk = packets()
    clean_dec = OpusDecoder(RATE)
    clean = [samples(clean_dec.decode(p)) for p in pk]
    lag = codec_delay(x, np.concatenate(clean))

    fec_snr, plc_snr, fec_corr, plc_corr, fec_vs_clean, plc_vs_clean = ([] for _ in range(6))
    for lost in LOSSES:
        fec_pcm, plc_pcm = lost_frame_outputs(pk, lost)
        fec, plc = samples(fec_pcm), samples(plc_pcm)
        orig = x[lost * FRAME - lag : (lost + 1) * FRAME - lag].astype(np.float64)
        fec_snr.append(snr_db(orig, fec))
        plc_snr.append(snr_db(orig, plc))
        fec_corr.append(np.corrcoef(orig, fec)[0, 1])
        plc_corr.append(np.corrcoef(orig, plc)[0, 1])
        fec_vs_clean.append(snr_db(clean[lost], fec))
        plc_vs_clean.append(snr_db(clean[lost], plc))

    # Against the original signal (measured: FEC ~4.3 dB / r 0.69, PLC ~0.5 dB / r 0.41).
    assert np.mean(fec_snr) > np.mean(plc_snr) + 2
    assert np.mean(fec_corr) > np.mean(plc_corr) + 0.15
    # Against what the lost packet itself would have decoded to (FEC ~8.8 dB, PLC ~1 dB).
    assert np.mean(fec_vs_clean) > np.mean(plc_vs_clean) + 4
    assert np.mean(np.array(fec_vs_clean) > np.array(plc_vs_clean) + 3) > 0.5


@pytest.mark.parametrize(("fec", "loss"), [(False, 10), (True, 0)])
def test_without_fec_in_the_stream_decode_fec_is_only_concealment(fec: bool, loss: int) -> None:
    """FEC off, or FEC on with 0 % expected loss: libopus emits no redundancy, and
    decode_fec falls back to PLC -- so the default encoder must set both."""
    pk = packets(fec=fec, loss=loss)
    for lost in LOSSES[:8]:
        fec_pcm, plc_pcm = lost_frame_outputs(pk, lost)
        assert fec_pcm == plc_pcm


def test_stream_continues_cleanly_after_fec() -> None:
    pk = packets()
    ref = OpusDecoder(RATE)
    clean = [ref.decode(p) for p in pk]
    dec = OpusDecoder(RATE)
    for p in pk[:30]:
        dec.decode(p)
    dec.decode_fec(pk[31])
    after = [samples(dec.decode(p)) for p in pk[31:40]]
    assert snr_db(samples(b"".join(clean[33:40])), np.concatenate(after[2:])) > 20


def test_concealment_continues_then_fades_over_a_long_loss() -> None:
    ref = OpusDecoder(RATE)
    clean = [samples(ref.decode(p)) for p in packets()]
    loud = max(range(10, 80), key=lambda i: np.mean(clean[i] ** 2))  # lose mid-vowel
    dec = OpusDecoder(RATE)
    for p in packets()[: loud + 1]:
        dec.decode(p)
    last = np.mean(clean[loud] ** 2)
    energy = [np.mean(samples(dec.conceal()) ** 2) for _ in range(12)]
    assert energy[0] > 0.25 * last  # the first 20 ms carries the voice on
    assert np.mean(energy[6:]) < 0.1 * last  # after ~120 ms it has faded by > 10 dB


def test_reset_makes_the_decoder_fresh() -> None:
    pk = packets()
    dec = OpusDecoder(RATE)
    for p in pk[:20]:
        dec.decode(p)
    dec.reset()
    fresh = OpusDecoder(RATE)
    assert [dec.decode(p) for p in pk[20:30]] == [fresh.decode(p) for p in pk[20:30]]


def test_reset_makes_the_encoder_fresh_and_keeps_its_settings() -> None:
    frames = frames_of(voiced())[:20]
    enc = OpusEncoder(RATE)
    for f in frames:
        enc.encode(f)
    enc.reset()
    assert [enc.encode(f) for f in frames] == list(packets()[:20])


@pytest.mark.parametrize("rate", [0, 11025, 22050, 44100])
def test_unsupported_rates_rejected(rate: int) -> None:
    with pytest.raises(OpusError, match=f"not {rate}$"):
        OpusEncoder(rate)
    with pytest.raises(OpusError, match=f"not {rate}$"):
        OpusDecoder(rate)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bitrate": 100}, "bitrate must be 6000..510000 bit/s, got 100"),
        ({"expected_loss_pct": 101}, "expected loss must be 0..100 %, got 101"),
        ({"complexity": 11}, "complexity must be 0..10, got 11"),
    ],
)
def test_bad_encoder_settings_rejected(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(OpusError, match=message):
        OpusEncoder(**kwargs)


@pytest.mark.parametrize("size", [0, 318, 321, 642, 1280])
def test_encoder_takes_exactly_one_20ms_frame(size: int) -> None:
    with pytest.raises(OpusError, match=f"frames of 640 bytes, got {size}$"):
        OpusEncoder(RATE).encode(bytes(size))


def test_empty_payloads_rejected_with_a_hint() -> None:
    dec = OpusDecoder(RATE)
    with pytest.raises(OpusError, match="call conceal"):
        dec.decode(b"")
    with pytest.raises(OpusError, match="packet after the loss"):
        dec.decode_fec(b"")


def test_corrupt_packet_raises_opus_error() -> None:
    with pytest.raises(OpusError, match=r"^Opus decode failed: corrupted stream$"):
        OpusDecoder(RATE).decode(b"\xff\xff\xff")


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(min_size=1, max_size=200))
def test_garbage_never_crashes(payload: bytes) -> None:
    """Whatever arrives, the decoder gives whole 2.5 ms multiples or raises OpusError,
    and still decodes real packets afterwards."""
    dec = OpusDecoder(RATE)
    for attempt in (dec.decode, dec.decode_fec):
        try:
            pcm = attempt(payload)
        except OpusError:
            continue
        assert len(pcm) % (RATE // 400 * 2) == 0
        assert len(pcm) <= RATE * 120 // 1000 * 2
    assert len(dec.decode(packets()[0])) == FRAME * 2


def test_error_is_a_value_error() -> None:
    assert issubclass(OpusError, ValueError)
