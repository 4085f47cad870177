"""The caller's side of a turn: collecting the utterance and transcribing it speculatively.

The collector follows the VAD's events frame by frame. From SpeechStart it keeps the
caller's frames, starting with the VAD's pre-roll so the first syllable is there. Once
the silence after speech has lasted `speculative_after_ms`, it starts ASR on the audio
so far; SpeechResumed throws that job away; at SpeechEnd the job is handed on with the
utterance when its audio is the whole utterance (no speech since it started), so most
of the ASR time hides inside the hangover.

The speculation keeps `tail` silent frames after the last speech frame, and so does the
final utterance: the two are the same bytes, and either transcript is the transcript.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from media.clock import Clock
from media.vad import EnergyVad, SpeechEnd, SpeechResumed, SpeechStart, VadEvent, VadState
from pipeline.asr import AsrResult
from pipeline.leg import FRAME_MS, PIPELINE_RATE
from pipeline.metrics import Metrics

_FRAME_S = FRAME_MS / 1000
GAP = bytes(PIPELINE_RATE // 5 * 2)  # 200 ms of silence between carried and new speech


@dataclass(eq=False, slots=True)
class Speculation:
    """ASR started on the utterance so far when the silence began."""

    task: asyncio.Task[AsrResult]
    started: float
    last_speech_frame: int
    finished: float | None = None  # when the result came back


@dataclass(frozen=True, slots=True)
class Utterance:
    audio: bytes  # 16 kHz PCM: carried audio, pre-roll, speech, `tail` silent frames
    speech_end: float  # clock time of the last speech frame
    speech_s: float  # onset to last speech frame
    spec: Speculation | None  # a speculative ASR over exactly `audio`, if one ran


class UtteranceCollector:
    def __init__(
        self,
        vad: EnergyVad,
        *,
        start_asr: Callable[[bytes], asyncio.Task[AsrResult]],
        metrics: Metrics,
        clock: Clock,
        speculative_after_ms: float,
        max_seconds: float,
    ) -> None:
        self.vad = vad
        self._start_asr = start_asr
        self.metrics = metrics
        self.clock = clock
        self.spec_frames = max(1, -(-round(speculative_after_ms) // FRAME_MS))
        runs = self.spec_frames < vad.hangover_frames
        self.tail = self.spec_frames if runs else min(3, vad.hangover_frames)
        self._max_frames = max(1, round(max_seconds / _FRAME_S))
        self._frames: list[bytes] | None = None  # caller frames since the pre-roll
        self._first = 0  # VAD frame index of _frames[0]
        self.spec: Speculation | None = None
        # An utterance interrupted before it was transcribed: said again with the next one.
        self.carry = b""

    @property
    def collecting(self) -> bool:
        """The caller is speaking (or pausing within an utterance)."""
        return self._frames is not None

    def push(self, pcm: bytes, ev: VadEvent | None, speculate: bool = True) -> Utterance | None:
        """After vad.process(pcm) gave `ev`: returns the utterance at its SpeechEnd."""
        if self._frames is not None and len(self._frames) < self._max_frames:
            self._frames.append(pcm)
        if isinstance(ev, SpeechStart):
            self._frames = list(ev.preroll)  # ends with this frame
            self._first = ev.frame - len(ev.preroll) + 1
        elif isinstance(ev, SpeechResumed):
            self.drop_speculation("discarded")
        elif isinstance(ev, SpeechEnd):
            return self._end(ev)
        elif (
            speculate
            and self.spec is None
            and self.vad.state is VadState.STOPPING
            and self.vad.silence_frames >= self.spec_frames
        ):
            self._speculate()
        return None

    def _speculate(self) -> None:
        assert self._frames is not None
        task = self._start_asr(self.carry + b"".join(self._frames))
        last = self.vad.frame_index - self.vad.silence_frames
        spec = self.spec = Speculation(task, self.clock.now(), last)
        task.add_done_callback(lambda _: setattr(spec, "finished", self.clock.now()))

    def drop_speculation(self, outcome: str = "discarded") -> None:
        if self.spec is not None:
            self.spec.task.cancel()
            self.spec = None
            self.metrics.asr_speculative_total.labels(outcome=outcome).inc()

    def _end(self, ev: SpeechEnd) -> Utterance:
        frames, self._frames = self._frames or [], None
        keep = ev.last_speech_frame - self._first + 1 + self.tail
        audio = self.carry + b"".join(frames[:keep])
        self.carry = b""
        spec = self.spec
        if spec is not None and spec.last_speech_frame == ev.last_speech_frame:
            self.spec = None
            self.metrics.asr_speculative_total.labels(outcome="used").inc()
        else:
            self.drop_speculation("discarded")
            spec = None
        speech_end = self.clock.now() - (ev.frame - ev.last_speech_frame) * _FRAME_S
        return Utterance(audio, speech_end, ev.speech_frames * _FRAME_S, spec)
