"""Wrap-around arithmetic for RTP sequence numbers (16 bit) and timestamps (32 bit).

Every comparison of sequence numbers or timestamps in media/ goes through here, so the
serial-number rules (RFC 1982 style: the shorter way round the circle wins) live in one
place. Distances are signed: a positive result means `a` is after `b`.
"""

from __future__ import annotations

SEQ_MOD = 1 << 16
SEQ_MASK = SEQ_MOD - 1
SEQ_HALF = SEQ_MOD >> 1
TS_MOD = 1 << 32
TS_MASK = TS_MOD - 1
TS_HALF = TS_MOD >> 1


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b between two 16-bit sequence numbers, in [-32768, 32767]."""
    return ((a - b + SEQ_HALF) & SEQ_MASK) - SEQ_HALF


def seq_lt(a: int, b: int) -> bool:
    """True when `a` comes before `b` (the shorter way round)."""
    return seq_diff(a, b) < 0


def seq_gt(a: int, b: int) -> bool:
    return seq_diff(a, b) > 0


def seq_add(a: int, n: int) -> int:
    """a + n modulo 2**16 (n may be negative)."""
    return (a + n) & SEQ_MASK


def ts_diff(a: int, b: int) -> int:
    """Signed distance a - b between two 32-bit RTP timestamps, in [-2**31, 2**31 - 1]."""
    return ((a - b + TS_HALF) & TS_MASK) - TS_HALF


def ts_lt(a: int, b: int) -> bool:
    return ts_diff(a, b) < 0


def ts_add(a: int, n: int) -> int:
    """a + n modulo 2**32 (n may be negative)."""
    return (a + n) & TS_MASK


class _Unwrapper:
    """Maps wrapping counters onto an unbounded integer line.

    Each value is placed nearest to the highest value seen so far, so reordered and late
    values land before it and a wrap moves forward by one cycle. The first value maps to
    itself; a value that arrives late from before the first one maps below it (possibly
    negative), which keeps distances between extended values exact.
    """

    __slots__ = ("_half", "_highest", "_mask")

    def __init__(self, bits: int) -> None:
        self._mask = (1 << bits) - 1
        self._half = 1 << (bits - 1)
        self._highest: int | None = None

    @property
    def highest(self) -> int | None:
        """The highest extended value returned so far (None before the first)."""
        return self._highest

    def unwrap(self, value: int) -> int:
        if not 0 <= value <= self._mask:
            raise ValueError(f"value {value} out of range 0..{self._mask}")
        highest = self._highest
        if highest is None:
            self._highest = value
            return value
        delta = ((value - highest + self._half) & self._mask) - self._half
        extended = highest + delta
        if delta > 0:
            self._highest = extended
        return extended

    def reset(self) -> None:
        """Forget history (new SSRC or a stream restart)."""
        self._highest = None


class SeqUnwrapper(_Unwrapper):
    """16-bit RTP sequence numbers -> extended sequence numbers."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(16)


class TsUnwrapper(_Unwrapper):
    """32-bit RTP timestamps -> extended timestamps."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(32)
