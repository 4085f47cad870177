"""The bot's mouth on one call: audio to the leg with marks, and a mirror of what is playing.

Every piece of speech that matters (an answer chunk, a cached phrase) is sent with a
mark; the leg calls back on_mark(mark, played) when the audio before it has gone out,
or was cleared. So the Speaker knows which texts the caller actually heard, and when
the bot has fallen silent (no mark outstanding).

The VAD needs the level of the bot's own audio frame by frame, to keep its echo from
passing for caller speech. The Speaker keeps a mirror of the levels it queued, 20 ms
each, and hands the VAD one per inbound frame (the leg plays one outbound frame per
20 ms too). Marks keep the mirror honest: when a mark comes back, every level queued
before it is known to be played out and is dropped, whatever the estimate said.
"""

from __future__ import annotations

import asyncio
import math
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from media.vad import SILENCE_DBFS, EnergyVad
from pipeline.leg import CallLeg

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

_FULL_SCALE = 32768.0


def _loop_future() -> asyncio.Future[bool]:
    return asyncio.get_running_loop().create_future()


@dataclass(eq=False, slots=True)
class Spoken:
    """One marked piece of bot speech."""

    mark: str
    text: str
    kind: str  # "answer", or the phrase key: "greeting", "apology", "filler_hmm", ...
    seconds: float  # audio duration
    owner: Any = None  # the turn it belongs to, if any
    played: bool | None = None  # None until the mark comes back
    done: asyncio.Future[bool] = field(default_factory=_loop_future)
    _mirror_end: int = 0  # mirror position just after this piece's audio


def frame_levels(pcm: bytes, rate: int) -> list[float]:
    """dBFS of each 20 ms frame of int16 mono PCM at `rate` (the last may be short)."""
    step = rate // 50 * 2
    out: list[float] = []
    for i in range(0, len(pcm) - len(pcm) % 2, step):
        rms = audioop.rms(pcm[i : i + step], 2)
        out.append(20.0 * math.log10(rms / _FULL_SCALE) if rms else SILENCE_DBFS)
    return out


class Speaker:
    def __init__(
        self,
        leg: CallLeg,
        vad: EnergyVad,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.leg = leg
        self.vad = vad
        self._on_change = on_change  # called when the bot starts or stops having audio out
        self._pending: dict[str, Spoken] = {}  # in send order
        self._mirror: deque[float] = deque()
        self._mirror_pos = 0  # levels pushed so far
        self._mirror_played = 0  # levels popped so far
        self._seq = 0
        self.sent_seconds = 0.0

    @property
    def idle(self) -> bool:
        """No marked audio is outstanding: as far as we know, the bot is silent."""
        return not self._pending

    def __contains__(self, mark: object) -> bool:
        """`mark` is outstanding."""
        return mark in self._pending

    @property
    def pending(self) -> list[Spoken]:
        return list(self._pending.values())

    def send(self, pcm: bytes, rate: int) -> None:
        """Queue audio without a mark; a later marked send closes the piece."""
        if pcm:
            self._queue(pcm, rate, None)

    def send_marked(
        self, pcm: bytes, rate: int, *, text: str, kind: str, owner: Any = None
    ) -> Spoken:
        """Queue audio followed by a mark; the returned Spoken resolves when it comes back."""
        self._seq += 1
        mark = f"m{self._seq}-{kind}"
        spoken = Spoken(mark, text, kind, len(pcm) / 2 / rate, owner)
        was_idle = self.idle
        self._pending[mark] = spoken
        self._queue(pcm, rate, mark)
        spoken._mirror_end = self._mirror_pos
        if was_idle and self._on_change is not None:
            self._on_change()
        return spoken

    def _queue(self, pcm: bytes, rate: int, mark: str | None) -> None:
        levels = frame_levels(pcm, rate)
        self._mirror.extend(levels)
        self._mirror_pos += len(levels)
        self.sent_seconds += len(pcm) / 2 / rate
        self.leg.send_audio(pcm, rate, mark=mark)

    def on_mark(self, mark: str, played: bool) -> Spoken | None:
        """The leg's mark callback. Unknown marks (already cleared by us) give None."""
        spoken = self._pending.pop(mark, None)
        if spoken is None:
            return None
        # Everything queued before this mark has left the leg: catch the mirror up.
        while self._mirror_played < spoken._mirror_end and self._mirror:
            self._mirror.popleft()
            self._mirror_played += 1
        self._resolve(spoken, played)
        if self.idle and self._on_change is not None:
            self._on_change()
        return spoken

    def clear(self) -> list[Spoken]:
        """Barge-in: the leg drops its queue now. Every piece not confirmed played by now
        counts as not heard, whether or not the leg reports its mark before returning."""
        cleared = list(self._pending.values())
        self._pending.clear()  # marks the leg reports from inside clear_audio are now unknown
        self.leg.clear_audio()
        for spoken in cleared:
            self._resolve(spoken, False)
        self._mirror_played += len(self._mirror)
        self._mirror.clear()
        if cleared and self._on_change is not None:
            self._on_change()
        return cleared

    def tick(self) -> None:
        """Once per inbound 20 ms frame, before the VAD sees it: the outbound frame the
        leg is playing now, as the VAD's far-end level."""
        if self._mirror:
            self.vad.set_far_end_level(self._mirror.popleft())
            self._mirror_played += 1

    @staticmethod
    def _resolve(spoken: Spoken, played: bool) -> None:
        spoken.played = played
        if not spoken.done.done():
            spoken.done.set_result(played)
