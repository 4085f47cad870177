"""Timers for the SIP stack, on the injectable media.clock.Clock.

Transactions and dialogs arm many short timers (A, B, E, F, G, H, J, the 2xx
retransmission) and cancel most of them early. Each timer is one small task sleeping on
the clock, so a ManualClock drives every timer in tests without sleeping; firing runs
the callback synchronously on the event loop. A callback that raises is logged, never
lost and never kills another timer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from media.clock import Clock

__all__ = ["Timer", "Timers", "retransmit_intervals"]

log = logging.getLogger(__name__)


class Timer:
    """One armed timer; cancel() is idempotent and safe from inside the callback."""

    __slots__ = ("_callback", "_task", "deadline", "name")

    def __init__(self, name: str, deadline: float, callback: Callable[[], None]) -> None:
        self.name = name
        self.deadline = deadline
        self._callback: Callable[[], None] | None = callback
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self._callback is not None

    def cancel(self) -> None:
        self._callback = None
        task = self._task
        self._task = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _fire(self) -> None:
        callback = self._callback
        self._callback = None
        self._task = None
        if callback is None:
            return
        try:
            callback()
        except Exception:
            log.exception("SIP timer %s callback raised", self.name)

    def __repr__(self) -> str:
        state = "armed" if self.active else "done"
        return f"<Timer {self.name} at {self.deadline:.3f} {state}>"


class Timers:
    """Factory of Timers on one clock; close() cancels every timer still armed."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._armed: set[Timer] = set()

    def start(self, name: str, delay: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` once `delay` seconds from now (clock time)."""
        timer = Timer(name, self.clock.now() + max(0.0, delay), callback)
        self._armed.add(timer)
        timer._task = asyncio.get_running_loop().create_task(
            self._run(timer), name=f"sip-timer-{name}"
        )
        return timer

    async def _run(self, timer: Timer) -> None:
        try:
            await self.clock.sleep_until(timer.deadline)
        finally:
            self._armed.discard(timer)
        timer._fire()

    @property
    def armed(self) -> int:
        return sum(1 for t in self._armed if t.active)

    def close(self) -> None:
        for timer in list(self._armed):
            timer.cancel()
        self._armed.clear()


def retransmit_intervals(t1: float, t2: float, total: float) -> list[float]:
    """Offsets (from the first send) of the retransmissions of RFC 3261 Timer A/E/G and
    the 2xx: T1, 2*T1, 4*T1 ... capped at T2 between sends, while before `total`."""
    out: list[float] = []
    at = 0.0
    interval = t1
    while at + interval < total:
        at += interval
        out.append(at)
        interval = min(interval * 2, t2)
    return out
