"""The jitter buffer's behaviour: playout, loss, pauses, discontinuities, bounds and
adaptation; every test on both implementations (the Python reference and media._jitter)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.jitter import JitterSlot, JitterStats, PyJitterBuffer
from media.netsim import NetConditions, NetSim
from media.rtp import RtpPacket
from tests.media.jitter_support import (
    FRAME,
    RATE,
    TICKS,
    Arrival,
    Buffer,
    inner,
    kinds,
    pkt,
    play,
    played,
    steady,
)

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
