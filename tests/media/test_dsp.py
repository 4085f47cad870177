"""media._dsp, the C 2:1 resampling kernels and the PLC pitch search, against the numpy
code they replace."""

from __future__ import annotations

import numpy as np
import pytest

from media import _dsp, plc, resample
from media.plc import _MIN_POWER, G711Plc
from media.resample import StreamResampler, _Doubler, _FastDoubler, _FastHalver, _Halver


def _chunks(rng: np.random.Generator, sizes: list[int], loud: bool) -> list[bytes]:
    lo, hi = (-32768, 32768) if loud else (-6000, 6000)
    return [rng.integers(lo, hi, n).astype(np.int16).tobytes() for n in sizes]


def _run(engine: object, chunks: list[bytes], as_array: bool) -> bytes:
    out = b""
    for c in chunks:
        x = np.frombuffer(c, dtype=np.int16) if as_array else c
        out += engine.process(x)  # type: ignore[attr-defined]
    return out + engine.flush()  # type: ignore[attr-defined]


@pytest.mark.parametrize("loud", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_c_doubler_matches_the_numpy_engine(seed: int, loud: bool) -> None:
    rng = np.random.default_rng(seed)
    # 20 ms frames, then chunk sizes that change (the history must carry over), one sample
    sizes = [160] * 20 + [1, 7, 80, 333, 160, 2, 160]
    chunks = _chunks(rng, sizes, loud)
    fast, ref = _run(_FastDoubler(), chunks, False), _run(_Doubler(), chunks, True)
    assert len(fast) == len(ref) == 4 * sum(sizes)
    assert fast == ref  # random input meets no exact rounding ties


@pytest.mark.parametrize("loud", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_c_halver_matches_the_numpy_engine(seed: int, loud: bool) -> None:
    rng = np.random.default_rng(seed)
    sizes = [320] * 20 + [1, 3, 160, 641, 320, 2, 1, 320]  # odd sizes leave a sample over
    chunks = _chunks(rng, sizes, loud)
    fast, ref = _run(_FastHalver(), chunks, False), _run(_Halver(), chunks, True)
    assert len(fast) == len(ref) == 2 * (sum(sizes) // 2)
    assert fast == ref


def test_full_scale_input_saturates_instead_of_wrapping() -> None:
    square = np.tile(np.r_[np.full(20, 32767), np.full(20, -32768)], 40).astype(np.int16)
    for fast, ref in ((_FastDoubler(), _Doubler()), (_FastHalver(), _Halver())):
        out = np.frombuffer(fast.process(square.tobytes()), dtype=np.int16)
        assert out.max() == 32767 and out.min() == -32768  # the overshoot clipped
        # Where the exact result is a tie (x.5: the square's -0.5 mid-point), the two
        # engines' different summation orders may round apart by one step; nowhere more.
        diff = out.astype(int) - np.frombuffer(ref.process(square), dtype=np.int16)
        assert np.abs(diff).max() <= 1 and np.count_nonzero(diff) <= len(diff) // 50


def test_stream_resampler_uses_the_c_engines_for_exact_doubling_and_halving() -> None:
    assert resample._dsp is _dsp  # setup builds it; a silent numpy fallback would hide a cost
    assert type(StreamResampler(8000, 16000)._stream) is _FastDoubler
    assert type(StreamResampler(16000, 8000)._stream) is _FastHalver
    up = StreamResampler(8000, 16000)
    frame = np.arange(160, dtype=np.int16).tobytes()
    assert len(up.process(memoryview(frame))) == 2 * 2 * 160 - 2 * resample._LAG


def test_bad_arguments_are_refused_without_touching_the_history() -> None:
    even, odd = resample._EVEN, resample._ODD
    hist = np.ones(len(odd))
    with pytest.raises(ValueError, match="history"):
        _dsp.double2(np.zeros(3), b"\0\0", even, odd, 0)
    with pytest.raises(ValueError, match="whole int16"):
        _dsp.double2(hist, b"\0\0\0", even, odd, 0)
    with pytest.raises(ValueError):
        _dsp.double2(hist, b"\0\0", even, odd, -1)
    with pytest.raises(TypeError):
        _dsp.double2(hist, "text", even, odd, 0)
    with pytest.raises((TypeError, BufferError)):
        _dsp.double2(bytes(8 * len(odd)), b"\0\0", even, odd, 0)  # read-only history
    assert (hist == 1).all()
    h = resample._H_HALF
    with pytest.raises(ValueError, match="even number"):
        _dsp.halve2(np.zeros(h), np.zeros(h), b"\0\0", resample._H_EVEN, resample._H_ODD, 0)
    with pytest.raises(ValueError):
        _dsp.halve2(np.zeros(h), np.zeros(h + 1), b"\0\0\0\0", resample._H_EVEN,
                    resample._H_ODD, 0)


def _pitch_inputs(rate: int, seed: int) -> list[np.ndarray]:
    """Histories as concealment sees them: noise, voiced harmonics, a noisy tone,
    silence (every lag ties) and a full-scale square wave."""
    rng = np.random.default_rng(seed)
    size = G711Plc(rate)._history_len
    t = np.arange(size) / rate
    out = [np.zeros(size), np.where(np.sin(2 * np.pi * 100 * t) >= 0, 32767.0, -32768.0)]
    for _ in range(150):
        f0 = rng.uniform(66, 200)
        voiced = sum(np.sin(2 * np.pi * f0 * h * t + h) / h for h in range(1, 6))
        out.append(np.rint(voiced * rng.uniform(10, 20000)))
        out.append(np.rint(np.sin(2 * np.pi * f0 * t) * 8000 + rng.normal(0, 800, size)))
        out.append(rng.integers(-32768, 32768, size).astype(np.float64))
    return out


@pytest.mark.parametrize("rate", [8000, 16000])
def test_c_pitch_search_matches_the_numpy_search(rate: int) -> None:
    p = G711Plc(rate)
    for src in _pitch_inputs(rate, seed=rate):
        assert p._find_pitch(src) == p._find_pitch_numpy(src)


def test_plc_uses_the_c_pitch_search() -> None:
    assert plc._dsp is _dsp
    p = G711Plc(8000)
    src = np.rint(np.sin(2 * np.pi * 160 * np.arange(p._history_len) / 8000) * 8000)
    assert _dsp.pitch(src, 160, 40, 120, 2, _MIN_POWER) == p._find_pitch_numpy(src) == 50


def test_bad_pitch_arguments_are_refused() -> None:
    src = np.zeros(400)
    with pytest.raises(ValueError, match="at least 280"):
        _dsp.pitch(np.zeros(279), 160, 40, 120, 2, _MIN_POWER)
    with pytest.raises(ValueError, match="float64"):
        _dsp.pitch(bytes(8 * 400 + 4), 160, 40, 120, 2, _MIN_POWER)
    for n, lo, hi, d in ((0, 40, 120, 2), (160, 0, 120, 2), (160, 50, 40, 2), (160, 40, 120, 0)):
        with pytest.raises(ValueError, match="lag_min"):
            _dsp.pitch(src, n, lo, hi, d, _MIN_POWER)
    with pytest.raises(TypeError):
        _dsp.pitch("text", 160, 40, 120, 2, _MIN_POWER)
