from __future__ import annotations

import dataclasses
import gc
import inspect
import math
import random
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.jitter import Quiet
from media import jitter
from media.jitter import JitterSlot, JitterStats, PyJitterBuffer
from media.netsim import NetConditions, NetSim
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


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)  # module scope: fine with hypothesis
def jb_type(request: pytest.FixtureRequest) -> type[Buffer]:
    return request.param  # type: ignore[no-any-return]


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


# -- basic playout -------------------------------------------------------------------


def test_nothing_to_play_before_the_first_packet(jb_type: type[Buffer]) -> None:
    jb = jb_type(RATE, TICKS)
    assert jb.pop(0.0) is None
    assert jb.stats == JitterStats(0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.1)


def test_clean_stream_plays_every_packet_once_in_order_after_the_initial_delay(
    jb_type: type[Buffer],
) -> None:
    jb = jb_type(RATE, TICKS, initial_delay=0.06)
    slots = play(jb, steady(200), 4.5)
    assert played(slots) == list(range(200))
    first = kinds(slots).index("packet")
    # Packet 0 arrives at 30 ms and waits ~60 ms: the pop at 87 ms plays it.
    assert first == 4
    s = jb.stats
    assert (s.received, s.lost, s.late, s.duplicate) == (200, 0, 0, 0)
    assert s.target_seconds < 0.06  # no jitter: the target shrinks toward min_delay


def test_reordered_packets_come_out_in_order(jb_type: type[Buffer]) -> None:
    arrivals = steady(100)
    for i in range(0, 100, 2):  # every pair swapped by 15 ms
        (_, p0), (a1, p1) = arrivals[i], arrivals[i + 1]
        arrivals[i], arrivals[i + 1] = (a1 + 0.015, p0), (a1, p1)
    jb = jb_type(RATE, TICKS)
    slots = play(jb, arrivals, 2.5)
    assert played(slots) == list(range(100))
    assert jb.stats.lost == jb.stats.late == 0


def test_duplicates_are_dropped_and_counted_even_after_playout(jb_type: type[Buffer]) -> None:
    jb = jb_type(RATE, TICKS)
    assert jb.push(pkt(0), 0.0)
    assert not jb.push(pkt(0), 0.001)
    slots = play(jb, [(i * FRAME, pkt(i)) for i in range(1, 20)], 0.5)
    assert not jb.push(pkt(3), 0.5)  # long played: still a duplicate, not "late"
    assert played(slots) == list(range(20))
    assert jb.stats.duplicate == 2
    assert jb.stats.late == 0


def test_a_foreign_packet_keeps_the_duplicate_window_aligned(jb_type: type[Buffer]) -> None:
    # Audio 0-9 with 4 lost, a DTMF event takes the next sequence number, audio goes on
    # (its timestamps continue: the event had none of its own). A copy of 5, long played,
    # is a duplicate; with the window one off it was read as 4's missing bit and as late.
    jb = jb_type(RATE, TICKS)
    audio = [(i * FRAME, pkt(i)) for i in range(10) if i != 4]
    audio += [(i * FRAME, pkt(i + 1, ts0=50_000 - TICKS)) for i in range(10, 20)]
    play(jb, audio[:9], 10 * FRAME)
    jb.note_foreign(RtpPacket(101, 1010, 0, 0x1234, b"\x01\x00\x00\xa0"))
    play(jb, audio[9:], 0.6, start=10 * FRAME)
    late = jb.stats.late
    assert not jb.push(pkt(5), 0.6)
    assert jb.stats.duplicate == 1 and jb.stats.late == late
    assert jb.stats.lost == 1  # 4; the event's sequence number is not a loss


def test_same_timestamp_under_another_sequence_number_is_a_duplicate(jb_type: type[Buffer]) -> None:
    jb = jb_type(RATE, TICKS)
    assert jb.push(pkt(0), 0.0)
    assert not jb.push(RtpPacket(0, 4242, pkt(0).timestamp, 0x1234, b"x"), 0.0)
    assert jb.stats.duplicate == 1


def test_late_packet_is_dropped_and_its_frame_concealed(jb_type: type[Buffer]) -> None:
    arrivals = steady(50)
    late_at = arrivals[20][0] + 0.5
    arrivals[20] = (late_at, arrivals[20][1])
    jb = jb_type(RATE, TICKS)
    slots = play(jb, arrivals, 1.5)
    assert 20 not in played(slots)
    assert kinds(inner(slots)).count("missing") == 1
    s = jb.stats
    assert (s.late, s.lost) == (1, 1)


def test_lost_frame_offers_the_next_packet_for_fec(jb_type: type[Buffer]) -> None:
    arrivals = [a for a in steady(40) if int.from_bytes(a[1].payload, "big") != 10]
    jb = jb_type(RATE, TICKS)
    slots = play(jb, arrivals, 1.2)
    gap = next(s for s in slots if s and s.kind == "missing")
    assert gap.packet is None
    assert gap.next_packet is not None and gap.next_packet.sequence == 1011
    assert played(slots) == [i for i in range(40) if i != 10]
    assert jb.stats.lost == 1


def test_sequence_and_timestamp_wrap_around(jb_type: type[Buffer]) -> None:
    arrivals = steady(300, seq0=65_400, ts0=2**32 - 100 * TICKS)
    jb = jb_type(RATE, TICKS)
    slots = play(jb, arrivals, 6.5)
    assert played(slots) == list(range(300))
    assert jb.stats.lost == 0


# -- pauses, talk spurts, discontinuities ------------------------------------------


