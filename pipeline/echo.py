"""The echo agent: plays the caller's own audio back after a short delay.

It is the media test (you hear yourself, so both directions, the codec, the jitter
buffer and the pacing all work) and the capacity test (no models: what is left is the
per-call cost of the media path). So the per-frame work is one deque append, one
popleft and one send_audio.
"""

from __future__ import annotations

from collections import deque

from pipeline.leg import FRAME_BYTES, FRAME_MS, PIPELINE_RATE, CallLeg

__all__ = ["EchoHandler"]


class EchoHandler:
    """CallHandler that returns each 16 kHz frame `delay` seconds later.

    The delay is counted in frames, not read from a clock: on_frame is called once per
    20 ms (concealed frames included), so the frame count is the time. The first
    `delay` seconds go out as nothing; the leg fills with silence itself.
    """

    def __init__(self, delay: float = 0.3, echo_dtmf: bool = True) -> None:
        if not 0 <= delay <= 10:
            raise ValueError(f"echo delay must be 0..10 s, got {delay}")
        self.delay_frames = round(delay * 1000 / FRAME_MS)
        self.echo_dtmf = echo_dtmf
        self.leg: CallLeg | None = None
        self.frames_in = 0
        self.digits: list[str] = []
        self.ended: str | None = None
        self._line: deque[bytes] = deque()

    async def on_start(self, leg: CallLeg) -> None:
        self.leg = leg

    def on_frame(self, pcm: bytes) -> None:
        leg = self.leg
        if leg is None or self.ended is not None:
            return
        if len(pcm) != FRAME_BYTES:
            raise ValueError(f"pipeline frames are {FRAME_BYTES} bytes, got {len(pcm)}")
        self.frames_in += 1
        line = self._line
        line.append(pcm)
        if len(line) > self.delay_frames:
            leg.send_audio(line.popleft(), PIPELINE_RATE)

    def on_dtmf(self, digit: str) -> None:
        self.digits.append(digit)
        if self.echo_dtmf and self.leg is not None and self.ended is None:
            self.leg.send_dtmf(digit)

    def on_mark(self, mark: str, played: bool) -> None:
        """The echo agent sets no marks."""

    async def on_end(self, reason: str) -> None:
        self.ended = reason
        self._line.clear()
