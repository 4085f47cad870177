"""Streaming resampler: state kept across 20 ms frames, exact long-run lengths, low lag."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.resample import RATES, FrameChunker, ResampleError, StreamResampler

PAIRS = list(itertools.permutations(RATES, 2))
PAIR_IDS = [f"{a}-{b}" for a, b in PAIRS]
TONE_HZ = 1000.0
AMPLITUDE = 16000.0


def tone(rate: int, seconds: float, hz: float = TONE_HZ, amplitude: float = AMPLITUDE) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16).tobytes()


def values(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float64)


def in_chunks(pcm: bytes, size: int) -> list[bytes]:
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def chunked(resampler: StreamResampler, pieces: list[bytes]) -> bytes:
    return b"".join(resampler.process(p) for p in pieces) + resampler.flush()


def frame_bytes(rate: int) -> int:
    return rate // 50 * 2


def fit_tone(y: np.ndarray, rate: int, start: int, stop: int) -> tuple[float, float, np.ndarray]:
    """Least-squares fit of the test tone over y[start:stop]: (amplitude, lag in output
    samples, residual over the whole of y)."""
    n = np.arange(len(y))
    w = 2 * np.pi * TONE_HZ / rate
    basis = np.stack([np.sin(w * n), np.cos(w * n)], axis=1)
    (a, b), *_ = np.linalg.lstsq(basis[start:stop], y[start:stop], rcond=None)
    return float(np.hypot(a, b)), float(-np.arctan2(b, a) / w), y - basis @ [a, b]


STEADY = pytest.mark.parametrize("steady", [True, False], ids=["steady", "block"])


@STEADY
@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS, ids=PAIR_IDS)
def test_20ms_chunks_equal_one_go(in_rate: int, out_rate: int, steady: bool) -> None:
    x = tone(in_rate, 1.0)
    whole = chunked(StreamResampler(in_rate, out_rate, steady=steady), [x])
    framed = chunked(
        StreamResampler(in_rate, out_rate, steady=steady), in_chunks(x, frame_bytes(in_rate))
    )
    assert framed == whole


@STEADY
@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS, ids=PAIR_IDS)
def test_chunked_output_is_the_ideal_tone_with_no_clicks(
    in_rate: int, out_rate: int, steady: bool
) -> None:
    """Resampled in 20 ms chunks, a 1 kHz tone is the same tone sampled at the output
    rate: a constant lag under 2.5 samples and only quantisation noise everywhere,
    frame edges included. A click or a lost/duplicated sample at any chunk boundary
    would leave a residual of thousands."""
    x = tone(in_rate, 1.0)
    r = StreamResampler(in_rate, out_rate, steady=steady)
    y = values(chunked(r, in_chunks(x, frame_bytes(in_rate))))
    edge = out_rate // 20  # skip 50 ms at each end, where the filter starts and stops
    amplitude, lag, residual = fit_tone(y, out_rate, edge, len(y) - edge)
    assert amplitude == pytest.approx(AMPLITUDE, rel=0.002)
    assert abs(lag) < 2.5
    assert np.max(np.abs(residual[edge:-edge])) < 8


def test_naive_per_chunk_resampling_fails_the_click_check() -> None:
    """The check above can fail: a fresh resampler per chunk (no state kept) clicks."""
    x = tone(8000, 1.0)
    y = values(b"".join(chunked(StreamResampler(8000, 16000), [c]) for c in in_chunks(x, 320)))
    edge = 800
    _, _, residual = fit_tone(y, 16000, edge, len(y) - edge)
    assert np.max(np.abs(residual[edge:-edge])) > 1000


@settings(max_examples=40, deadline=None)
@given(
    pair=st.sampled_from(PAIRS),
    cuts=st.lists(st.integers(0, 4000), max_size=30),
)
def test_any_chunking_equals_one_go(pair: tuple[int, int], cuts: list[int]) -> None:
    in_rate, out_rate = pair
    x = tone(in_rate, 0.2, hz=440)
    bounds = sorted({min(c * 2, len(x)) for c in cuts} | {0, len(x)})
    pieces = [x[a:b] for a, b in itertools.pairwise(bounds)]
    whole = chunked(StreamResampler(in_rate, out_rate), [x])
    split = chunked(StreamResampler(in_rate, out_rate), pieces)
    assert split == whole


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS, ids=PAIR_IDS)
def test_long_run_length_and_steady_frames(in_rate: int, out_rate: int) -> None:
    """10 s in 20 ms frames: after a short start, every input frame yields one output
    frame (+-1 sample), the lag stays bounded, and after flush() the total is exactly
    in_len * out / in within 2 samples."""
    seconds, frames = 10, 500
    x = tone(in_rate, seconds, hz=440)
    r = StreamResampler(in_rate, out_rate)
    per_frame = out_rate // 50
    total = 0
    for k, chunk in enumerate(in_chunks(x, frame_bytes(in_rate))):
        got = len(r.process(chunk)) // 2
        total += got
        if k >= 3:
            assert abs(got - per_frame) <= 1
        lag_ms = ((k + 1) * per_frame - total) * 1000 / out_rate
        if k >= 3:
            assert 0 <= lag_ms <= 40  # measured 15-30 ms; see media/resample.py
    total += len(r.flush()) // 2
    assert k + 1 == frames
    assert abs(total - len(x) // 2 * out_rate / in_rate) <= 2


@STEADY
@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (22050, 8000), (48000, 16000)])
def test_irregular_chunks_long_run_length(in_rate: int, out_rate: int, steady: bool) -> None:
    rng = np.random.default_rng(7)
    x = tone(in_rate, 5.0, hz=440)
    r = StreamResampler(in_rate, out_rate, steady=steady)
    total, pos = 0, 0
    while pos < len(x):
        size = int(rng.integers(1, 2000)) * 2
        total += len(r.process(x[pos : pos + size])) // 2
        pos += size
    total += len(r.flush()) // 2
    assert abs(total - len(x) // 2 * out_rate / in_rate) <= 2


@STEADY
@pytest.mark.parametrize(
    ("in_rate", "out_rate", "hz", "max_db"),
    [
        (16000, 8000, 5000, -60),  # would alias to 3 kHz
        (48000, 16000, 10000, -60),  # would alias to 6 kHz
        (22050, 8000, 6000, -60),  # would alias to 2 kHz
        (22050, 16000, 12000, -60),  # would alias to 4 kHz
    ],
)
def test_downsampling_removes_what_would_alias(
    in_rate: int, out_rate: int, hz: int, max_db: float, steady: bool
) -> None:
    r = StreamResampler(in_rate, out_rate, steady=steady)
    y = values(chunked(r, [tone(in_rate, 1.0, hz=hz)]))
    rms = np.sqrt(np.mean(y[out_rate // 10 : -out_rate // 10] ** 2))
    assert 20 * np.log10(rms / (AMPLITUDE / np.sqrt(2)) + 1e-9) < max_db


@STEADY
@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (16000, 8000), (22050, 8000)])
def test_telephone_band_passes_flat(in_rate: int, out_rate: int, steady: bool) -> None:
    for hz in (300, 1000, 3400):
        r = StreamResampler(in_rate, out_rate, steady=steady)
        y = values(chunked(r, [tone(in_rate, 1.0, hz=hz)]))
        rms = np.sqrt(np.mean(y[out_rate // 10 : -out_rate // 10] ** 2))
        assert rms == pytest.approx(AMPLITUDE / np.sqrt(2), rel=0.02)  # within 0.2 dB


def test_full_scale_overshoot_clips_instead_of_wrapping() -> None:
    square = np.where(np.sin(2 * np.pi * 200 * np.arange(8000) / 8000) >= 0, 32767, -32768)
    y = values(chunked(StreamResampler(8000, 16000), [square.astype(np.int16).tobytes()]))
    expected = np.repeat(square, 2)[: len(y)]
    settled = np.abs(np.convolve(np.diff(expected) != 0, np.ones(9), "same")) == 0
    assert np.all(np.sign(y[1:][settled[: len(y) - 1]]) == np.sign(expected[1:][settled]))


def test_identity_when_rates_are_equal() -> None:
    r = StreamResampler(16000, 16000)
    x = tone(16000, 0.02)
    assert r.is_identity
    assert r.process(x) == x
    assert r.process(bytearray(b"\x01\x02")) == b"\x01\x02"
    assert r.flush() == b""
    r.reset()
    assert not StreamResampler(8000, 16000).is_identity


def test_flush_starts_a_fresh_stream() -> None:
    a, b = tone(8000, 0.3), tone(8000, 0.3, hz=700)
    r = StreamResampler(8000, 16000)
    chunked(r, in_chunks(a, 320))
    assert chunked(r, in_chunks(b, 320)) == chunked(StreamResampler(8000, 16000), in_chunks(b, 320))


def test_reset_drops_history() -> None:
    a, b = tone(22050, 0.3), tone(22050, 0.3, hz=700)
    r = StreamResampler(22050, 8000)
    for chunk in in_chunks(a, 882):
        r.process(chunk)
    r.reset()
    assert chunked(r, in_chunks(b, 882)) == chunked(StreamResampler(22050, 8000), in_chunks(b, 882))


def test_output_is_bit_identical_across_instances() -> None:
    """No hidden randomness: libsoxr's int16 path dithers with a seed taken from the
    clock and its own address, which made two resamplers differ by a few LSB."""
    x = tone(22050, 0.3)
    first = chunked(StreamResampler(22050, 8000), in_chunks(x, 882))
    for _ in range(5):
        StreamResampler(22050, 8000).process(x)  # abandoned mid-stream, memory reused
    assert chunked(StreamResampler(22050, 8000), in_chunks(x, 882)) == first


def test_empty_input_is_fine() -> None:
    r = StreamResampler(8000, 16000)
    assert r.process(b"") == b""
    assert r.flush() == b""


@pytest.mark.parametrize("size", [1, 3, 641])
def test_odd_length_rejected(size: int) -> None:
    with pytest.raises(ResampleError, match=f"even number of bytes, got {size}$"):
        StreamResampler(8000, 16000).process(bytes(size))
    with pytest.raises(ResampleError, match=f"even number of bytes, got {size}$"):
        StreamResampler(8000, 8000).process(bytes(size))


@pytest.mark.parametrize("rate", [0, -8000, 999, 500000, 16000.0, "16000"])
def test_bad_rates_rejected(rate: object) -> None:
    with pytest.raises(ResampleError, match="input rate must be an integer"):
        StreamResampler(rate, 16000)  # type: ignore[arg-type]
    with pytest.raises(ResampleError, match="output rate must be an integer"):
        StreamResampler(16000, rate)  # type: ignore[arg-type]


def test_repr_names_the_rates() -> None:
    assert repr(StreamResampler(22050, 8000)) == "StreamResampler(22050 -> 8000)"
    assert (
        repr(StreamResampler(22050, 8000, steady=False))
        == "StreamResampler(22050 -> 8000, steady=False)"
    )


@pytest.mark.parametrize(("in_rate", "out_rate"), [(22050, 8000), (22050, 16000), (48000, 8000)])
def test_block_engine_bursts_but_flush_returns_everything(in_rate: int, out_rate: int) -> None:
    """steady=False holds output back between pushes (that is what makes it cheap), but
    never loses it: flush() gives the total exactly, like the steady engine."""
    x = tone(in_rate, 1.0)
    r = StreamResampler(in_rate, out_rate, steady=False)
    counts = [len(r.process(c)) // 2 for c in in_chunks(x, frame_bytes(in_rate))]
    assert counts[0] == 0 and max(counts) > out_rate // 50  # bursts of several frames
    total = sum(counts) + len(r.flush()) // 2
    assert abs(total - out_rate) <= 2


# --- FrameChunker ---------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    frame=st.sampled_from([320, 640, 882, 1920]),
    pieces=st.lists(st.binary(max_size=2500), max_size=12),
)
def test_chunker_regroups_into_exact_frames(frame: int, pieces: list[bytes]) -> None:
    chunker = FrameChunker(frame)
    out: list[bytes] = []
    for piece in pieces:
        out.extend(chunker.push(piece))
    data = b"".join(pieces)
    assert all(len(f) == frame for f in out)
    assert b"".join(out) == data[: len(out) * frame]
    assert len(out) == len(data) // frame
    assert chunker.pending_bytes == len(data) % frame


def test_chunker_flush_pads_with_silence() -> None:
    chunker = FrameChunker(8)
    assert chunker.push(b"\x01\x02\x03") == []
    assert chunker.pending_bytes == 3
    assert chunker.flush() == b"\x01\x02\x03\x00\x00\x00\x00\x00"
    assert chunker.pending_bytes == 0
    assert chunker.flush() == b""


def test_chunker_clear_drops_the_partial_frame() -> None:
    chunker = FrameChunker(4)
    assert chunker.push(b"abcdef") == [b"abcd"]
    chunker.clear()
    assert chunker.pending_bytes == 0
    assert chunker.push(b"wxyz") == [b"wxyz"]


def test_chunker_takes_bytearray_and_memoryview() -> None:
    chunker = FrameChunker(2)
    assert chunker.push(bytearray(b"ab")) == [b"ab"]
    assert chunker.push(memoryview(b"cdef")) == [b"cd", b"ef"]


def test_resampler_into_chunker_gives_one_frame_per_frame() -> None:
    """The inbound path: 8 kHz wire frames -> 16 kHz pipeline frames, one per 20 ms
    after the first (which the filter's 5 ms lag leaves short)."""
    r, chunker = StreamResampler(8000, 16000), FrameChunker(640)
    counts = [len(chunker.push(r.process(c))) for c in in_chunks(tone(8000, 2.0), 320)]
    assert counts[0] == 0
    assert set(counts[1:]) == {1}


def test_doubling_lags_under_7_ms() -> None:
    """8 -> 16 kHz (every G.711 call's inbound audio) has its own polyphase filter: its
    output runs 80 samples (5 ms) behind, not soxr's 30 ms."""
    r = StreamResampler(8000, 16000)
    total = 0
    for k, chunk in enumerate(in_chunks(tone(8000, 1.0), 320)):
        total += len(r.process(chunk)) // 2
        assert (k + 1) * 320 - total == 80


def test_halving_lags_under_3_ms_and_keeps_odd_chunks() -> None:
    """16 -> 8 kHz (every G.711 call's outbound audio from the pipeline) has its own
    polyphase filter too: 40 output samples (5 ms) behind, not soxr's 15 ms; a chunk of
    odd length keeps its last sample for the next one, and flush() settles the total."""
    r = StreamResampler(16000, 8000)
    total = 0
    for k, chunk in enumerate(in_chunks(tone(16000, 1.0), 640)):
        total += len(r.process(chunk)) // 2
        assert (k + 1) * 160 - total == 40
    odd = StreamResampler(16000, 8000)
    x = tone(16000, 0.5)
    got = b"".join(odd.process(c) for c in in_chunks(x, 2 * 161)) + odd.flush()
    assert len(got) // 2 == len(x) // 4
    whole = StreamResampler(16000, 8000)
    assert got == whole.process(x) + whole.flush()


@pytest.mark.parametrize("hz", [300, 1000, 3000, 3400])
def test_halving_keeps_the_band_and_rejects_aliases(hz: int) -> None:
    """In-band tones pass at unit gain; a tone at 8000 - f (which would fold onto f)
    is gone."""
    def rms_db(y: np.ndarray) -> float:
        return float(20 * np.log10(np.sqrt(np.mean(np.square(y[400:-400]))) + 1e-9))

    x = tone(16000, 1.0, hz=hz)
    y = values(chunked(StreamResampler(16000, 8000), in_chunks(x, 640)))
    assert abs(rms_db(y) - rms_db(values(x))) < 0.1
    a = tone(16000, 1.0, hz=8000 - hz)
    alias = values(chunked(StreamResampler(16000, 8000), in_chunks(a, 640)))
    assert rms_db(alias) - rms_db(values(a)) < -55


@pytest.mark.parametrize("hz", [300, 1000, 2000, 3000, 3400, 3650, 3750])
def test_doubling_leaves_no_image(hz: int) -> None:
    """Interpolation images the 0-4 kHz band into 4-8 kHz (a tone at f comes back at
    8000 - f); the filter must remove them, or ASR hears a second, mirrored voice."""
    y = values(chunked(StreamResampler(8000, 16000), in_chunks(tone(8000, 1.0, hz=hz), 320)))
    spectrum = np.abs(np.fft.rfft(y[:16000] * np.hanning(16000)))  # 1 Hz bins
    image = spectrum[8000 - hz - 20 : 8000 - hz + 21].max()
    assert 20 * np.log10(image / spectrum[hz]) < -70


@pytest.mark.parametrize("size", [0, -2, 3, 641])
def test_chunker_rejects_bad_frame_sizes(size: int) -> None:
    with pytest.raises(ResampleError, match=f"positive even byte count, got {size}$"):
        FrameChunker(size)