def test_sender_pause_with_continuing_sequence_is_silence_not_loss(jb_type: type[Buffer]) -> None:
    # Talk spurt 1: frames 0..49. The sender then pauses 1 s (timestamps keep running,
    # sequence numbers do not) and starts spurt 2 with the marker bit.
    spurt2 = [
        ((100 + i) * FRAME + 0.03, pkt(100 + i, seq0=1000 - 50, marker=i == 0)) for i in range(50)
    ]
    jb = jb_type(RATE, TICKS)
    slots = play(jb, steady(50) + spurt2, 3.5)
    assert played(slots) == list(range(50)) + list(range(100, 150))
    assert jb.stats.lost == 0
    # A few frames of fade before the pause is known to be one, then silence.
    assert kinds(inner(slots)).count("missing") <= 5
    assert kinds(slots)[60:100].count(None) >= 30


def test_talk_spurt_without_timestamp_advance_rebases_the_timeline(jb_type: type[Buffer]) -> None:
    # Some senders keep timestamps contiguous across a pause: spurt 2 then looks 1 s late.
    spurt2 = [((100 + i) * FRAME + 0.03, pkt(50 + i, marker=i == 0)) for i in range(50)]
    jb = jb_type(RATE, TICKS)
    slots = play(jb, steady(50) + spurt2, 3.5)
    assert played(slots) == list(range(100))
    assert jb.stats.resets == 1


def test_new_ssrc_resets_and_old_stragglers_are_dropped(jb_type: type[Buffer]) -> None:
    first = steady(50)
    second = [
        ((60 + i) * FRAME + 0.03, pkt(i, ssrc=0xBEEF, seq0=7, ts0=123, payload=bytes([1, i])))
        for i in range(50)
    ]
    straggler = (62 * FRAME, pkt(49))
    jb = jb_type(RATE, TICKS)
    slots = play(jb, [*first, *second, straggler], 3.0)
    ssrcs = [s.packet.ssrc for s in slots if s and s.packet]
    assert ssrcs == [0x1234] * 50 + [0xBEEF] * 50
    s = jb.stats
    assert s.resets == 1
    assert s.late == 1


def test_timestamp_jump_forward_rebases_the_timeline(jb_type: type[Buffer]) -> None:
    after = [((50 + i) * FRAME + 0.03, pkt(50 + i, ts0=50_000 + 8000 * 60)) for i in range(50)]
    jb = jb_type(RATE, TICKS)
    slots = play(jb, steady(50) + after, 2.5)
    assert played(slots) == list(range(100))
    assert jb.stats.resets == 1


def test_timestamp_jump_backward_rebases_the_timeline(jb_type: type[Buffer]) -> None:
    after = [((50 + i) * FRAME + 0.03, pkt(50 + i, ts0=50_000 - 8000 * 60)) for i in range(100)]
    jb = jb_type(RATE, TICKS)
    slots = play(jb, steady(50) + after, 3.5)
    assert played(slots) == list(range(150))
    assert jb.stats.resets == 1


@pytest.mark.parametrize("marker", [True, False])
def test_small_backward_jump_rebases_at_a_marker_or_after_25_late(
    jb_type: type[Buffer], marker: bool
) -> None:
    # Half a second back is within what jitter could explain, so it needs evidence.
    after = [
        ((50 + i) * FRAME + 0.03, pkt(50 + i, ts0=50_000 - 4000, marker=marker and i == 0))
        for i in range(100)
    ]
    jb = jb_type(RATE, TICKS)
    slots = play(jb, steady(50) + after, 3.5)
    assert played(slots) == list(range(50)) + list(range(50 if marker else 74, 150))
    assert jb.stats.resets == 1


def test_renumbered_sequence_is_not_counted_as_loss(jb_type: type[Buffer]) -> None:
    after = [((50 + i) * FRAME + 0.03, pkt(50 + i, seq0=21_000)) for i in range(50)]
    jb = jb_type(RATE, TICKS)
    slots = play(jb, steady(50) + after, 2.5)
    assert played(slots) == list(range(100))
    assert jb.stats.lost == 0


def test_off_grid_talk_spurt_moves_the_frame_grid(jb_type: type[Buffer]) -> None:
    spurt2 = [
        ((100 + i) * FRAME + 0.03, pkt(100 + i, seq0=950, ts0=50_037, marker=i == 0))
        for i in range(50)
    ]
    jb = jb_type(RATE, TICKS)
    slots = play(jb, steady(50) + spurt2, 3.5)
    assert played(slots) == list(range(50)) + list(range(100, 150))
    assert jb.stats.late == 0


def test_off_grid_packets_the_playout_passes_are_dropped_at_once(jb_type: type[Buffer]) -> None:
    # Each frame also brings a packet half a frame off the grid (a broken or hostile
    # sender). Played past, each is late there and then, not held until the next gap.
    arrivals = []
    for k in range(500):
        arrivals.append((k * FRAME + 0.03, RtpPacket(0, 2 * k, k * TICKS, 1, k.to_bytes(4, "big"))))
        arrivals.append((k * FRAME + 0.031, RtpPacket(0, 2 * k + 1, k * TICKS + 80, 1, b"off")))
    jb = jb_type(RATE, TICKS)
    most = 0

    def check(jb: Buffer, now: float, slot: JitterSlot | None) -> None:
        nonlocal most
        most = max(most, jb.stats.buffered)

    slots = play(jb, arrivals, 10.0, check)
    frames = played(slots)
    assert frames == sorted(set(frames)) and len(frames) >= 490  # a few dropped to shrink
    assert most <= jb.capacity  # it was 326 after 10 s, and growing
    stats = jb.stats
    assert stats.late >= 490 and stats.buffered == 0
    assert stats.lost == 0  # the off-grid sequence numbers were once counted lost


def test_a_loss_free_call_keeps_the_python_heap_small() -> None:
    jb = PyJitterBuffer(RATE, TICKS)
    play(jb, steady(3000), 61.0)
    assert len(jb._heap) == len(jb._packets) == 0  # every played timestamp left the heap


# -- bounds and adaptation -----------------------------------------------------------


