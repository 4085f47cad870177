"""What the jitter buffer tests share: the packets and the 20 ms playout loop they drive
both implementations with (the `jb_type` fixture, in conftest.py, gives each test both)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

from media.jitter import JitterSlot, PyJitterBuffer
from media.rtp import RtpPacket

try:
    from media import _jitter
except ImportError:  # test_media_jitter_uses_the_c_type fails; the Python tests still run
    _jitter = None  # type: ignore[assignment]

RATE = 8000
TICKS = 160
FRAME = 0.02
PHASE = 0.007  # the consumer's 20 ms clock is not aligned with the sender's

# Every test that builds a buffer runs on both implementations: the Python reference and
# the C type (media._jitter), through the `jb_type` fixture. The C one duck-types it.
Buffer = PyJitterBuffer
IMPLEMENTATIONS = [
    pytest.param(PyJitterBuffer, id="py"),
    pytest.param(
        getattr(_jitter, "JitterBuffer", None),
        id="c",
        marks=pytest.mark.skipif(_jitter is None, reason="media._jitter is not built"),
    ),
]


Arrival = tuple[float, RtpPacket]
Check = Callable[[Buffer, float, JitterSlot | None], None]


def pkt(
    i: int,
    *,
    ssrc: int = 0x1234,
    seq0: int = 1000,
    ts0: int = 50_000,
    marker: bool = False,
    payload: bytes | None = None,
) -> RtpPacket:
    return RtpPacket(
        0,
        (seq0 + i) & 0xFFFF,
        (ts0 + i * TICKS) & 0xFFFFFFFF,
        ssrc,
        payload if payload is not None else i.to_bytes(4, "big"),
        marker,
    )


def steady(count: int, delay: float = 0.03, start: int = 0, **kw: object) -> list[Arrival]:
    return [((start + i) * FRAME + delay, pkt(start + i, **kw)) for i in range(count)]  # type: ignore[arg-type]


def play(
    jb: Buffer,
    arrivals: Iterable[Arrival],
    end: float,
    check: Check | None = None,
    start: float = 0.0,
) -> list[JitterSlot | None]:
    """Push everything that has arrived, then pop once, every 20 ms from `start` to `end`."""
    pending = sorted(arrivals, key=lambda a: a[0])
    i = 0
    slots: list[JitterSlot | None] = []
    k = 0
    while (now := start + PHASE + k * FRAME) < end:
        while i < len(pending) and pending[i][0] <= now:
            jb.push(pending[i][1], pending[i][0])
            i += 1
        slot = jb.pop(now)
        slots.append(slot)
        if check is not None:
            check(jb, now, slot)
        k += 1
    return slots


def played(slots: Iterable[JitterSlot | None]) -> list[int]:
    """Frame indices (from the payload) of the packets played, in order."""
    return [int.from_bytes(s.packet.payload, "big") for s in slots if s and s.packet]


def kinds(slots: Iterable[JitterSlot | None]) -> list[str | None]:
    return [s.kind if s else None for s in slots]


def inner(slots: list[JitterSlot | None]) -> list[JitterSlot | None]:
    """The slots up to the last packet played (without the fade-out after the stream)."""
    last = max(i for i, s in enumerate(slots) if s and s.kind == "packet")
    return slots[: last + 1]
