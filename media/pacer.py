"""One 20 ms clock for every outbound stream of the process.

Hundreds of calls share one Pacer: each registers a subscriber that is called once per
tick with the tick index and sends (at most) one frame. There is no per-call sleep loop.

The schedule is absolute: tick n is due at anchor + n * period, so waking a little late
never shifts the ticks after it (no drift). After a stall (the event loop blocked, say,
200 ms) the overdue ticks run at once, but at most `max_catch_up` of them beyond the
current one; the rest are skipped and counted, and the grid is re-anchored one period
after the stall so far ends never receive a long burst.

PaceSchedule is the pure core (time in, ticks out); Pacer is the thin asyncio runner
that sleeps on a media.clock.Clock and calls the subscribers.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from media.clock import Clock

logger = logging.getLogger(__name__)

PERIOD = 0.020
# Deadlines are sums of floats; a tick counts as due this close to its deadline so that
# 0.02 + 0.02 + 0.02 < 0.06 does not leave a tick waiting for the next wake-up.
_EPS = 1e-6

Subscriber = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class DueTicks:
    """What to run now: ticks first, first+1, ... (one per lateness entry), in order."""

    first: int
    lateness: tuple[float, ...]  # seconds each tick runs after its deadline
    skipped: int  # overdue ticks dropped after a stall; their indices are never run

    @property
    def ticks(self) -> range:
        return range(self.first, self.first + len(self.lateness))

    def __len__(self) -> int:
        return len(self.lateness)


@dataclass(frozen=True, slots=True)
class PacerStats:
    ticks: int = 0  # ticks run
    late: int = 0  # ticks run more than `late_after` after their deadline
    skipped: int = 0  # ticks dropped by bounded catch-up
    stalls: int = 0  # times the schedule was re-anchored
    max_lateness: float = 0.0
    last_lateness: float = 0.0
    subscriber_errors: int = 0  # subscribers removed because they raised


class PaceSchedule:
    """Absolute tick schedule with bounded catch-up. Pure: the caller passes the time."""

    def __init__(
        self,
        start: float,
        period: float = PERIOD,
        max_catch_up: int = 3,
        late_after: float = 0.005,
    ) -> None:
        if not period > 0:
            raise ValueError(f"pacer period must be positive, got {period}")
        if max_catch_up < 0:
            raise ValueError(f"max_catch_up must be >= 0, got {max_catch_up}")
        self.period = period
        self.max_catch_up = max_catch_up
        self.late_after = late_after
        self._anchor_time = start  # tick _anchor_tick is due at _anchor_time
        self._anchor_tick = 0
        self._next = 0
        self._ticks = 0
        self._late = 0
        self._skipped = 0
        self._stalls = 0
        self._max_lateness = 0.0
        self._last_lateness = 0.0

    @property
    def next_tick(self) -> int:
        return self._next

    @property
    def next_deadline(self) -> float:
        return self.deadline(self._next)

    @property
    def wake_time(self) -> float:
        """When a runner should wake: the next deadline, less the float tolerance."""
        return self.deadline(self._next) - _EPS

    def deadline(self, tick: int) -> float:
        """When `tick` is due on the current grid."""
        return self._anchor_time + (tick - self._anchor_tick) * self.period

    def due(self, now: float) -> DueTicks:
        """Ticks to run at `now`, consuming them from the schedule."""
        first = self._next
        behind = now - self.deadline(first)
        if behind < -_EPS:
            return DueTicks(first, (), 0)
        overdue = math.floor((behind + _EPS) / self.period) + 1
        run = min(overdue, 1 + self.max_catch_up)
        lateness = tuple(max(0.0, now - self.deadline(first + k)) for k in range(run))
        skipped = overdue - run
        self._next = first + overdue
        if skipped:
            self._anchor_tick = self._next
            self._anchor_time = now + self.period
            self._stalls += 1
            self._skipped += skipped
        self._ticks += run
        self._late += sum(1 for x in lateness if x > self.late_after)
        self._max_lateness = max(self._max_lateness, lateness[0])
        self._last_lateness = lateness[-1]
        return DueTicks(first, lateness, skipped)

    @property
    def stats(self) -> PacerStats:
        return PacerStats(
            ticks=self._ticks,
            late=self._late,
            skipped=self._skipped,
            stalls=self._stalls,
            max_lateness=self._max_lateness,
            last_lateness=self._last_lateness,
        )


class Pacer:
    """Runs a PaceSchedule on a Clock and calls every subscriber once per tick.

    Subscribers are called in the order they were added. One added during a tick first
    runs at the next tick; one removed during a tick is not called again, not even later
    in that tick. A subscriber that raises is logged and removed; the others go on.
    `on_lateness` (e.g. a Prometheus Histogram's observe) receives each tick's lateness,
    `on_skipped` (e.g. a Counter's inc) the number of ticks dropped after each stall.
    A Pacer runs once: start() (or await run()), then stop().
    """

    def __init__(
        self,
        clock: Clock,
        *,
        period: float = PERIOD,
        max_catch_up: int = 3,
        late_after: float = 0.005,
        on_lateness: Callable[[float], None] | None = None,
        on_skipped: Callable[[int], None] | None = None,
    ) -> None:
        if not period > 0:
            raise ValueError(f"pacer period must be positive, got {period}")
        if max_catch_up < 0:
            raise ValueError(f"max_catch_up must be >= 0, got {max_catch_up}")
        self._clock = clock
        self._period = period
        self._max_catch_up = max_catch_up
        self._late_after = late_after
        self._on_lateness = on_lateness
        self._on_skipped = on_skipped
        self._subscribers: dict[Subscriber, None] = {}
        self._schedule: PaceSchedule | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._errors = 0
        self._current_tick = -1

    # -- subscribers ---------------------------------------------------------

    def add(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            raise ValueError(f"pacer subscriber {subscriber!r} is already registered")
        self._subscribers[subscriber] = None

    def remove(self, subscriber: Subscriber) -> bool:
        """Unregister; False when it was not registered (e.g. already removed after raising)."""
        if subscriber not in self._subscribers:
            return False
        del self._subscribers[subscriber]
        return True

    def __contains__(self, subscriber: object) -> bool:
        return subscriber in self._subscribers

    def __len__(self) -> int:
        return len(self._subscribers)

    # -- state -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def tick(self) -> int:
        """Index of the last tick run (-1 before the first)."""
        return self._current_tick

    @property
    def stats(self) -> PacerStats:
        base = self._schedule.stats if self._schedule else PacerStats()
        return PacerStats(
            ticks=base.ticks,
            late=base.late,
            skipped=base.skipped,
            stalls=base.stalls,
            max_lateness=base.max_lateness,
            last_lateness=base.last_lateness,
            subscriber_errors=self._errors,
        )

    # -- running -------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Run in a new task on the running loop; tick 0 is due now."""
        if self._schedule is not None or self._task is not None:
            raise RuntimeError("a Pacer runs once")
        task = asyncio.get_running_loop().create_task(self.run(), name="pacer")
        self._task = task
        return task

    async def run(self) -> None:
        """Tick until stop(). Tick 0 is due at the time run() starts."""
        if self._schedule is not None:
            raise RuntimeError("a Pacer runs once")
        current = asyncio.current_task()
        if self._task is None:
            self._task = current
        schedule = PaceSchedule(
            self._clock.now(), self._period, self._max_catch_up, self._late_after
        )
        self._schedule = schedule
        try:
            while not self._stopping:
                await self._clock.sleep_until(schedule.wake_time)
                due = schedule.due(self._clock.now())
                if due.skipped:
                    self._report_skipped(due.skipped)
                for tick, lateness in zip(due.ticks, due.lateness, strict=True):
                    self._run_tick(tick, lateness)
                    if self._stopping:
                        break
        except asyncio.CancelledError:
            # stop() cancels the sleep; any other cancellation is the caller's and goes on.
            if not self._stopping or current is None or current.uncancel() > 0:
                raise

    async def stop(self) -> None:
        """Stop ticking and wait for the runner to finish. Idempotent. A subscriber (which
        is synchronous) can schedule it as a task; the current tick completes first."""
        self._stopping = True
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            # The task was cancelled before it began running, so run() could not absorb
            # our cancel. Re-raise only if it is this task that is being cancelled.
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                raise

    def _report_skipped(self, skipped: int) -> None:
        logger.warning("pacer stalled: skipped %d ticks of %.0f ms", skipped, self._period * 1e3)
        if self._on_skipped is not None:
            try:
                self._on_skipped(skipped)
            except Exception:
                logger.exception("pacer on_skipped hook raised; hook removed")
                self._on_skipped = None

    def _run_tick(self, tick: int, lateness: float) -> None:
        self._current_tick = tick
        if self._on_lateness is not None:
            try:
                self._on_lateness(lateness)
            except Exception:
                logger.exception("pacer on_lateness hook raised; hook removed")
                self._on_lateness = None
        for subscriber in tuple(self._subscribers):
            if subscriber not in self._subscribers:
                continue  # removed earlier in this tick
            try:
                subscriber(tick)
            except Exception:
                logger.exception("pacer subscriber %r raised at tick %d; removed", subscriber, tick)
                self._subscribers.pop(subscriber, None)
                self._errors += 1
