"""What a load-test caller hears, frame by frame: when the reply starts and when it stops.

Pure, incremental trackers fed one received 20 ms frame at a time (arrival time, loud or
not), so a generator can act on them while the call runs (talk over the answer once it
has started) and the same code judges a capture afterwards:

- ReplyTracker: response latency. mode "answer": end of the question -> the first loud
  frame of a reply that starts after it (a greeting or reply still sounding when the
  question ends is not the answer). mode "echo": start of the question -> its first
  loud frame (the echo agent talks while you talk, so its delay is the number).
- BargeinTracker: a second utterance sent at `sent_at` over the reply -> the end of the
  loud run in progress then (the last loud frame before STOP_SILENCE_S of quiet, plus
  its 20 ms). None when the bot was not talking at the onset.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LOUD_DBFS", "STOP_SILENCE_S", "BargeinTracker", "ReplyTracker", "frame_dbfs",
           "loud_frames"]

FRAME_S = 0.02
LOUD_DBFS = -45.0  # a reply frame this loud is audio, not line noise or silence
STOP_SILENCE_S = 0.6  # the bot counts as stopped after this long without loud audio
TALKING_WINDOW_S = 0.2  # "talking at the onset": a loud frame within this before it


def frame_dbfs(pcm: bytes | np.ndarray) -> float:
    """RMS level of int16 PCM in dBFS (-inf for digital silence)."""
    x = np.frombuffer(pcm, "<i2") if isinstance(pcm, bytes | bytearray) else pcm
    if not len(x):
        return -math.inf
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    return 20 * math.log10(rms / 32768) if rms > 0 else -math.inf


def loud_frames(pcm: np.ndarray, samples: int = 160) -> list[bool]:
    """Per whole frame of `samples`: louder than LOUD_DBFS?"""
    n = len(pcm) // samples
    return [frame_dbfs(pcm[i * samples:(i + 1) * samples]) > LOUD_DBFS for i in range(n)]


class ReplyTracker:
    def __init__(self, mode: str = "answer") -> None:
        if mode not in ("answer", "echo"):
            raise ValueError(f"mode must be answer or echo, got {mode!r}")
        self.mode = mode
        self.started: float | None = None  # the question's first voiced frame left then
        self.ended: float | None = None  # and its last one
        self.onset: float | None = None
        self._prev_loud = False
        self._skipping = False

    def question_started(self, t: float) -> None:
        self.started = t

    def question_ended(self, t: float) -> None:
        self.ended = t
        self._skipping = self._prev_loud  # a run sounding now is not the reply

    @property
    def question(self) -> tuple[float, float] | None:
        if self.started is None or self.ended is None:
            return None
        return self.started, self.ended

    def frame(self, t: float, loud: bool) -> None:
        if self.onset is not None:
            return
        if self.mode == "echo":
            if self.started is not None and loud and t >= self.started:
                self.onset = t
            return
        if self.ended is None or t < self.ended:
            self._prev_loud = loud
            return
        if self._skipping:
            self._skipping = loud
            return
        if loud:
            self.onset = t

    @property
    def latency(self) -> float | None:
        """Seconds from the end (answer) or start (echo) of the question to the reply."""
        since = self.ended if self.mode == "answer" else self.started
        return None if self.onset is None or since is None else self.onset - since


class BargeinTracker:
    def __init__(self) -> None:
        self.sent_at: float | None = None
        self.clear_at: float | None = None
        self.talking_at_onset: bool | None = None
        self._last_loud: float | None = None
        self._run_end: float | None = None  # last loud frame of the run that was cut
        self.stopped_at: float | None = None

    def talking(self, t: float) -> bool:
        """Was a loud frame received within TALKING_WINDOW_S before `t`?"""
        return self._last_loud is not None and t - self._last_loud <= TALKING_WINDOW_S

    def interruption_sent(self, t: float) -> None:
        self.sent_at = t
        recent = self.talking(t)
        self.talking_at_onset = recent
        self._run_end = self._last_loud if recent else None

    def clear(self, t: float) -> None:
        if self.sent_at is not None and self.clear_at is None and t >= self.sent_at:
            self.clear_at = t

    def frame(self, t: float, loud: bool) -> None:
        if self.sent_at is None or not self.talking_at_onset:
            if loud:
                self._last_loud = t
            return
        if self.stopped_at is not None:
            return
        assert self._run_end is not None
        if loud and t - self._run_end < STOP_SILENCE_S:
            self._run_end = t
        elif t - self._run_end >= STOP_SILENCE_S:
            self.stopped_at = self._run_end + FRAME_S

    def finish(self) -> None:
        """The call ended: a run cut by the barge-in and not followed by more frames
        stopped at its last loud frame."""
        if self.talking_at_onset and self.stopped_at is None and self._run_end is not None:
            self.stopped_at = self._run_end + FRAME_S

    @property
    def clear_latency(self) -> float | None:
        return None if self.clear_at is None or self.sent_at is None else \
            self.clear_at - self.sent_at

    @property
    def stop_latency(self) -> float | None:
        if self.stopped_at is None or self.sent_at is None:
            return None
        return max(0.0, self.stopped_at - self.sent_at)