def test_buffer_stays_bounded_when_a_sender_bursts_far_ahead(jb_type: type[Buffer]) -> None:
    jb = jb_type(RATE, TICKS)
    for i in range(500):
        jb.push(pkt(i), 0.0)
        assert jb.stats.buffered <= jb.capacity
    slots = play(jb, [], 0.5)
    assert jb.stats.buffered <= jb.capacity
    assert played(slots) == sorted(played(slots))


def test_consumer_stall_catches_up_at_once(jb_type: type[Buffer]) -> None:
    arrivals = steady(400)
    jb = jb_type(RATE, TICKS)
    play(jb, arrivals[:100], 2.0)
    # Nobody pops for 2 s while packets keep coming.
    for arrival, packet in arrivals[100:200]:
        jb.push(packet, arrival)
    assert jb.stats.buffered <= jb.capacity
    slots = play(jb, arrivals[200:], 9.0, start=4.0)
    assert jb.stats.delay_seconds <= jb.max_delay + FRAME
    assert slots[1] is not None and slots[1].kind == "packet"
    assert played(slots) == sorted(played(slots))
    assert played(slots)[-1] == 399


def _jittery(seconds: float, cond: NetConditions, seed: int, start: int = 0) -> list[Arrival]:
    net = NetSim(cond, seed)
    count = int(seconds / FRAME)
    sends = [(net.send_time(start + i), bytes(pkt(start + i))) for i in range(count)]
    return [(a, RtpPacket.parse(d)) for a, d in net.run(sends)]


def test_target_grows_with_jitter_and_shrinks_slowly_after(jb_type: type[Buffer]) -> None:
    rough = _jittery(20, NetConditions(delay=0.03, jitter=0.05), seed=1)
    calm = _jittery(40, NetConditions(delay=0.03), seed=1, start=1000)
    targets: list[float] = []
    jb = jb_type(RATE, TICKS)
    play(jb, rough + calm, 60.0, check=lambda b, now, s: targets.append(b.target_delay))
    at = {t: targets[int(t / FRAME)] for t in (5, 19, 21, 24, 59)}
    assert at[5] > 0.09 and at[19] > 0.09  # ~p97 of a half-normal with sigma 50 ms
    assert at[21] > 0.08  # shrinking is slow ...
    assert at[24] < at[19]  # ... but it happens
    assert at[59] == jb.min_delay
    assert all(jb.min_delay <= t <= jb.max_delay for t in targets)
    assert jb.stats.delay_seconds < 0.02 + 2 * FRAME


def test_late_packets_are_few_once_adapted(jb_type: type[Buffer]) -> None:
    arrivals = _jittery(60, NetConditions(delay=0.02, jitter=0.04), seed=3)
    jb = jb_type(RATE, TICKS)
    play(jb, arrivals, 61.0)
    assert jb.stats.late / len(arrivals) < 0.04
    assert jb.stats.inserted > 0


def test_delay_shrinks_only_on_quiet_frames_when_told_which_are_quiet(
    jb_type: type[Buffer],
) -> None:
    # Every 25th frame is quiet (a pause); the initial 100 ms must come down to ~20 ms.
    arrivals = [
        (a, pkt(i, payload=(b"q" if i % 25 == 0 else b"v") + i.to_bytes(4, "big")))
        for i, (a, _) in enumerate(steady(1000))
    ]
    jb = jb_type(RATE, TICKS, is_quiet=lambda p: p.payload[:1] == b"q")
    slots = play(jb, arrivals, 20.5)
    got = {int.from_bytes(s.packet.payload[1:], "big") for s in slots if s and s.packet}
    dropped = set(range(1000)) - got
    assert dropped and all(i % 25 == 0 for i in dropped)
    assert jb.stats.delay_seconds <= jb.target_delay + FRAME


@pytest.mark.parametrize("drift", [0.005, -0.005])
def test_ten_minutes_of_sender_clock_drift(jb_type: type[Buffer], drift: float) -> None:
    cond = NetConditions(delay=0.03, jitter=0.02, loss=0.02, duplicate=0.01, drift=drift)
    arrivals = _jittery(600, cond, seed=21)
    jb = jb_type(RATE, TICKS)
    delays: list[float] = []
    sizes: list[int] = []

    def check(b: Buffer, now: float, slot: JitterSlot | None) -> None:
        delays.append(b.stats.delay_seconds)
        sizes.append(b.stats.buffered)

    slots = play(jb, arrivals, 600 * (1 + min(drift, 0)), check=check)
    s = jb.stats
    # A slow sender needs a frame inserted every 4 s, a fast one a frame dropped.
    assert (s.inserted if drift > 0 else s.dropped) > 100
    assert max(sizes) <= jb.capacity
    assert max(delays[500:]) <= jb.max_delay + FRAME
    assert max(delays[-5000:]) - min(delays[-5000:]) < 0.12  # not growing or starving
    assert abs(delays[-1] - s.target_seconds) < 0.06
    assert len(played(slots)) > 0.93 * 30000
    assert s.late / len(arrivals) < 0.04


def test_constructor_refuses_nonsense(jb_type: type[Buffer]) -> None:
    with pytest.raises(ValueError, match="positive"):
        jb_type(0, 160)
    with pytest.raises(ValueError, match="min_delay <= max_delay"):
        jb_type(8000, 160, min_delay=0.3, max_delay=0.2)
    with pytest.raises(ValueError, match="quantile"):
        jb_type(8000, 160, quantile=1.0)


