"""OutboundAudio: resample once, exact 20 ms frames, marks between frames, clear at barge-in."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.outbound import OutboundAudio
from media.resample import StreamResampler


def tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 8000.0) -> bytes:
    n = round(rate * seconds)
    return struct.pack(f"<{n}h", *(round(amp * math.sin(2 * math.pi * freq * i / rate))
                                   for i in range(n)))


def drain(out: OutboundAudio) -> list[tuple[bytes | None, list[str]]]:
    popped = []
    while True:
        frame, marks = out.pop()
        if frame is None and not marks:
            return popped
        popped.append((frame, marks))


def test_frames_are_exact_20ms_at_wire_rate() -> None:
    out = OutboundAudio(8000)
    assert out.frame_bytes == 320
    out.push(bytes(320 * 5), 8000)
    frames = drain(out)
    assert [len(f) for f, _ in frames] == [320] * 5
    assert out.pop() == (None, [])


def test_mark_after_last_frame_with_partial_padded() -> None:
    out = OutboundAudio(8000)
    pcm = b"\x01\x02" * 400  # 50 ms: two frames and a half
    out.push(pcm, 8000, mark="end")
    popped = drain(out)
    assert [m for _, m in popped] == [[], [], ["end"]]
    last = popped[-1][0]
    assert last is not None
    assert last[:160] == b"\x01\x02" * 80 and last[160:] == bytes(160)


def test_partial_frame_waits_for_more_audio_without_mark() -> None:
    out = OutboundAudio(8000)
    out.push(b"\x05\x00" * 100, 8000)
    assert out.pop() == (None, [])
    assert out.queued_seconds() == pytest.approx(100 / 8000)
    out.push(b"\x05\x00" * 60, 8000)
    frame, marks = out.pop()
    assert frame == b"\x05\x00" * 160 and marks == []


def test_mark_on_empty_queue_is_played_at_next_pop() -> None:
    out = OutboundAudio(16000)
    out.push(b"", 16000, mark="a")
    out.push(b"", 16000, mark="b")
    assert out.pop() == (None, ["a", "b"])
    assert out.pop() == (None, [])


def test_marks_between_frames_in_order() -> None:
    out = OutboundAudio(16000)
    frame = bytes(640)
    out.push(frame, 16000, mark="one")
    out.push(frame * 2, 16000, mark="two")
    out.push(b"", 16000, mark="three")
    assert out.pop() == (frame, ["one"])
    assert out.pop() == (frame, [])
    assert out.pop() == (frame, ["two", "three"])


def test_clear_returns_pending_marks_and_resets() -> None:
    out = OutboundAudio(8000)
    out.push(b"\x07\x00" * 500, 8000, mark="m1")
    out.push(b"\x07\x00" * 100, 8000, mark="m2")
    out.push(b"\x07\x00" * 50, 8000)  # partial, no mark
    out.pop()
    assert out.clear() == ["m1", "m2"]
    assert out.queued_seconds() == 0.0 and len(out) == 0
    assert out.pop() == (None, [])
    # No partial sample left over from before the clear.
    out.push(b"\x09\x00" * 160, 8000)
    assert out.pop() == (b"\x09\x00" * 160, [])


def test_clear_resets_the_resampler() -> None:
    out = OutboundAudio(8000)
    out.push(tone(22050, 0.1), 22050)
    out.clear()
    fresh = OutboundAudio(8000)
    pcm = tone(22050, 0.2, freq=300)
    out.push(pcm, 22050, mark="x")
    fresh.push(pcm, 22050, mark="x")
    got, want = drain(out), drain(fresh)
    assert got == want  # no dither: the same input gives the same bytes


def test_queued_seconds_counts_frames_and_partial() -> None:
    out = OutboundAudio(8000)
    out.push(bytes(1600), 8000)  # 100 ms
    assert out.queued_seconds() == pytest.approx(0.1)
    out.pop()
    assert out.queued_seconds() == pytest.approx(0.08)
    out.push(bytes(100), 8000)
    assert out.queued_seconds() == pytest.approx(0.08 + 50 / 8000)


def test_resamples_once_and_keeps_state_across_pushes() -> None:
    pcm = tone(22050, 0.5)
    whole = StreamResampler(22050, 8000, steady=False)  # the engine TTS rates get
    expected = np.frombuffer(whole.process(pcm) + whole.flush(), dtype="<i2").astype(int)

    out = OutboundAudio(8000)
    step = 882  # 40 ms chunks, as a TTS stream would deliver
    for i in range(0, len(pcm), step):
        out.push(pcm[i : i + step], 22050)
    out.push(b"", 22050, mark="done")
    frames = drain(out)
    joined = b"".join(f for f, _ in frames if f is not None)
    assert frames[-1][1] == ["done"]
    got = np.frombuffer(joined, dtype="<i2").astype(int)
    # One resampler over the whole utterance, then silence padding to the frame; the
    # mark drained everything pushed before it. Compared within rounding; a filter
    # restarted per chunk would be off by thousands.
    assert len(expected) <= len(got) < len(expected) + 160
    assert np.abs(got[: len(expected)] - expected).max() <= 4
    assert not got[len(expected) :].any()


@pytest.mark.parametrize(("rate", "wire"), [(22050, 8000), (22050, 16000), (24000, 8000)])
def test_a_tts_sentence_starts_playing_at_once(rate: int, wire: int) -> None:
    """TTS rates get the bursty block engine: a sentence-sized push must still come out
    at once but for a short tail, and its mark must release that tail."""
    out = OutboundAudio(wire)
    out.push(tone(rate, 1.0), rate)
    assert out.queued_seconds() >= 0.9  # at most 100 ms held back in the filter
    out.push(tone(rate, 0.02), rate, mark="end")
    assert out.queued_frames == 51  # 1.02 s, the partial last frame padded
    assert [m for _, m in drain(out)][-1] == ["end"]


@pytest.mark.parametrize("wire", [8000, 16000])
def test_real_time_producers_get_one_frame_per_push(wire: int) -> None:
    """The echo agent and `switchboard call` push 20 ms at 16 kHz with no marks: after
    the filter's start every push yields a frame (no burst that holds audio back)."""
    out = OutboundAudio(wire)
    pcm = tone(16000, 1.0)
    got = []
    for i in range(0, len(pcm), 640):
        out.push(pcm[i : i + 640], 16000)
        got.append(out.pop()[0] is not None)
    assert all(got[2:])


