from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media import plc as plc_module
from media.plc import G711Plc

RATE = 8000
FRAME = 160


def _voiced(f0: float, seconds: float = 1.0, rate: int = RATE, amp: float = 6000.0) -> np.ndarray:
    """A vowel-like tone: five harmonics with falling amplitude."""
    t = np.arange(int(seconds * rate)) / rate
    return sum(np.sin(2 * np.pi * f0 * h * t + h) / h for h in range(1, 6)) * amp


def _frames(signal: np.ndarray, size: int = FRAME) -> list[bytes]:
    pcm = np.rint(signal).astype("<i2").tobytes()
    return [pcm[i : i + 2 * size] for i in range(0, len(pcm) - 2 * size + 1, 2 * size)]


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def _run(plc: G711Plc, frames: list[bytes], lost: set[int]) -> np.ndarray:
    out = [plc.conceal() if i in lost else plc.frame_ok(f) for i, f in enumerate(frames)]
    return _samples(b"".join(out))


def test_real_frames_pass_through_delayed_by_three_point_seven_five_ms() -> None:
    plc = G711Plc()
    assert plc.delay_samples == 30
    signal = _voiced(120, 0.2)
    out = _run(plc, _frames(signal), set())
    np.testing.assert_array_equal(out[30:], np.rint(signal)[: len(out) - 30])
    assert not out[:30].any()


@pytest.mark.parametrize("f0", [70.0, 100.0, 133.0, 160.0, 200.0])
def test_pitch_is_found_by_normalised_cross_correlation(f0: float) -> None:
    plc = G711Plc()
    for frame in _frames(_voiced(f0, 0.1)):
        plc.frame_ok(frame)
    assert plc._find_pitch(plc._history_array()) == pytest.approx(RATE / f0, abs=1)


@pytest.mark.parametrize("f0", [80.0, 110.0, 150.0, 190.0])
def test_first_10_ms_of_concealment_continue_a_periodic_signal(f0: float) -> None:
    signal = _voiced(f0, 0.5)
    plc = G711Plc()
    out = _run(plc, _frames(signal), {10})
    d = plc.delay_samples
    lost = slice(10 * FRAME + d, 10 * FRAME + d + 80)
    want = signal[lost.start - d : lost.stop - d]
    error = np.mean((out[lost] - want) ** 2) / np.mean(want**2)
    assert error < 0.05


def test_concealment_fades_and_is_silent_after_60_ms() -> None:
    plc = G711Plc()
    for frame in _frames(_voiced(120, 0.2)):
        plc.frame_ok(frame)
    concealed = [_samples(plc.conceal()) for _ in range(5)]
    rms = [float(np.sqrt(np.mean(c**2))) for c in concealed]
    assert rms[0] > rms[1] > rms[2] > 0  # 20 % less gain per 10 ms after the first 10 ms
    # Output lags 30 samples, so the last non-zero synthetic sample leaves in frame 4.
    assert not concealed[3][30:].any()
    assert not concealed[4].any()
    assert plc.muted and plc.concealing


def test_first_real_frame_after_a_loss_is_cross_faded_then_exact() -> None:
    signal = _voiced(150, 0.5)
    plc = G711Plc()
    frames = _frames(signal)
    out = _run(plc, frames, {10, 11})
    d = plc.delay_samples
    # The merge lasts at most 10 ms into frame 12; from then on the real signal.
    after = 12 * FRAME + 80 + d
    np.testing.assert_array_equal(out[after:], np.rint(signal)[after - d : len(out) - d])
    assert not plc.concealing


def test_no_click_at_the_edges_of_a_loss() -> None:
    signal = _voiced(140, 0.6)
    plc = G711Plc()
    out = _run(plc, _frames(signal), {8, 20, 21})
    natural = np.max(np.abs(np.diff(signal)))
    # (skip the step from the delay line's initial zeros into the tone)
    assert np.max(np.abs(np.diff(out[plc.delay_samples :]))) <= 1.3 * natural


def test_concealment_beats_silence_on_a_voiced_signal() -> None:
    signal = _voiced(110, 1.0)
    frames = _frames(signal)
    lost = set(range(5, 50, 7))
    plc = G711Plc()
    out = _run(plc, frames, lost)
    d = plc.delay_samples
    ref = signal[: len(out) - d]
    zero_filled = np.concatenate(
        [
            np.zeros(FRAME) if i in lost else signal[i * FRAME : (i + 1) * FRAME]
            for i in range(len(frames))
        ]
    )
    plc_error = np.sum((out[d:] - ref) ** 2)
    zero_error = np.sum((zero_filled[: len(ref)] - ref) ** 2)
    assert plc_error < 0.25 * zero_error