# -- properties over the simulated network -----------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    loss=st.floats(0.0, 0.2),
    burst=st.sampled_from([0.0, 0.01, 0.03]),
    jitter=st.floats(0.0, 0.08),
    model=st.sampled_from(["normal", "exponential"]),
    duplicate=st.floats(0.0, 0.1),
    drift=st.floats(-0.005, 0.005),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_network_keeps_order_and_bounds_and_recovers(
    jb_type: type[Buffer],
    loss: float,
    burst: float,
    jitter: float,
    model: str,
    duplicate: float,
    drift: float,
    seed: int,
) -> None:
    rough = NetConditions(
        loss=loss,
        burst_start=burst,
        burst_end=0.3,
        delay=0.03,
        jitter=jitter,
        jitter_model=model,  # type: ignore[arg-type]
        duplicate=duplicate,
        drift=drift,
    )
    calm = NetConditions(delay=0.03, drift=drift)
    arrivals = _jittery(40, rough, seed) + _jittery(30, calm, seed, start=2000)
    jb = jb_type(RATE, TICKS)
    order: list[int] = []

    def check(b: Buffer, now: float, slot: JitterSlot | None) -> None:
        s = b.stats
        assert b.min_delay <= s.target_seconds <= b.max_delay
        assert s.buffered <= b.capacity
        if order:  # playing: the delay stays within [min_delay, max_delay], give or take
            # the 20 ms steps it is corrected in and a sudden shift of the base transit
            assert b.min_delay - 2 * FRAME <= s.delay_seconds <= b.max_delay + FRAME
        if slot is not None and slot.packet is not None:
            seq = int.from_bytes(slot.packet.payload, "big")
            assert not order or seq > order[-1]
            order.append(seq)

    slots = play(jb, arrivals, 70.0 * (1 + min(drift, 0)), check=check)
    # Recovery: the last 5 s of the calm period play real packets at about the target.
    tail = slots[-250:]
    assert kinds(tail).count("packet") >= 245
    s = jb.stats
    # Above target by at most a frame plus what a fast sender adds while the buffer
    # waits (5 s, there being no quiet frames here) before it drops one anyway.
    assert s.delay_seconds <= s.target_seconds + FRAME + 250 * FRAME * abs(drift) + 0.005
    assert s.delay_seconds >= s.target_seconds - FRAME


# -- the C type against the Python reference ---------------------------------------------


def test_media_jitter_uses_the_c_type() -> None:
    # setup.sh always builds media._jitter: a silent fallback to Python would hide a cost.
    assert _jitter is not None, "media._jitter is not built: pip install -e ."
    assert jitter._jitter is _jitter
    assert jitter.JitterBuffer is _jitter.JitterBuffer
    assert jitter.JitterBuffer is not PyJitterBuffer


def test_c_constants_are_the_python_ones() -> None:
    assert _jitter is not None
    assert _jitter.CONSTANTS == {name: getattr(jitter, name) for name in _jitter.CONSTANTS}


def test_c_type_has_the_public_surface_of_the_python_class() -> None:
    assert _jitter is not None
    c_params = inspect.signature(_jitter.JitterBuffer).parameters.values()
    py_params = inspect.signature(PyJitterBuffer).parameters.values()
    assert [(p.name, p.kind, p.default) for p in c_params] == [
        (p.name, p.kind, p.default) for p in py_params
    ]
    py, c = (cls(16000, 320, 0.04, 0.3, initial_delay=0.05) for cls in Mirror.CLASSES)
    for name in ("clock_rate", "frame_ticks", "min_delay", "max_delay", "capacity"):
        assert getattr(c, name) == getattr(py, name)
        assert type(getattr(c, name)) is type(getattr(py, name))
    assert c.target_delay == py.target_delay == 0.05
    for name in ("push", "pop", "note_foreign"):
        assert (
            inspect.signature(getattr(c, name)).parameters.keys()
            == inspect.signature(getattr(py, name)).parameters.keys()
        )
    assert c.push(packet=pkt(0), arrival=0.0) is True  # keywords, as in Python
    assert c.pop(now=0.0) is None


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((0, 160), {}),
        ((8000, -1), {}),
        ((-5, 0), {}),
        ((8000, 160), {"quantile": 1.0}),
        ((8000, 160), {"quantile": 0.4999}),
        ((8000, 160), {"quantile": math.nan}),
        ((8000, 160, 0.3, 0.2), {}),
        ((8000, 160, -0.01), {}),
        ((8000, 160, math.nan), {}),
        ((8000, 160, 0, math.inf), {}),  # math.ceil(inf)
        ((8000, 160), {"initial_delay": None}),  # max() cannot compare
        ((8000, 160), {"min_delay": "0"}),
    ],
)
def test_constructor_errors_are_the_same(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    errors = []
    for cls in Mirror.CLASSES:
        with pytest.raises(Exception) as info:
            cls(*args, **kwargs)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1]


QUIETS: dict[str, Callable[[], Quiet | None]] = {
    "none": lambda: None,
    "varying": Quiet,
    "raising": lambda: Quiet(fail=5),
}


def _float_bits(x: object) -> tuple[type, str]:
    return type(x), repr(x)  # repr tells -0.0 from 0.0 and keeps every digit


