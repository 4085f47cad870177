"""The C jitter buffer (media._jitter, behind media.jitter.JitterBuffer) against the Python
reference it replaces (PyJitterBuffer), on any sequence of calls: after every call the
same result (slots holding the same packet objects), the same exception, the same stats
and target, bit for bit; and nothing escapes but what the reference raises too.

The first byte picks the settings: clock, delays, quantile and an is_quiet that answers
with varying truthy and falsy objects, or also raises. Then every 4 bytes are one call:
push (steps of sequence number, timestamp and arrival; SSRC, marker, copies of earlier
packets, out-of-range fields, NaN and infinite clocks), pop (the consumer's clock steps,
stalls and leaps, back too) or note_foreign.
"""

from __future__ import annotations

import dataclasses
import math

from media.jitter import PyJitterBuffer
from media.rtp import RtpPacket

MAX_LEN = 2048

_CLOCKS = ((8000, 160), (48000, 960), (16000, 320), (8000, 80))
_DELAYS = ((0.02, 0.2, 0.1), (0.0, 0.06, 0.0), (0.04, 0.5, 0.3), (0.0, 0.0, 0.1))
_SEQ_JUMPS = (40, 1023, 1024, 1025, 30_000, 32_767, 32_768, 65_535)
_TS_JUMPS = (1, 37, -80, 8000 * 60, -8000 * 5, 2**31, 2**31 - 1, -(2**31))
_ARRIVALS = (math.nan, math.inf, -math.inf, 1e9, -5.0, 3, 0.0, 1e-9)
_POP_STEPS = (0.0, 0.001, 0.5, -0.1, 2.5, 60.0, math.nan, math.inf)


class Quiet:
    """An is_quiet callback both buffers share (here and in tests/media/test_jitter_c.py):
    its answers depend on the packet and on how many calls came before (truthy and falsy
    objects of several types), and every `fail`-th call raises. Its count is rewound
    between the buffers, so they get the same answers exactly when they call it at the
    same points."""

    def __init__(self, fail: int = 0) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self, packet: RtpPacket) -> object:
        self.calls += 1
        if self.fail and self.calls % self.fail == 0:
            raise LookupError(self.calls)
        return (0, 1, [], "q", None, 2.5, False, True)[(packet.sequence + self.calls) % 8]


def _bits(x: object) -> tuple[type, str]:
    return type(x), repr(x)


def _same_slot(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is b
    return (
        a.kind == b.kind  # type: ignore[attr-defined]
        and a.packet is b.packet  # type: ignore[attr-defined]
        and a.next_packet is b.next_packet  # type: ignore[attr-defined]
        and _bits(a.skipped) == _bits(b.skipped)  # type: ignore[attr-defined]
    )


def _call(buffers: tuple[object, object], quiet: Quiet | None, name: str, *args: object) -> None:
    outcomes = []
    start = quiet.calls if quiet is not None else 0
    for jb in buffers:
        if quiet is not None:
            quiet.calls = start
        try:
            outcomes.append((getattr(jb, name)(*args), None, quiet and quiet.calls))
        except Exception as exc:  # compared below: the reference must raise the same
            outcomes.append((None, (type(exc), exc.args), quiet and quiet.calls))
    (want, want_exc, want_calls), (got, got_exc, got_calls) = outcomes
    where = f"{name}{args}"
    assert got_calls == want_calls, (where, "is_quiet calls", want_calls, got_calls)
    assert got_exc == want_exc, (where, want_exc, got_exc)
    if name == "pop":
        assert _same_slot(got, want), (where, want, got)
    else:
        assert got is want, (where, want, got)
    py, c = buffers
    want_stats = [_bits(v) for v in dataclasses.astuple(py.stats)]  # type: ignore[attr-defined]
    got_stats = [_bits(v) for v in dataclasses.astuple(c.stats)]  # type: ignore[attr-defined]
    assert got_stats == want_stats, (where, py.stats, c.stats)  # type: ignore[attr-defined]
    assert _bits(c.target_delay) == _bits(py.target_delay), where  # type: ignore[attr-defined]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    head, ops = data[0], data[1:]
    rate, ticks = _CLOCKS[head & 3]
    lo, hi, initial = _DELAYS[(head >> 2) & 3]
    quantile = 0.5 if head & 0x10 else 0.97
    quiet = (None, None, Quiet(0), Quiet(7))[head >> 6]
    # Imported here, so the tests can share Quiet where the C type is not built; here
    # that means every input fails, which is the point.
    from media import _jitter

    buffers = tuple(
        cls(rate, ticks, lo, hi, initial_delay=initial, quantile=quantile, is_quiet=quiet)
        for cls in (PyJitterBuffer, _jitter.JitterBuffer)
    )
    seq = ts = 1000
    clock = 0.0
    frame = ticks / rate
    sent: list[RtpPacket] = []
    for at in range(0, len(ops) - 3, 4):
        kind, a, b, c = ops[at : at + 4]
        op = kind & 7
        if op < 5:  # push
            seq += (a & 15) - 4 if a < 0xF0 else _SEQ_JUMPS[a & 7]
            ts += ((b & 7) - 2) * ticks if b < 0xE0 else _TS_JUMPS[b & 7]
            seq_field, ts_field = seq & 0xFFFF, ts & 0xFFFFFFFF
            if kind >> 3 == 31:  # out of range: ValueError from the unwrappers
                seq_field, ts_field = (-1, 1 << 16, 1 << 70, seq_field)[c & 3], ts_field
                ts_field = (ts_field, -1, 1 << 32, ts_field)[(c >> 2) & 3]
            ssrc = (7, 7, 7, 7, 7, 7, 8, 9)[c >> 5]
            if kind >> 3 == 30 and sent:  # a copy of an earlier packet (the same object)
                packet = sent[(c * 7 + b) % len(sent)]
            else:
                packet = RtpPacket(0, seq_field, ts_field, ssrc, b"x", bool(c & 16))
                sent = [*sent[-63:], packet]
            arrival: float = clock + (a >> 4) * frame * 0.5 - frame
            if kind >> 3 == 29:
                arrival = _ARRIVALS[c & 7]
            _call(buffers, quiet, "push", packet, arrival)
        elif op < 7:  # pop, on the consumer's clock
            clock += frame if a < 0xC0 else _POP_STEPS[a & 7]
            if math.isnan(clock) or math.isinf(clock):
                _call(buffers, quiet, "pop", clock)
                clock = 0.0
            else:
                _call(buffers, quiet, "pop", clock + 0.007)
        else:  # a DTMF event or comfort noise took a sequence number
            packet = RtpPacket(101, (seq + (a & 15) - 4) & 0xFFFF, 0, (7, 8)[b & 1], b"")
            _call(buffers, quiet, "note_foreign", packet)
