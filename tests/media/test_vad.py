"""EnergyVad: exact event timing in frames, pre-roll, floor adaptation, echo-aware barge-in.

Synthetic signals are built so that level changes fall on frame boundaries, which makes
the expected frame index of every event exact. Real speech comes from espeak-ng.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import resample_poly

from media.vad import (
    SILENCE_DBFS,
    EnergyVad,
    SilenceStart,
    SpeechEnd,
    SpeechResumed,
    SpeechStart,
    VadState,
    frame_samples,
    rms_dbfs,
)

RATES = (8000, 16000)


# -- signal helpers ------------------------------------------------------------------------


def amp(dbfs: float) -> float:
    """RMS amplitude in int16 units for a level in dBFS."""
    return 32768.0 * 10 ** (dbfs / 20)


def noise(rate: int, frames: int, dbfs: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, amp(dbfs), frames * frame_samples(rate))


def tone(rate: int, frames: int, dbfs: float, hz: float = 300.0) -> np.ndarray:
    t = np.arange(frames * frame_samples(rate)) / rate
    return amp(dbfs) * np.sqrt(2) * np.sin(2 * np.pi * hz * t)


def voiced(rate: int, frames: int, dbfs: float, seed: int = 1) -> np.ndarray:
    """Speech-like: noise amplitude-modulated at a syllable rate of 4 Hz, never fully
    silent within a frame, normalised so its overall RMS is `dbfs`."""
    n = frames * frame_samples(rate)
    t = np.arange(n) / rate
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    x = np.random.default_rng(seed).normal(0.0, 1.0, n) * envelope
    return x * amp(dbfs) / np.sqrt(np.mean(x**2))


def to_frames(rate: int, x: np.ndarray) -> list[bytes]:
    pcm = np.clip(np.round(x), -32768, 32767).astype("<i2")
    n = frame_samples(rate)
    return [pcm[i : i + n].tobytes() for i in range(0, len(pcm) - n + 1, n)]


def run(vad: EnergyVad, frames: list[bytes]) -> list[object]:
    return [e for f in frames if (e := vad.process(f)) is not None]


def kinds(events: list[object]) -> list[str]:
    return [type(e).__name__ for e in events]


# -- rms_dbfs and framing ---------------------------------------------------------------------


def test_rms_dbfs_reference_levels() -> None:
    assert rms_dbfs(np.full(320, -32768, "<i2").tobytes()) == 0.0
    assert rms_dbfs(bytes(640)) == SILENCE_DBFS
    assert rms_dbfs(b"") == SILENCE_DBFS
    sine = to_frames(16000, tone(16000, 1, -20.0, hz=1000.0))[0]
    assert rms_dbfs(sine) == pytest.approx(-20.0, abs=0.05)
    with pytest.raises(ValueError, match="even number of bytes, got 3"):
        rms_dbfs(b"\x00\x01\x02")


def test_frame_size_follows_rate() -> None:
    assert frame_samples(8000) == 160
    assert frame_samples(16000) == 320
    assert EnergyVad(8000).frame_bytes == 320
    assert EnergyVad(16000).frame_bytes == 640
    with pytest.raises(ValueError, match="needs 640-byte frames, got 320"):
        EnergyVad(16000).process(bytes(320))
    with pytest.raises(ValueError, match="whole number of samples"):
        frame_samples(11025)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="onset_ms=0 ms must be at least 20 ms"):
        EnergyVad(onset_ms=0)
    with pytest.raises(ValueError, match="webrtcvad needs a rate"):
        EnergyVad(24000, webrtc_mode=1)
    with pytest.raises(ValueError, match="webrtc_mode must be 0-3"):
        EnergyVad(16000, webrtc_mode=5)
    vad = EnergyVad(onset_ms=70, hangover_ms=300, preroll_ms=250)
    assert (vad.onset_frames, vad.hangover_frames, vad.preroll_frames) == (4, 15, 13)


# -- timing on synthetic signals ---------------------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("kind", ["tone", "voiced"])
def test_burst_timing_is_exact_in_frames(rate: int, kind: str) -> None:
    make = tone if kind == "tone" else voiced
    n = frame_samples(rate)
    x = np.concatenate([np.zeros(50 * n), make(rate, 50, -25.0), np.zeros(40 * n)])
    x = x + noise(rate, 140, -60.0)
    vad = EnergyVad(rate)  # onset 80 ms = 4 frames, hangover 300 ms = 15 frames
    events = run(vad, to_frames(rate, x))
    assert kinds(events) == ["SpeechStart", "SilenceStart", "SpeechEnd"]
    start, silence, end = events
    assert (start.onset_frame, start.frame, start.barge_in) == (50, 53, False)
    assert silence == SilenceStart(100)
    assert end == SpeechEnd(frame=114, onset_frame=50, last_speech_frame=99)
    assert end.speech_frames == 50
    assert vad.state is VadState.QUIET


@pytest.mark.parametrize("rate", RATES)
def test_preroll_holds_the_frames_before_and_during_onset(rate: int) -> None:
    x = np.concatenate([noise(rate, 30, -60.0), voiced(rate, 20, -25.0) + noise(rate, 20, -60.0)])
    frames = to_frames(rate, x)
    vad = EnergyVad(rate, preroll_ms=240)
    (start,) = run(vad, frames)
    assert isinstance(start, SpeechStart)
    assert start.preroll == tuple(frames[30 - 12 : start.frame + 1])
    assert start.audio == b"".join(frames[18:34])


def test_preroll_is_short_when_speech_starts_at_once() -> None:
    frames = to_frames(16000, np.concatenate([noise(16000, 3, -60.0), voiced(16000, 10, -25.0)]))
    (start,) = run(EnergyVad(16000), frames)
    assert start.onset_frame == 3
    assert start.preroll == tuple(frames[: start.frame + 1])


@pytest.mark.parametrize("rate", RATES)
def test_short_pause_resumes_the_same_utterance(rate: int) -> None:
    parts = [
        np.zeros(20 * frame_samples(rate)),
        voiced(rate, 20, -25.0),
        np.zeros(5 * frame_samples(rate)),  # 100 ms pause
        voiced(rate, 20, -25.0, seed=2),
        np.zeros(30 * frame_samples(rate)),
    ]
    x = np.concatenate(parts) + noise(rate, 95, -62.0)
    events = run(EnergyVad(rate), to_frames(rate, x))
    assert kinds(events) == [
        "SpeechStart",
        "SilenceStart",
        "SpeechResumed",
        "SilenceStart",
        "SpeechEnd",
    ]
    assert events[1] == SilenceStart(40)
    assert events[2] == SpeechResumed(frame=45, silence_frames=5)
    assert events[4] == SpeechEnd(frame=79, onset_frame=20, last_speech_frame=64)


def test_bursts_shorter_than_onset_are_ignored() -> None:
    rate = 16000
    parts = []
    for _ in range(10):  # 60 ms clicks/knocks every 400 ms
        parts += [np.zeros(17 * frame_samples(rate)), voiced(rate, 3, -20.0)]
    x = np.concatenate(parts) + noise(rate, 200, -60.0)
    vad = EnergyVad(rate)
    assert run(vad, to_frames(rate, x)) == []
    # A 60 ms onset would accept them.
    assert "SpeechStart" in kinds(run(EnergyVad(rate, onset_ms=60), to_frames(rate, x)))


def test_hangover_is_configurable() -> None:
    rate = 16000
    x = np.concatenate([voiced(rate, 30, -25.0), np.zeros(60 * frame_samples(rate))])
    x = np.concatenate([np.zeros(10 * frame_samples(rate)), x]) + noise(rate, 100, -60.0)
    (_, _, end) = run(EnergyVad(rate, hangover_ms=500), to_frames(rate, x))
    assert end == SpeechEnd(frame=64, onset_frame=10, last_speech_frame=39)


def test_hysteresis_keeps_speech_through_a_shallow_dip() -> None:
    rate = 16000
    # Floor about -60, threshold -50, speaking threshold -53: a dip to -51.5 stays speech.
    x = np.concatenate(
        [tone(rate, 20, -70.0), tone(rate, 10, -30.0), tone(rate, 3, -51.5), tone(rate, 10, -30.0)]
    )
    x = x + noise(rate, 43, -60.0)
    events = run(EnergyVad(rate, min_speech_dbfs=-70.0), to_frames(rate, x))
    assert kinds(events) == ["SpeechStart"]


# -- noise floor -------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("level", [-75.0, -60.0, -50.0, -40.0])
def test_steady_noise_never_triggers(rate: int, level: float) -> None:
    vad = EnergyVad(rate)
    assert run(vad, to_frames(rate, noise(rate, 500, level))) == []
    assert vad.floor_dbfs == pytest.approx(max(level, vad.floor_min_dbfs), abs=2.0)
    assert vad.probability < 0.05


@pytest.mark.parametrize("rate", RATES)
def test_slowly_rising_background_does_not_trigger(rate: int) -> None:
    n = frame_samples(rate)
    frames = 400  # 8 s: 1 s at -65 dBFS, then up 5 dB/s to -30 dBFS
    gain_db = np.concatenate([np.zeros(50 * n), np.linspace(0.0, 35.0, (frames - 50) * n)])
    x = noise(rate, frames, -65.0) * 10 ** (gain_db / 20)
    vad = EnergyVad(rate)
    assert run(vad, to_frames(rate, x)) == []
    assert vad.floor_dbfs == pytest.approx(-30.0, abs=3.0)
    # ... and speech well above the new floor is still heard.
    speech = voiced(rate, 30, -15.0) + noise(rate, 30, -30.0, seed=5)
    assert kinds(run(vad, to_frames(rate, speech)))[:1] == ["SpeechStart"]


def test_noise_step_is_absorbed_within_two_seconds() -> None:
    """A sudden louder background (a car passing, a fan) looks like speech at first; being
    stationary, the floor catches up fast and the false utterance ends."""
    rate = 16000
    x = np.concatenate([noise(rate, 50, -65.0), noise(rate, 300, -38.0, seed=3)])
    events = run(EnergyVad(rate), to_frames(rate, x))
    names = kinds(events)
    # While the floor closes in, the noise flickers around the threshold before the end.
    assert names.count("SpeechStart") == 1 and names[-1] == "SpeechEnd"
    assert events[-1].frame < 50 + 100


def test_long_steady_tone_becomes_background() -> None:
    rate = 8000
    x = np.concatenate([noise(rate, 20, -60.0), tone(rate, 400, -25.0, hz=425.0)])
    events = run(EnergyVad(rate), to_frames(rate, x))
    assert kinds(events) == ["SpeechStart", "SilenceStart", "SpeechEnd"]
    assert events[2].frame < 20 + 150


def test_floor_falls_quickly_after_loud_noise() -> None:
    rate = 16000
    vad = EnergyVad(rate)
    run(vad, to_frames(rate, noise(rate, 200, -35.0)))
    run(vad, to_frames(rate, noise(rate, 10, -65.0, seed=4)))  # 200 ms of quiet
    assert vad.floor_dbfs is not None and vad.floor_dbfs < -60.0
    events = run(vad, to_frames(rate, voiced(rate, 10, -40.0) + noise(rate, 10, -65.0)))
    assert kinds(events)[:1] == ["SpeechStart"]


def test_digital_silence_does_not_sink_the_floor() -> None:
    rate = 16000
    vad = EnergyVad(rate)
    run(vad, to_frames(rate, noise(rate, 100, -55.0)))
    run(vad, [bytes(640)] * 10)  # a dropout filled with zeros
    assert vad.floor_dbfs == pytest.approx(vad.floor_min_dbfs, abs=1.0)
    # Back to the old noise: stationary, so the floor recovers before anything triggers.
    assert run(vad, to_frames(rate, noise(rate, 300, -55.0, seed=6))) == []


# -- echo-aware barge-in ------------------------------------------------------------------------


def feed_with_far_end(vad: EnergyVad, near: list[bytes], far: list[bytes]) -> list[object]:
    events = []
    for i, frame in enumerate(near):
        if i < len(far):
            vad.note_far_end(far[i])
        if (event := vad.process(frame)) is not None:
            events.append(event)
    return events


def test_short_burst_needs_barge_in_duration_while_bot_talks() -> None:
    rate = 16000
    far = to_frames(rate, voiced(rate, 80, -24.0, seed=9))
    burst = np.concatenate([noise(rate, 30, -60.0), voiced(rate, 8, -22.0), noise(rate, 42, -60.0)])
    near = to_frames(rate, burst)  # 160 ms of loud caller audio, no echo at all
    assert feed_with_far_end(EnergyVad(rate), near, far) == []  # barge-in needs 240 ms
    start = feed_with_far_end(EnergyVad(rate), near, [])[0]
    assert (start.onset_frame, start.barge_in) == (30, False)
    long_burst = near[:30] + to_frames(rate, voiced(rate, 16, -22.0)) + near[46:]
    start = feed_with_far_end(EnergyVad(rate), long_burst, far)[0]
    assert (start.onset_frame, start.frame, start.barge_in) == (30, 41, True)


def test_echo_tail_holds_then_releases() -> None:
    vad = EnergyVad(16000, echo_tail_ms=100)
    vad.set_far_end_level(-20.0)
    vad.process(bytes(640))
    assert vad.far_end_dbfs == -20.0 and vad.bot_audible
    for _ in range(4):
        vad.process(bytes(640))
    assert vad.far_end_dbfs == -20.0  # still within the 100 ms (5 frame) tail
    vad.process(bytes(640))
    assert vad.far_end_dbfs == SILENCE_DBFS and not vad.bot_audible


# -- real speech (espeak-ng) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Two sentences from espeak-ng at 22050 Hz, as float arrays."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    out: dict[str, np.ndarray] = {}
    texts = {
        "bot": (
            "en-us",
            "Thanks for calling. Our opening hours are nine to five, Monday to Friday.",
        ),
        "caller": ("en-gb", "Hello, I would like to book a table for two people tonight."),
    }
    for name, (voice, text) in texts.items():
        path: Path = tmp_path_factory.mktemp("espeak") / f"{name}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
        with wave.open(str(path)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (22050, 1, 2)
            out[name] = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
    return out


def at_rate(x: np.ndarray, rate: int, dbfs: float) -> np.ndarray:
    """Resample 22050 Hz speech to `rate` and scale its active-speech RMS to `dbfs`."""
    y = resample_poly(x, rate // 50, 441)
    active = y[np.abs(y) > 0.01 * np.abs(y).max()]
    return y * amp(dbfs) / np.sqrt(np.mean(active**2))


def active_frames(rate: int, x: np.ndarray, dbfs: float = -50.0) -> tuple[int, int]:
    levels = [rms_dbfs(f) for f in to_frames(rate, x)]
    loud = [i for i, v in enumerate(levels) if v > dbfs]
    return loud[0], loud[-1]


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("webrtc_mode", [None, 2])
def test_real_speech_is_one_utterance(
    speech: dict[str, np.ndarray], rate: int, webrtc_mode: int | None
) -> None:
    n = frame_samples(rate)
    clean = at_rate(speech["caller"], rate, -24.0)
    lead = 30 * n
    x = np.concatenate([np.zeros(lead), clean, np.zeros(40 * n)])
    x = x[: len(x) // n * n] + np.random.default_rng(7).normal(0.0, amp(-60.0), len(x) // n * n)
    first, last = active_frames(rate, np.concatenate([np.zeros(lead), clean]))
    events = run(EnergyVad(rate, webrtc_mode=webrtc_mode), to_frames(rate, x))
    starts = [e for e in events if isinstance(e, SpeechStart)]
    ends = [e for e in events if isinstance(e, SpeechEnd)]
    assert len(starts) == 1 and len(ends) == 1, kinds(events)
    start, end = starts[0], ends[0]
    assert first <= start.onset_frame <= first + 3
    assert start.frame - start.onset_frame + 1 == 4
    # The pre-roll reaches back 240 ms before the onset: the first syllable is in it.
    assert start.onset_frame - (len(start.preroll) - 4) <= first - 10
    assert last - 3 <= end.last_speech_frame <= last
    assert end.frame == end.last_speech_frame + 15
    assert all(isinstance(e, SilenceStart | SpeechResumed) for e in events[1:-1])


@pytest.mark.parametrize("rate", RATES)
def test_bot_echo_does_not_barge_in_but_caller_does(
    speech: dict[str, np.ndarray], rate: int
) -> None:
    n = frame_samples(rate)
    bot = at_rate(speech["bot"], rate, -18.0)
    bot = bot[: len(bot) // n * n]
    echo_delay = 4 * n  # 80 ms round trip
    echo = np.concatenate([np.zeros(echo_delay), bot])[: len(bot)] * 10 ** (-20 / 20)
    background = np.random.default_rng(8).normal(0.0, amp(-60.0), len(bot))
    far = to_frames(rate, bot)

    # Echo only, 20 dB down: without the far-end level it would be taken for speech...
    near_echo = to_frames(rate, echo + background)
    assert "SpeechStart" in kinds(run(EnergyVad(rate), near_echo))
    # ...with it, nothing triggers.
    assert feed_with_far_end(EnergyVad(rate), near_echo, far) == []

    # The caller talks over the bot at a normal level, one second in.
    caller = at_rate(speech["caller"], rate, -24.0)
    offset = 50 * n
    over = np.zeros(len(bot))
    over[offset : offset + len(caller)] = caller[: len(bot) - offset]
    first, _ = active_frames(rate, over)
    events = feed_with_far_end(EnergyVad(rate), to_frames(rate, echo + background + over), far)
    start = events[0]
    assert isinstance(start, SpeechStart) and start.barge_in
    assert first <= start.onset_frame and start.frame <= first + 25  # within half a second


# -- properties ---------------------------------------------------------------------------------

segments = st.lists(
    st.tuples(st.sampled_from([-90.0, -65.0, -50.0, -35.0, -20.0]), st.integers(1, 40)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(segments=segments, rate=st.sampled_from(RATES))
def test_events_are_well_formed_and_deterministic(
    segments: list[tuple[float, int]], rate: int
) -> None:
    x = np.concatenate([voiced(rate, k, level, seed=i) for i, (level, k) in enumerate(segments)])
    frames = to_frames(rate, x)
    a, b = EnergyVad(rate), EnergyVad(rate)
    events = run(a, frames)
    assert events == run(b, frames)
    # Grammar: (SpeechStart (SilenceStart SpeechResumed)* SilenceStart SpeechEnd)* and a tail.
    expect = {"SpeechStart": {"SilenceStart"}, "SilenceStart": {"SpeechResumed", "SpeechEnd"}}
    expect |= {"SpeechResumed": {"SilenceStart"}, "SpeechEnd": {"SpeechStart"}}
    names = kinds(events)
    assert names[:1] in ([], ["SpeechStart"])
    for prev, nxt in itertools.pairwise(names):
        assert nxt in expect[prev], names
    frames_seen = [e.frame for e in events]
    assert frames_seen == sorted(frames_seen) and len(set(frames_seen)) == len(frames_seen)
    for e in events:
        if isinstance(e, SpeechStart):
            assert len(e.preroll) <= a.preroll_frames + a.onset_frames
            assert e.preroll[-1] == frames[e.frame]