class Mirror:
    """A PyJitterBuffer and a C JitterBuffer fed the same calls; after each call the
    results, exceptions, stats and target must be identical (packets: the same objects)."""

    CLASSES: tuple[type[Buffer], ...] = (PyJitterBuffer, getattr(_jitter, "JitterBuffer", None))  # type: ignore[assignment]

    def __init__(self, *args: object, is_quiet: Quiet | None = None, **kwargs: object) -> None:
        assert _jitter is not None, "media._jitter is not built"
        self.quiet = is_quiet
        self.py, self.c = (cls(*args, is_quiet=is_quiet, **kwargs) for cls in self.CLASSES)  # type: ignore[arg-type]
        self.calls = 0
        self.check()

    def do(self, name: str, *args: object) -> object:
        outcomes = []
        calls = []
        start = self.quiet.calls if self.quiet is not None else 0
        for jb in (self.py, self.c):
            if self.quiet is not None:
                self.quiet.calls = start
            try:
                outcomes.append((getattr(jb, name)(*args), None))
            except Exception as exc:
                outcomes.append((None, exc))
            calls.append(self.quiet.calls if self.quiet is not None else 0)
        self.calls += 1
        (want, want_exc), (got, got_exc) = outcomes
        where = f"call {self.calls}: {name}{args}"
        assert calls[0] == calls[1], f"{where}: is_quiet called {calls[0]} vs {calls[1]} times"
        if want_exc is not None or got_exc is not None:
            assert (type(got_exc), getattr(got_exc, "args", None)) == (
                type(want_exc),
                getattr(want_exc, "args", None),
            ), f"{where}: {want_exc!r} vs {got_exc!r}"
        elif name == "pop":
            assert (want is None) == (got is None), f"{where}: {want} vs {got}"
            if want is not None:
                assert isinstance(got, JitterSlot), where
                assert got.kind == want.kind, where  # type: ignore[attr-defined]
                assert got.packet is want.packet, where  # type: ignore[attr-defined]
                assert got.next_packet is want.next_packet, where  # type: ignore[attr-defined]
                assert _float_bits(got.skipped) == _float_bits(want.skipped), where  # type: ignore[attr-defined]
        else:
            assert got is want, f"{where}: {want} vs {got}"  # True/False/None
        self.check(where)
        return want

    def check(self, where: str = "new") -> None:
        want, got = self.py.stats, self.c.stats
        assert isinstance(got, JitterStats)
        assert [_float_bits(v) for v in dataclasses.astuple(got)] == [
            _float_bits(v) for v in dataclasses.astuple(want)
        ], f"{where}: {want} vs {got}"
        assert _float_bits(self.c.target_delay) == _float_bits(self.py.target_delay), where

    def run(self, ops: Iterable[tuple[Any, ...]]) -> None:
        for op in ops:
            self.do(*op)


def schedule(
    arrivals: Iterable[Arrival],
    end: float,
    *,
    start: float = 0.0,
    foreign: Iterable[Arrival] = (),
    pops: Callable[[int], bool] = lambda k: True,
) -> list[tuple[Any, ...]]:
    """The calls `play` makes, as a list: push what has arrived, then pop, every 20 ms
    (but where `pops(k)` is false: a stalled consumer); foreign packets go to
    note_foreign when they arrive."""
    pending = sorted(
        [(a, 0, ("push", p, a)) for a, p in arrivals]
        + [(a, 1, ("note_foreign", p)) for a, p in foreign],
        key=lambda e: (e[0], e[1]),
    )
    ops: list[tuple[Any, ...]] = []
    i = k = 0
    while (now := start + PHASE + k * FRAME) < end:
        while i < len(pending) and pending[i][0] <= now:
            ops.append(pending[i][2])
            i += 1
        if pops(k):
            ops.append(("pop", now))
        k += 1
    return ops


