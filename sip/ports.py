"""RTP port allocation over the configured range.

RTP takes even ports and RTCP the odd port above (RFC 3550 §11), so the allocator hands
out even ports only and never one whose RTCP partner falls outside the range. Free ports
sit in a FIFO that starts at a random offset: concurrent processes and restarts spread
over the range, and a released port goes to the back, so a late packet for an ended
call is unlikely to reach the next call on the same port.
"""

from __future__ import annotations

import random
from collections import deque

__all__ = ["PortAllocator", "PortError", "PortRangeError", "PortsExhaustedError"]


class PortError(Exception):
    """Base of the port allocator's errors."""


class PortRangeError(PortError, ValueError):
    """The configured range cannot hold one RTP/RTCP pair."""


class PortsExhaustedError(PortError, RuntimeError):
    """Every RTP port in the range is in use: the call must be refused (503/486)."""

    def __init__(self, low: int, high: int, in_use: int) -> None:
        super().__init__(f"all {in_use} RTP ports in {low}-{high} are in use")
        self.low = low
        self.high = high
        self.in_use = in_use


class PortAllocator:
    """Even RTP ports from [low, high]; RTCP (port + 1) must also be <= high."""

    def __init__(self, low: int, high: int, rng: random.Random | None = None) -> None:
        if not 1024 <= low <= high <= 65535:
            raise PortRangeError(f"RTP port range {low}-{high} must lie within 1024-65535")
        first = low + (low & 1)
        ports = list(range(first, high, 2))  # stop at high: port + 1 must be <= high
        if not ports:
            raise PortRangeError(
                f"RTP port range {low}-{high} holds no even port with its RTCP port above it"
            )
        start = (rng or random.Random()).randrange(len(ports))
        self.low = low
        self.high = high
        self._free: deque[int] = deque(ports[start:] + ports[:start])
        self._in_use: set[int] = set()

    @property
    def capacity(self) -> int:
        return len(self._free) + len(self._in_use)

    @property
    def available(self) -> int:
        return len(self._free)

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    def allocate(self) -> int:
        """An even RTP port (RTCP is port + 1). Raises PortsExhaustedError when none is free."""
        if not self._free:
            raise PortsExhaustedError(self.low, self.high, len(self._in_use))
        port = self._free.popleft()
        self._in_use.add(port)
        return port

    def release(self, port: int) -> None:
        """Return a port at call end. Releasing a port not in use is a bug and raises."""
        try:
            self._in_use.remove(port)
        except KeyError:
            raise PortError(f"RTP port {port} is not allocated") from None
        self._free.append(port)
