"""A deterministic simulated network for media tests: (send time, bytes) in, (arrival time,
bytes) out.

Everything random comes from one seeded random.Random, so a seed replays the same run.
It models what real paths do to RTP:
- independent random loss, and burst loss with a two-state Gilbert-Elliott chain;
- a fixed one-way delay plus random jitter (half-normal or exponential), so packets
  overtake each other when the jitter exceeds their spacing: reordering falls out of it;
- duplication (the copy takes its own random delay);
- a sender whose clock runs a little fast or slow: its 20 ms frames leave every
  20 * (1 + drift) ms of real time (`send_time`).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["NetConditions", "NetSim", "NetSimStats"]

JitterModel = Literal["normal", "exponential"]


@dataclass(frozen=True, slots=True)
class NetConditions:
    """What the path does. Probabilities are per packet; times are seconds.

    Gilbert-Elliott: each packet first moves the chain (good -> bad with `burst_start`,
    bad -> good with `burst_end`), then is lost with `loss` in the good state or
    `burst_loss` in the bad one. `jitter` is the scale of the added random delay: the
    standard deviation of the normal (folded at zero, so delay never goes below `delay`)
    or the mean of the exponential. `drift` is the sender clock error as a fraction:
    +0.005 means its 20 ms last 20.1 ms (slow sender), -0.005 means 19.9 ms (fast).
    """

    loss: float = 0.0
    burst_start: float = 0.0
    burst_end: float = 1.0
    burst_loss: float = 1.0
    delay: float = 0.02
    jitter: float = 0.0
    jitter_model: JitterModel = "normal"
    duplicate: float = 0.0
    drift: float = 0.0

    def __post_init__(self) -> None:
        for name in ("loss", "burst_start", "burst_end", "burst_loss", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if self.burst_start > 0.0 and self.burst_end <= 0.0:
            raise ValueError("burst_end must be > 0 when bursts can start, or a burst never ends")
        if self.delay < 0.0 or self.jitter < 0.0:
            raise ValueError(f"delay and jitter must be >= 0, got {self.delay}, {self.jitter}")
        if self.jitter_model not in ("normal", "exponential"):
            raise ValueError(
                f"jitter_model must be 'normal' or 'exponential', got {self.jitter_model!r}"
            )
        if not -0.5 < self.drift < 0.5:
            raise ValueError(f"drift must be a small fraction, got {self.drift}")

    @classmethod
    def bursty(cls, loss: float, mean_burst: float, **kwargs: Any) -> NetConditions:
        """Gilbert loss with average rate `loss` in bursts of `mean_burst` packets on
        average (every packet in the bad state is lost, none in the good state)."""
        if not 0.0 < loss < 1.0 or mean_burst < 1.0:
            raise ValueError(f"need 0 < loss < 1 and mean_burst >= 1, got {loss}, {mean_burst}")
        end = 1.0 / mean_burst
        start = loss * end / (1.0 - loss)  # stationary P(bad) = start / (start + end)
        return cls(burst_start=start, burst_end=end, burst_loss=1.0, **kwargs)


@dataclass(slots=True)
class NetSimStats:
    sent: int = 0
    lost: int = 0
    duplicated: int = 0
    delivered: int = 0


class NetSim:
    """One direction of a simulated path. Use `transmit` per packet, `run` for a whole
    list, or `send` + `receive(now)` to interleave with a receiver driven by time."""

    def __init__(self, conditions: NetConditions, seed: int = 0) -> None:
        self.conditions = conditions
        self.stats = NetSimStats()
        self._rng = random.Random(seed)
        self._bad = False
        self._queue: list[tuple[float, int, bytes]] = []
        self._order = itertools.count()

    def send_time(self, index: int, frame: float = 0.02, start: float = 0.0) -> float:
        """Real time at which a sender with the drifting clock sends frame `index`."""
        return start + index * frame * (1.0 + self.conditions.drift)

    def transmit(self, send_time: float, data: bytes) -> list[tuple[float, bytes]]:
        """What becomes of one packet: no, one or two (arrival time, bytes) copies."""
        c = self.conditions
        rng = self._rng
        self.stats.sent += 1
        if c.burst_start > 0.0:
            self._bad = rng.random() >= c.burst_end if self._bad else rng.random() < c.burst_start
        if rng.random() < (c.burst_loss if self._bad else c.loss):
            self.stats.lost += 1
            return []
        copies = [(send_time + self._delay(), data)]
        if c.duplicate > 0.0 and rng.random() < c.duplicate:
            self.stats.duplicated += 1
            copies.append((send_time + self._delay(), data))
        self.stats.delivered += len(copies)
        return copies

    def _delay(self) -> float:
        c = self.conditions
        if c.jitter == 0.0:
            return c.delay
        if c.jitter_model == "exponential":
            return c.delay + self._rng.expovariate(1.0 / c.jitter)
        return c.delay + abs(self._rng.gauss(0.0, c.jitter))

    def run(self, sends: Iterable[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
        """Every arrival of a whole sequence of sends, in arrival order (stable)."""
        arrivals: list[tuple[float, int, bytes]] = []
        order = 0
        for send_time, data in sends:
            for arrival, copy in self.transmit(send_time, data):
                arrivals.append((arrival, order, copy))
                order += 1
        arrivals.sort()
        return [(arrival, data) for arrival, _, data in arrivals]

    def send(self, send_time: float, data: bytes) -> None:
        """Put a packet on the wire; collect it with receive()."""
        for arrival, copy in self.transmit(send_time, data):
            heapq.heappush(self._queue, (arrival, next(self._order), copy))

    def receive(self, now: float) -> list[tuple[float, bytes]]:
        """Every packet that has arrived by `now` and was not yet received, in order."""
        out: list[tuple[float, bytes]] = []
        queue = self._queue
        while queue and queue[0][0] <= now:
            arrival, _, data = heapq.heappop(queue)
            out.append((arrival, data))
        return out

    @property
    def in_flight(self) -> int:
        return len(self._queue)
