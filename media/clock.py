"""The one injectable clock that media and signalling code read time from.

Production code uses the event loop's monotonic clock; tests use ManualClock and
advance it by hand, so jitter, timers and pacing are driven without sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds. Only differences are meaningful."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once now() >= deadline."""
        ...


class MonotonicClock:
    """The real clock: time.monotonic, which is what asyncio's loop.time() reads too."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class ManualClock:
    """A clock that moves only when a test calls advance(); sleepers wake in deadline order."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), fut))
        await fut

    def set(self, t: float) -> None:
        """Jump to absolute time t (never backwards) and wake every sleeper now due."""
        if t < self._now:
            raise ValueError(f"ManualClock cannot go back from {self._now} to {t}")
        self._now = t
        while self._sleepers and self._sleepers[0][0] <= t:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)