def _net_trace(seed: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    cond = NetConditions(
        loss=rng.choice([0.0, 0.02, 0.1]),
        burst_start=rng.choice([0.0, 0.02]),
        burst_end=0.3,
        delay=0.03,
        jitter=rng.choice([0.005, 0.02, 0.06, 0.15]),
        jitter_model=rng.choice(["normal", "exponential"]),
        duplicate=rng.choice([0.0, 0.03]),
        drift=rng.uniform(-0.01, 0.01),
    )
    seq0, ts0 = rng.randrange(1 << 16), rng.randrange(1 << 32)  # wraps within the trace, often
    count = rng.randrange(1000, 2000)
    net = NetSim(cond, seed)
    sends = []
    for i in range(count):
        quiet = i % 50 >= 40  # a pause every second: quiet frames to drop at
        packet = pkt(i, seq0=seq0, ts0=ts0, payload=b"q" if quiet else None)
        sends.append((net.send_time(i), bytes(packet)))
    arrivals = [(a, RtpPacket.parse(d)) for a, d in net.run(sends)]  # copies: other objects
    return schedule(arrivals, count * FRAME * 1.02 + 1.0)


@pytest.mark.parametrize("quiet", QUIETS)
@pytest.mark.parametrize("seed", range(6))
def test_c_matches_python_over_simulated_networks(seed: int, quiet: str) -> None:
    Mirror(RATE, TICKS, is_quiet=QUIETS[quiet]()).run(_net_trace(seed))


class _SubPacket(RtpPacket):  # read through attributes, not slots, by the C type
    __slots__ = ("__weakref__",)


def _nasty(name: str) -> list[tuple[Any, ...]]:
    """Hand-made streams for the corners of the algorithm, as calls."""
    if name == "ssrc changes and stragglers":
        first = steady(50)
        second = steady(50, start=55, ssrc=0xBEEF, seq0=7, ts0=123)
        third = steady(30, start=110, ssrc=0xCAFE, seq0=9, ts0=999)
        stragglers = [
            (57 * FRAME, pkt(49)),
            (58 * FRAME, pkt(12)),
            (115 * FRAME, pkt(60, ssrc=0xBEEF, seq0=7, ts0=123)),
        ]
        back = steady(30, start=145)  # back to the first SSRC: a new stream again
        return schedule([*first, *second, *third, *stragglers, *back], 4.0)
    if name == "timestamp leaps":
        after = [((50 + i) * FRAME + 0.03, pkt(50 + i, ts0=50_000 + 8000 * 60)) for i in range(50)]
        back = [((100 + i) * FRAME + 0.03, pkt(100 + i, ts0=50_000 - 8000 * 90)) for i in range(60)]
        return schedule(steady(50) + after + back, 4.0)
    if name == "marker-late talk spurts":
        spurt2 = [((100 + i) * FRAME + 0.03, pkt(50 + i, marker=i == 0)) for i in range(50)]
        spurt3 = [((180 + i) * FRAME + 0.03, pkt(100 + i, marker=i == 0)) for i in range(40)]
        return schedule(steady(50) + spurt2 + spurt3, 5.0)
    if name == "25 late in a row":
        after = [((50 + i) * FRAME + 0.03, pkt(50 + i, ts0=50_000 - 4000)) for i in range(100)]
        return schedule(steady(50) + after, 3.5)
    if name == "off-grid timestamps":
        spurt2 = [
            ((100 + i) * FRAME + 0.03, pkt(100 + i, seq0=950, ts0=50_037, marker=i == 0))
            for i in range(50)
        ]
        odd = [
            ((160 + i) * FRAME + 0.031, pkt(160 + i, seq0=1000, ts0=50_080))
            for i in range(0, 40, 3)
        ]
        return schedule(steady(50) + spurt2 + steady(40, start=150, seq0=1000) + odd, 5.0)
    if name == "off-grid packets pile up, then a new SSRC":
        # Every frame also brings a packet half a frame off: passed by, never cleaned.
        ons = [
            (k * FRAME + 0.03, RtpPacket(0, 2 * k & 0xFFFF, k * TICKS, 1, b"on"))
            for k in range(1500)
        ]
        offs = [
            (k * FRAME + 0.031, RtpPacket(0, (2 * k + 1) & 0xFFFF, k * TICKS + 80, 1, b"off"))
            for k in range(1500)
        ]
        return schedule(ons + offs + [(30.5, pkt(0, ssrc=2))], 31.0)
    if name == "sequence and timestamp wrap-around":
        return schedule(steady(300, seq0=65_400, ts0=2**32 - 100 * TICKS), 6.5)
    if name == "huge sequence jumps":
        parts = [
            steady(40),
            steady(40, start=40, seq0=1000 + 21_000),
            steady(40, start=80, seq0=1000 + 21_000 + 32_768),  # half the circle: backwards
            steady(40, start=120, seq0=1000 + 21_000 + 32_768 + 1_025),
        ]
        return schedule([a for part in parts for a in part], 4.0)
    if name == "foreign packets":
        events = [(i * FRAME + 0.031, pkt(i, seq0=1000 + 1, payload=b"")) for i in range(5, 150, 7)]
        audio = [(a, p) for a, p in steady(150) if int.from_bytes(p.payload, "big") % 7 != 5]
        late_events = [(40 * FRAME, pkt(i, payload=b"")) for i in range(0, 30, 4)]  # already passed
        return schedule(audio, 3.5, foreign=events + late_events)
    if name == "more than 1024 foreign packets":
        events = [
            (0.01 + i * 1e-4, RtpPacket(101, (1001 + (i * 7919) % 3000) & 0xFFFF, 0, 0x1234, b""))
            for i in range(1300)
        ]
        audio = [(0.0, pkt(0))] + [((k + 1) * FRAME, pkt(20 * k + 1)) for k in range(150)]
        return schedule(audio, 3.5, foreign=events)
    if name == "a burst at one instant":
        burst = [(5.0, RtpPacket(0, k, 100_000 - k, 7, b"b")) for k in range(1500)]  # transits rise
        after = [
            (5.0 + FRAME * k, RtpPacket(0, 1500 + k, 100_000 + TICKS * k, 7, b"a"))
            for k in range(300)
        ]
        return schedule([*burst, *after, (11.0, pkt(0, ssrc=9))], 12.0)  # then a new SSRC
    if name == "consumer stall":
        return schedule(steady(400), 9.0, pops=lambda k: not 100 <= k < 200)
    if name == "sender bursts far ahead":
        return [("push", pkt(i), 0.0) for i in range(500)] + schedule([], 0.6)
    if name == "bad fields and clocks":
        ops = schedule(steady(60), 1.5)
        bad = [
            ("push", RtpPacket(0, 70_000, 0, 0x1234, b"x"), 0.1),
            ("push", RtpPacket(0, -1, 0, 0x1234, b"x"), 0.1),
            ("push", RtpPacket(0, 1100, 2**32, 0x1234, b"x"), 0.1),
            ("push", RtpPacket(0, 1101, 50_000 + 101 * TICKS, 0x1234, b"x"), math.nan),
            ("pop", math.inf),
            ("pop", math.nan),
            ("push", RtpPacket(0, 1102, 50_000 + 102 * TICKS, 0x1234, b"x"), math.inf),
            ("note_foreign", RtpPacket(0, 65_536, 0, 0x1234, b"")),
            ("push", RtpPacket(0, 1103, 50_000 + 103 * TICKS, 0x1234, b"x"), 2.1),
            ("pop", 2.2),
            # NaN in the transit window stops the scan from the back: a packet far ahead of
            # the window's minimum gets a negative bucket, which a list indexes from its end
            # (or raises IndexError beyond it).
            ("push", RtpPacket(0, 1104, 50_000 + 104 * TICKS, 0x1234, b"x"), math.nan),
            ("push", RtpPacket(0, 1105, 50_000 + 105 * TICKS, 0x1234, b"x"), 2.0),
            ("push", RtpPacket(0, 1106, 50_000 + 106 * TICKS, 0x1234, b"x"), 2.05),
            ("push", RtpPacket(0, 1107, 50_000 + 107 * TICKS, 0x1234, b"x"), 1.95),
            ("pop", 2.3),
        ]
        return ops[:40] + bad + ops[40:]
    if name == "packet subclasses":
        return schedule(
            [
                (a, _SubPacket(0, p.sequence, p.timestamp, p.ssrc, p.payload, p.marker))
                for a, p in steady(100)
            ],
            2.5,
        )
    if name == "clock and arrival oddities":
        arrivals = [
            (a + (0.2 if i % 13 == 0 else 0.0) - (0.5 if i % 29 == 0 else 0.0), p)
            for i, (a, p) in enumerate(steady(200))
        ]
        ops = schedule(arrivals, 4.5)
        ops.insert(100, ("pop", 0.0))  # the clock steps back
        ops.insert(200, ("pop", 1e6))  # ... and far ahead
        ops.insert(201, ("push", pkt(300), 3))  # an int arrival
        return ops
    raise AssertionError(name)


NASTY = [
    "ssrc changes and stragglers",
    "timestamp leaps",
    "marker-late talk spurts",
    "25 late in a row",
    "off-grid timestamps",
    "off-grid packets pile up, then a new SSRC",
    "sequence and timestamp wrap-around",
    "huge sequence jumps",
    "foreign packets",
    "more than 1024 foreign packets",
    "a burst at one instant",
    "consumer stall",
    "sender bursts far ahead",
    "bad fields and clocks",
    "packet subclasses",
    "clock and arrival oddities",
]


@pytest.mark.parametrize("quiet", QUIETS)
@pytest.mark.parametrize("case", NASTY)
def test_c_matches_python_on_nasty_streams(case: str, quiet: str) -> None:
    Mirror(RATE, TICKS, is_quiet=QUIETS[quiet]()).run(_nasty(case))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_delay": 0, "max_delay": 0.06, "initial_delay": 0},  # ints: target_delay an int
        {"initial_delay": 1},
        {"initial_delay": math.nan},
        {"min_delay": 0.0, "max_delay": 0.0, "quantile": 0.5},
        {"min_delay": 0.1, "max_delay": 0.5, "quantile": 0.999},
    ],
)
def test_c_matches_python_with_other_settings(kwargs: dict[str, Any]) -> None:
    Mirror(RATE, TICKS, is_quiet=Quiet(), **kwargs).run(_net_trace(7))
    Mirror(48000, 960, is_quiet=Quiet(fail=11), **kwargs).run(_nasty("timestamp leaps"))