def test_resampled_tone_keeps_its_frequency() -> None:
    out = OutboundAudio(8000)
    out.push(tone(24000, 1.0, freq=500), 24000, mark="e")
    joined = b"".join(f for f, _ in drain(out) if f is not None)
    samples = np.frombuffer(joined, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples[:8000]))
    assert abs(np.argmax(spectrum) * 8000 / 8000 - 500) <= 2


def test_rate_switch_keeps_order() -> None:
    out = OutboundAudio(16000)
    out.push(b"\x10\x00" * 320, 16000)
    out.push(tone(8000, 0.04, amp=0), 8000, mark="m")
    frames = drain(out)
    assert frames[0] == (b"\x10\x00" * 320, [])
    assert frames[-1][1] == ["m"]


def test_rejects_odd_pcm_and_bad_rate() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        OutboundAudio(8000).push(b"\x00", 8000)
    with pytest.raises(ValueError, match="no whole 20 ms frame"):
        OutboundAudio(8001)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 900), st.booleans()), max_size=20))
def test_frames_and_marks_preserve_order(pushes: list[tuple[int, bool]]) -> None:
    out = OutboundAudio(16000)
    expected = bytearray()
    pending = 0
    expected_marks: list[str] = []
    value = 0
    for i, (samples, with_mark) in enumerate(pushes):
        pcm = b"".join(struct.pack("<h", (value + k) % 30000) for k in range(samples))
        value += samples
        mark = f"m{i}" if with_mark else None
        out.push(pcm, 16000, mark=mark)
        expected += pcm
        pending = (pending + len(pcm)) % 640
        if mark:
            if pending:
                expected += bytes(640 - pending)
                pending = 0
            expected_marks.append(mark)
    popped = drain(out)
    audio = b"".join(f for f, _ in popped if f is not None)
    assert all(f is None or len(f) == 640 for f, _ in popped)
    assert audio == bytes(expected[: len(audio)])
    assert len(expected) - len(audio) == pending
    assert [m for _, ms in popped for m in ms] == expected_marks
