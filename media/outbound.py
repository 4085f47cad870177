"""The door-agnostic outbound audio queue behind CallLeg.send_audio / clear_audio.

Audio arrives at whatever rate its producer speaks (TTS at 22050, prompts at 8000, the
pipeline at 16000), is resampled once straight to the door's wire rate and cut into
exact 20 ms frames; the door pops one frame per pacer tick. Marks ride in the queue
between frames, so a mark comes back from pop() the moment the last frame queued before
it goes out, and from clear() (as not played) at barge-in.

Pure and synchronous: no clock, no I/O; O(1) work per frame on pop.
"""

from __future__ import annotations

from collections import deque

from media.resample import FrameChunker, StreamResampler

__all__ = ["FRAME_MS", "STEADY_RATES", "OutboundAudio"]

FRAME_MS = 20
# Producers at the pipeline's rates (the echo agent, `switchboard call`, 8 kHz prompts)
# may push 20 ms at a time with no mark for a long while, so they keep the steady
# resampler. TTS voices (22050, 24000 Hz) push whole sentences and close each piece of an
# answer with a mark, which drains the filter: they get soxr's block engine, 3-6 µs per
# frame instead of 16-30, whose burstiness (up to ~80 ms held back until the next push
# or mark) costs them nothing. See media.resample.
STEADY_RATES = frozenset({8000, 16000})


class OutboundAudio:
    """FIFO of 20 ms int16 mono frames at `wire_rate`, with marks between frames.

    The queue holds `bytes` (a frame) and `str` (a mark) items in play order; the two
    types never mix, so no wrapper object is allocated per item.
    """

    __slots__ = (
        "_chunker",
        "_frames",
        "_last_rate",
        "_queue",
        "_resamplers",
        "frame_bytes",
        "wire_rate",
    )

    def __init__(self, wire_rate: int) -> None:
        if wire_rate <= 0 or wire_rate * FRAME_MS % 1000:
            raise ValueError(f"wire rate {wire_rate} Hz has no whole 20 ms frame")
        self.wire_rate = wire_rate
        self.frame_bytes = wire_rate * FRAME_MS // 1000 * 2
        self._queue: deque[bytes | str] = deque()
        self._frames = 0
        # One streaming resampler per source rate, kept across pushes so consecutive
        # chunks of one utterance join without a click.
        self._resamplers: dict[int, StreamResampler] = {}
        self._last_rate: int | None = None
        self._chunker = FrameChunker(self.frame_bytes)

    def push(self, pcm: bytes, rate: int, mark: str | None = None) -> None:
        """Queue int16 mono `pcm` sampled at `rate`; then `mark`, if given.

        A mark promises that everything pushed before it is played before it fires, so
        it drains the resampler's filter tail and pads the trailing partial frame with
        silence. Without a mark, the partial frame waits for the next push.
        """
        if len(pcm) % 2:
            raise ValueError(f"PCM16 must have an even number of bytes, got {len(pcm)}")
        if rate != self._last_rate:
            # A new source rate: finish the previous stream first so order is kept.
            self._drain_resampler()
            self._last_rate = rate
        if pcm:
            resampler = self._resamplers.get(rate)
            if resampler is None:
                resampler = self._resamplers[rate] = StreamResampler(
                    rate, self.wire_rate, steady=rate in STEADY_RATES
                )
            self._append_frames(resampler.process(pcm))
        if mark is not None:
            self.flush()
            self._queue.append(mark)

    def flush(self) -> None:
        """Push out everything held back: the resampler tail and a padded partial frame."""
        self._drain_resampler()
        last = self._chunker.flush()
        if last:
            self._queue.append(last)
            self._frames += 1

    def pop(self) -> tuple[bytes | None, list[str]]:
        """The next frame to send (None when no whole frame is queued) and the marks
        whose audio has now all been sent."""
        queue = self._queue
        marks: list[str] = []
        if not queue:
            return None, marks
        while queue and type(queue[0]) is str:
            marks.append(queue.popleft())  # type: ignore[arg-type]
        frame: bytes | None = None
        if queue:
            frame = queue.popleft()  # type: ignore[assignment]
            self._frames -= 1
            while queue and type(queue[0]) is str:
                marks.append(queue.popleft())  # type: ignore[arg-type]
        return frame, marks

    def clear(self) -> list[str]:
        """Barge-in: drop every queued frame and partial sample; return the marks that
        were waiting, in order (their audio was never heard)."""
        marks = [item for item in self._queue if type(item) is str]
        self._queue.clear()
        self._frames = 0
        self._chunker.clear()
        for resampler in self._resamplers.values():
            resampler.reset()
        self._last_rate = None
        return marks  # type: ignore[return-value]

    def queued_seconds(self) -> float:
        """Audio queued and not yet popped, including a partial frame."""
        queued = self._frames * self.frame_bytes + self._chunker.pending_bytes
        return queued / (2 * self.wire_rate)

    @property
    def queued_frames(self) -> int:
        return self._frames

    def __len__(self) -> int:
        return self._frames

    def _append_frames(self, pcm: bytes) -> None:
        if not pcm:
            return
        frames = self._chunker.push(pcm)
        self._queue.extend(frames)
        self._frames += len(frames)

    def _drain_resampler(self) -> None:
        if self._last_rate is None:
            return
        resampler = self._resamplers.get(self._last_rate)
        if resampler is not None:
            # Ends the stream; the next process() starts a fresh one.
            self._append_frames(resampler.flush())
