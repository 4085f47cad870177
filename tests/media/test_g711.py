"""G.711 μ-law and A-law against the standard's own definition of the code points."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media import g711

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))
ULAW_MAX = 32124  # largest decoded μ-law magnitude
ALAW_MAX = 32256


def ulaw_level(code: int) -> int:
    """G.711 Table 2a: μ-law code -> 16-bit value (the 14-bit level times 4)."""
    c = ~code & 0xFF
    seg, q = (c >> 4) & 7, c & 0x0F
    mag = (((2 * q + 33) << seg) - 33) * 4
    return -mag if c & 0x80 else mag


def alaw_level(code: int) -> int:
    """G.711 Table 1a: A-law code -> 16-bit value (the 13-bit level times 8)."""
    c = code ^ 0x55
    seg, q = (c >> 4) & 7, c & 0x0F
    mag = (2 * q + 1) * 8 if seg == 0 else ((2 * q + 33) << (seg - 1)) * 8
    return mag if c & 0x80 else -mag


CODECS = {
    "ulaw": (g711.ulaw_encode, g711.ulaw_decode, ulaw_level, ULAW_MAX, 4),
    "alaw": (g711.alaw_encode, g711.alaw_decode, alaw_level, ALAW_MAX, 8),
}


def as_pcm(samples: list[int] | np.ndarray) -> bytes:
    return np.asarray(samples, dtype=np.int16).tobytes()


def pcm_values(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype=np.int16).astype(np.int64)


def test_constants() -> None:
    assert g711.SAMPLE_RATE == 8000
    assert g711.SAMPLES_PER_FRAME == 160
    assert g711.ulaw_encode(as_pcm([0])) == g711.ULAW_SILENCE
    assert g711.alaw_encode(as_pcm([0])) == g711.ALAW_SILENCE


@pytest.mark.parametrize(
    ("encode", "pcm", "code"),
    [
        (g711.ulaw_encode, 0, 0xFF),
        (g711.ulaw_encode, 32767, 0x80),
        (g711.ulaw_encode, -32768, 0x00),
        (g711.ulaw_encode, 8, 0xFE),
        (g711.ulaw_encode, -8, 0x7E),
        (g711.alaw_encode, 0, 0xD5),
        (g711.alaw_encode, 32767, 0xAA),
        (g711.alaw_encode, -32768, 0x2A),
        (g711.alaw_encode, -8, 0x55),
    ],
)
def test_known_encode_vectors(encode, pcm: int, code: int) -> None:
    assert encode(as_pcm([pcm])) == bytes([code])


@pytest.mark.parametrize(
    ("decode", "code", "pcm"),
    [
        (g711.ulaw_decode, 0xFF, 0),
        (g711.ulaw_decode, 0x7F, 0),  # μ-law's "negative zero"
        (g711.ulaw_decode, 0x80, ULAW_MAX),
        (g711.ulaw_decode, 0x00, -ULAW_MAX),
        (g711.alaw_decode, 0xD5, 8),
        (g711.alaw_decode, 0x55, -8),
        (g711.alaw_decode, 0xAA, ALAW_MAX),
        (g711.alaw_decode, 0x2A, -ALAW_MAX),
    ],
)
def test_known_decode_vectors(decode, code: int, pcm: int) -> None:
    assert pcm_values(decode(bytes([code]))).tolist() == [pcm]


@pytest.mark.parametrize("name", CODECS)
def test_decode_matches_the_standard_for_every_code(name: str) -> None:
    _, decode, level, _, _ = CODECS[name]
    assert pcm_values(decode(ALL_CODES)).tolist() == [level(c) for c in ALL_CODES]


@pytest.mark.parametrize("name", CODECS)
def test_every_code_survives_decode_then_encode(name: str) -> None:
    encode, decode, _, _, _ = CODECS[name]
    back = encode(decode(ALL_CODES))
    mismatches = [c for c in ALL_CODES if back[c] != c]
    # μ-law has two zeros (0xFF, 0x7F); encoding 0 picks the positive one.
    assert mismatches == ([0x7F] if name == "ulaw" else [])


@pytest.mark.parametrize("name", CODECS)
def test_round_trip_error_within_quantisation_step_for_every_sample(name: str) -> None:
    """Exhaustive over all 65536 inputs: the decoded value is the input's own interval
    level, so the error is at most half the local step (plus the low bits G.711 drops:
    2 for μ-law's 14-bit input, 3 for A-law's 13-bit), and the mapping is monotonic."""
    encode, decode, level, top, truncation = CODECS[name]
    out = pcm_values(decode(encode(ALL_PCM.tobytes())))
    x = ALL_PCM.astype(np.int64)
    levels = np.array(sorted({level(c) for c in range(256)}))
    assert np.all(np.diff(out) >= 0)
    assert set(np.unique(out)) <= set(levels.tolist())

    idx = np.searchsorted(levels, out)
    steps = np.diff(levels)
    local_step = np.maximum(
        steps[np.clip(idx - 1, 0, len(steps) - 1)], steps[np.clip(idx, 0, len(steps) - 1)]
    )
    inside = np.abs(x) <= top
    err = np.abs(out - x)
    assert np.all(err[inside] <= local_step[inside] / 2 + truncation)
    # Beyond the largest level the codec saturates instead of wrapping.
    assert np.all(np.abs(out[~inside]) == top)
    assert np.all(np.sign(out[~inside]) == np.sign(x[~inside]))


@pytest.mark.parametrize("name", CODECS)
def test_sine_snr_is_telephone_quality(name: str) -> None:
    """A -6 dBFS tone keeps G.711's ~37-39 dB signal-to-quantisation-noise ratio.
    1011 Hz is not a divisor of 8000, so the tone sweeps every phase."""
    encode, decode, _, _, _ = CODECS[name]
    t = np.arange(8000) / 8000
    x = np.round(16384 * np.sin(2 * np.pi * 1011 * t))
    y = pcm_values(decode(encode(as_pcm(x))))
    snr = 10 * np.log10(np.sum(x**2) / np.sum((y - x) ** 2))
    assert snr > 35


@pytest.mark.parametrize("name", CODECS)
@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400).filter(lambda b: len(b) % 2 == 0))
def test_lengths(name: str, data: bytes) -> None:
    encode, decode, _, _, _ = CODECS[name]
    coded = encode(data)
    assert len(coded) == len(data) // 2
    assert len(decode(coded)) == len(data)
    # Once quantised, a signal is a fixed point of the codec.
    assert encode(decode(coded)) == encode(decode(encode(decode(coded))))


@pytest.mark.parametrize("encode", [g711.ulaw_encode, g711.alaw_encode])
@pytest.mark.parametrize("size", [1, 3, 321])
def test_odd_length_pcm_rejected(encode, size: int) -> None:
    with pytest.raises(ValueError, match=f"even number of bytes, got {size}"):
        encode(bytes(size))


def test_one_frame_sizes() -> None:
    frame = bytes(g711.SAMPLES_PER_FRAME * 2)
    assert g711.ulaw_encode(frame) == g711.ULAW_SILENCE * 160
    assert g711.alaw_encode(frame) == g711.ALAW_SILENCE * 160