def _reentrant_run(cls: type[Buffer], seed: int) -> list[object]:
    """What a buffer does when its is_quiet pops or pushes it (seeded: the same calls).
    An inner pop can play the frame the outer one is deciding about: Python's outer pop
    then takes the next frame from its dict, and raises KeyError where there is none."""
    rng = random.Random(seed)
    state: dict[str, Any] = {"busy": False, "now": 0.0, "calls": 0}

    def quiet(packet: RtpPacket) -> bool:
        if state["busy"]:
            return True
        state["busy"] = True
        state["calls"] += 1
        try:
            if state["calls"] % 4:
                jb.pop(state["now"])
            else:
                jb.push(
                    RtpPacket(0, packet.sequence + 1, packet.timestamp + TICKS, 1, b"r"),
                    state["now"],
                )
        finally:
            state["busy"] = False
        return False

    jb = cls(RATE, TICKS, is_quiet=quiet)
    seen: list[object] = []
    for i in range(300):
        state["now"] = now = i * FRAME + PHASE
        try:
            if rng.random() < 0.93:
                seen.append(jb.push(RtpPacket(0, i, i * TICKS, 1, b"x"), now - 0.01))
            slot = jb.pop(now)
            seen.append(slot and (slot.kind, slot.packet and slot.packet.sequence, slot.skipped))
        except Exception as exc:
            seen.append(repr(exc))
        seen.append((jb.stats, jb.target_delay))
    return seen


def test_c_matches_python_when_is_quiet_reenters_the_buffer() -> None:
    # Nothing should do this, but the C must stay memory-safe, and it behaves the same.
    assert _jitter is not None
    key_errors = 0
    for seed in range(12):
        want = _reentrant_run(PyJitterBuffer, seed)
        assert _reentrant_run(_jitter.JitterBuffer, seed) == want
        key_errors += sum(1 for x in want if isinstance(x, str) and x.startswith("KeyError"))
    assert key_errors  # the odd path was taken


_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("push"),
            st.integers(-3, 4) | st.sampled_from([40, 1023, 1024, 1025, 30_000, 32_768]),
            st.integers(-2, 3),  # frames on
            st.sampled_from([0, 0, 0, 0, 1, 37, -80, 8000 * 60, -8000 * 5, 2**31]),
            st.sampled_from([7, 7, 7, 7, 8]),  # ssrc
            st.booleans(),  # marker
            st.floats(-0.05, 0.4),  # arrival after the clock
        ),
        st.tuples(st.just("pop"), st.sampled_from([0.02, 0.02, 0.02, 0.0, 0.001, 0.5, -0.1])),
        st.tuples(st.just("foreign"), st.integers(-2, 6)),
    ),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(
    ops=_ops,
    quiet=st.sampled_from(list(QUIETS)),
    max_delay=st.sampled_from([0.0, 0.06, 0.2, 0.5]),
    initial=st.sampled_from([0.0, 0.04, 0.1, 0.3]),
    seq0=st.integers(0, 65535),
    ts0=st.integers(0, 2**32 - 1),
)
def test_c_matches_python_on_random_calls(
    ops: list[tuple[Any, ...]], quiet: str, max_delay: float, initial: float, seq0: int, ts0: int
) -> None:
    mirror = Mirror(RATE, TICKS, 0.0, max_delay, initial_delay=initial, is_quiet=QUIETS[quiet]())
    seq, ts, clock = seq0, ts0, 0.0
    for op in ops:
        if op[0] == "push":
            _, dseq, frames, off, ssrc, marker, late = op
            seq = (seq + dseq) & 0xFFFF
            ts = (ts + frames * TICKS + off) & 0xFFFFFFFF
            mirror.do(
                "push", RtpPacket(0, seq, ts, ssrc, b"q" if marker else b"v", marker), clock + late
            )
        elif op[0] == "pop":
            clock += op[1]
            mirror.do("pop", clock + PHASE)
        else:
            mirror.do("note_foreign", RtpPacket(101, (seq + op[1]) & 0xFFFF, ts, 7, b""))