def test_silence_conceals_to_silence() -> None:
    plc = G711Plc()
    assert plc.conceal() == bytes(320)
    assert plc.frame_ok(bytes(320)) == bytes(320)


def test_splice_after_dropped_frames_is_smooth() -> None:
    signal = _voiced(125, 0.5)
    frames = _frames(signal)
    plc = G711Plc()
    out = [plc.frame_ok(f, discontinuity=(i == 11)) for i, f in enumerate(frames) if i != 10]
    jumps = np.abs(np.diff(_samples(b"".join(out))[plc.delay_samples :]))
    assert jumps.max() <= 1.3 * np.max(np.abs(np.diff(signal)))
    assert not plc.concealing


def test_sixteen_khz_scales_every_length() -> None:
    plc = G711Plc(16000)
    assert plc.delay_samples == 60
    signal = _voiced(150, 0.3, rate=16000)
    frames = _frames(signal, 320)
    for frame in frames[:5]:
        assert len(plc.frame_ok(frame)) == 640
    assert plc._find_pitch(plc._history_array()) == pytest.approx(16000 / 150, abs=1)
    assert len(plc.conceal()) == 640
    assert len(plc.conceal(480)) == 960


def test_bad_sizes_are_refused() -> None:
    plc = G711Plc()
    with pytest.raises(ValueError, match="multiple of 80 samples"):
        plc.conceal(100)
    with pytest.raises(ValueError, match="even number of bytes"):
        plc.frame_ok(b"\x00")
    with pytest.raises(ValueError, match="8000 or 16000"):
        G711Plc(44100)


def test_reset_forgets_history() -> None:
    plc = G711Plc()
    for frame in _frames(_voiced(120, 0.1)):
        plc.frame_ok(frame)
    plc.reset()
    assert plc.conceal() == bytes(320)


@settings(max_examples=60, deadline=None)
@given(
    pattern=st.lists(st.booleans(), min_size=1, max_size=40),
    f0=st.floats(60, 220),
    amp=st.floats(100, 30000),
    frame_ms=st.sampled_from([10, 20, 30]),
)
def test_any_loss_pattern_keeps_frame_sizes_and_stays_in_range(
    pattern: list[bool], f0: float, amp: float, frame_ms: int
) -> None:
    size = RATE * frame_ms // 1000
    signal = np.clip(_voiced(f0, 1.0, amp=amp), -32768, 32767)
    frames = _frames(signal, size)
    plc = G711Plc()
    for frame, lost in zip(frames, pattern, strict=False):
        out = plc.conceal(size) if lost else plc.frame_ok(frame)
        assert len(out) == 2 * size
        # Concealment repeats and fades the past; it never grows louder than the input.
        assert np.max(np.abs(_samples(out))) <= np.max(np.abs(signal)) + 1


def test_output_is_the_same_sample_for_sample_as_the_plain_numpy_version() -> None:
    """The cached ramps and clipping ufuncs change the cost, not one sample: replayed
    against the formulas they replaced, over losses, long losses and dropped frames."""

    def crossfade(fade_out: np.ndarray, fade_in: np.ndarray) -> np.ndarray:
        w = np.arange(1, len(fade_out) + 1, dtype=np.float64) / len(fade_out)
        return fade_out * (1.0 - w) + fade_in * w

    def to_pcm(samples: np.ndarray) -> bytes:
        return np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()

    rng = np.random.default_rng(5)
    t = np.arange(RATE * 8) / RATE
    sig = np.clip(_voiced(130.0, 8.0, amp=9000.0) * (np.sin(2 * np.pi * 0.7 * t) > -0.5)
                  + rng.normal(0, 300, len(t)), -32768, 32767).astype("<i2").tobytes()
    fast = G711Plc(RATE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plc_module, "_crossfade", crossfade)
        mp.setattr(plc_module, "round_to_pcm", to_pcm)
        plain = G711Plc(RATE)
        expected = []
        draws = rng.random(len(sig) // 320)
        for k, r in enumerate(draws):
            frame = sig[320 * k : 320 * (k + 1)]
            expected.append(plain.conceal() if r < 0.2 else plain.frame_ok(frame, r > 0.97))
    for k, r in enumerate(draws):
        frame = sig[320 * k : 320 * (k + 1)]
        got = fast.conceal() if r < 0.2 else fast.frame_ok(frame, r > 0.97)
        assert got == expected[k], k
