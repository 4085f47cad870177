"""Agents that do not listen: play a recording (or a cached spoken text) then hang up or
transfer, and transfer straight to a human.

    PlaybackHandler(pcm, rate, then=CallAction("hangup"))
    TransferHandler("sip:reception@pbx")
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pipeline.actions import CallAction, perform
from pipeline.leg import CallLeg
from pipeline.metrics import Metrics

__all__ = ["PlaybackHandler", "TransferHandler"]

log = logging.getLogger(__name__)

_DONE = "playback-done"


class _OneShot:
    """Runs one coroutine per call on a task it owns; cancelled at the end."""

    leg: CallLeg | None = None
    ended: str | None = None
    _task: asyncio.Task[Any] | None = None

    def _spawn(self, action: CallAction, metrics: Metrics | None) -> None:
        if self.leg is None or self.ended is not None or self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._then(self.leg, action, metrics), name=f"{self.leg.info.call_id}:{action.do}")

    async def _then(self, leg: CallLeg, action: CallAction, metrics: Metrics | None) -> None:
        outcome = await perform(leg, action, metrics=metrics)
        if outcome != "ok" and action.do == "transfer":
            await leg.hangup("transfer_failed")  # nobody else is there to take the call

    def on_frame(self, pcm: bytes) -> None:
        """The caller's audio is not listened to."""

    def on_dtmf(self, digit: str) -> None:
        """Digits with actions are handled by WithActions around this handler."""

    def on_mark(self, mark: str, played: bool) -> None:
        """Only the playback's own mark matters (PlaybackHandler)."""

    async def on_end(self, reason: str) -> None:
        self.ended = reason
        task = self._task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class PlaybackHandler(_OneShot):
    """Plays `pcm` (int16 mono at `rate`) once, then runs `then` once it has been heard
    (or cleared: a leg that cleared it will not play it again)."""

    def __init__(self, pcm: bytes, rate: int, *, then: CallAction | None = None,
                 metrics: Metrics | None = None) -> None:
        self.pcm, self.rate = pcm, rate
        self.then = then or CallAction("hangup")
        self.metrics = metrics
        self.played: bool | None = None

    async def on_start(self, leg: CallLeg) -> None:
        self.leg = leg
        leg.send_audio(self.pcm, self.rate, mark=_DONE)

    def on_mark(self, mark: str, played: bool) -> None:
        if mark == _DONE:
            self.played = played
            self._spawn(self.then, self.metrics)


class TransferHandler(_OneShot):
    """Transfers the call as soon as it starts; hangs up if the transfer fails."""

    def __init__(self, target: str, *, metrics: Metrics | None = None) -> None:
        self.target = target
        self.metrics = metrics

    async def on_start(self, leg: CallLeg) -> None:
        self.leg = leg
        self._spawn(CallAction("transfer", self.target), self.metrics)