# -- references: the C type holds packets and its callback, and lets go --------------------


class _Owner:
    """Owns a buffer whose is_quiet is its own bound method: a cycle, as in InboundMedia."""

    def __init__(self, jb_type: type[Buffer]) -> None:
        self.jb = jb_type(RATE, TICKS, is_quiet=self.quiet)

    def quiet(self, packet: RtpPacket) -> bool:
        return False


def test_dropped_buffers_release_packets_and_owners(jb_type: type[Buffer]) -> None:
    refs: list[weakref.ref[Any]] = []
    for n in range(100):
        owner = _Owner(jb_type)
        for i in range(n % 40):  # past capacity sometimes, some off the grid
            packet = _SubPacket(0, i, i * TICKS + (37 if i % 5 == 0 else 0), 5, b"x")
            owner.jb.push(packet, i * 0.01)
            refs.append(weakref.ref(packet))
        if n % 2:
            owner.jb.pop(0.5)
            owner.jb.push(_SubPacket(0, 1, 1, 6, b"x"), 0.6)  # new SSRC: all discarded
        refs.append(weakref.ref(owner))
    del owner, packet
    gc.collect()
    assert [r for r in refs if r() is not None] == []


def test_packets_are_released_on_every_path(jb_type: type[Buffer]) -> None:
    packets = [pkt(i) for i in range(60)] + [pkt(i, ts0=50_037) for i in range(60, 70)]
    before = [sys.getrefcount(p) for p in packets]
    for _ in range(20):
        jb = jb_type(RATE, TICKS)
        for i, p in enumerate(packets):
            jb.push(p, i * 0.004)  # dropped over capacity, duplicates
        slots = [jb.pop(0.2 + k * 0.02) for k in range(40)]  # played, skipped, passed by
        jb.push(pkt(0, ssrc=99), 2.0)  # a new SSRC discards the rest
        del slots, jb, p
    gc.collect()
    assert [sys.getrefcount(p) for p in packets] == before


def test_argument_errors_are_type_errors_in_both(jb_type: type[Buffer]) -> None:
    jb = jb_type(RATE, TICKS)
    for call in (
        lambda: jb.push(pkt(0)),
        lambda: jb.push(pkt(0), 0.0, 1),
        lambda: jb.push(pkt(0), 0.0, packet=pkt(1)),
        lambda: jb.pop(when=0.0),
        lambda: jb.note_foreign(),
        lambda: jb_type(RATE),
        lambda: jb_type(RATE, TICKS, 0.02, 0.2, 0.1),  # initial_delay is keyword-only
        lambda: jb.push(None, 0.0),  # no ssrc: AttributeError
    ):
        with pytest.raises((TypeError, AttributeError)) as info:
            call()
        assert info.type is (AttributeError if "None" in repr(info.value) else TypeError)


def test_c_type_binds_itself_and_takes_other_classes() -> None:
    # A fresh interpreter: media._jitter imported alone binds media.jitter's classes on
    # first use (no import cycle). Then, bound to plain dataclasses and a packet class
    # without slots, it calls and reads them instead of filling slots: the same results.
    script = """
import dataclasses
from media import _jitter
jb = _jitter.JitterBuffer(8000, 160)
for i in range(20):
    jb.push(__import__("media.rtp").rtp.RtpPacket(0, i, i * 160, 1, b"x"), i * 0.02)
import media.jitter as mj
slot = jb.pop(0.2)
assert type(slot) is mj.JitterSlot and type(jb.stats) is mj.JitterStats, slot

@dataclasses.dataclass(frozen=True)
class Slot:
    kind: str
    packet: object = None
    next_packet: object = None
    skipped: int = 0

Stats = dataclasses.make_dataclass("Stats", [f.name for f in dataclasses.fields(mj.JitterStats)])

class Packet:
    def __init__(self, seq, ts, marker=False):
        self.ssrc, self.sequence, self.timestamp, self.marker = 1, seq, ts, marker
        self.payload = b"x"

_jitter._bind(Slot, Stats, Packet)
c, py = _jitter.JitterBuffer(8000, 160), mj.PyJitterBuffer(8000, 160)
got, want = [], []
for i in range(300):
    if i % 7:
        p = Packet(i & 0xFFFF, i * 160 + (3 if i % 50 == 0 else 0), i % 40 == 0)
        got.append(c.push(p, i * 0.02 + (i % 5) * 0.01))
        want.append(py.push(p, i * 0.02 + (i % 5) * 0.01))
    a, b = c.pop(i * 0.02 + 0.007), py.pop(i * 0.02 + 0.007)
    assert (a is None) == (b is None) and (a is None or type(a) is Slot), (a, b)
    got.append(a and (a.kind, a.packet, a.next_packet, a.skipped))
    want.append(b and (b.kind, b.packet, b.next_packet, b.skipped))
    assert type(c.stats) is Stats and dataclasses.astuple(c.stats) == dataclasses.astuple(py.stats)
assert got == want
try:
    _jitter._bind(mj.JitterStats, mj.JitterSlot, Packet)
except TypeError as exc:
    assert "fields" in str(exc), exc
else:
    raise AssertionError("bound the wrong classes")
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_c_type_refuses_what_int64_cannot_hold() -> None:
    # Documented differences, none reachable from RTP: Python would carry on with big ints.
    assert _jitter is not None
    with pytest.raises(OverflowError):
        _jitter.JitterBuffer(2**31, 160)
    with pytest.raises(TypeError):
        _jitter.JitterBuffer(8000.0, 160)
    jb = _jitter.JitterBuffer(RATE, TICKS)
    jb.push(pkt(0), 0.0)
    jb.pop(0.2)
    with pytest.raises(OverflowError, match="out of range"):
        jb.pop(1e300)  # a clock 10**300 s on: skip that many frames
