"""The shared 20 ms pacer: the pure schedule, then the asyncio runner on a ManualClock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.clock import ManualClock
from media.pacer import PERIOD, DueTicks, Pacer, PacerStats, PaceSchedule

# -- PaceSchedule (pure) -----------------------------------------------------------------------


def test_ticks_fall_on_the_absolute_grid() -> None:
    s = PaceSchedule(100.0)
    assert s.due(100.0) == DueTicks(0, (0.0,), 0)
    assert len(s.due(100.0199)) == 0
    due = s.due(100.02)
    assert list(due.ticks) == [1] and due.skipped == 0
    assert s.next_tick == 2
    assert s.next_deadline == pytest.approx(100.04)


def test_late_wakeups_do_not_drift() -> None:
    s = PaceSchedule(0.0)
    for n in range(5000):
        lateness = (n * 7 % 15 + 0.5) / 1000  # 0.5..14.5 ms late, never a whole period
        due = s.due(n * PERIOD + lateness)
        assert list(due.ticks) == [n]
        assert due.lateness[0] == pytest.approx(lateness, abs=1e-9)
    assert s.next_deadline == pytest.approx(5000 * PERIOD, abs=1e-9)
    stats = s.stats
    assert (stats.ticks, stats.skipped, stats.stalls) == (5000, 0, 0)
    assert stats.max_lateness == pytest.approx(0.0145)
    assert stats.late == sum(1 for n in range(5000) if (n * 7 % 15) >= 5)  # over 5 ms


def test_short_stall_runs_every_overdue_tick() -> None:
    s = PaceSchedule(100.0)
    s.due(100.0)
    due = s.due(100.085)  # ticks 1-4 (at .02 .04 .06 .08) are due: 1 + max_catch_up
    assert list(due.ticks) == [1, 2, 3, 4] and due.skipped == 0
    assert due.lateness == pytest.approx((0.065, 0.045, 0.025, 0.005))
    assert s.next_deadline == pytest.approx(100.10)  # the grid is kept
    assert s.stats.stalls == 0


def test_long_stall_catches_up_a_bounded_number_then_reanchors() -> None:
    s = PaceSchedule(100.0, max_catch_up=3)
    s.due(100.0)
    due = s.due(100.205)  # blocked ~200 ms: ticks 1-10 are overdue
    assert list(due.ticks) == [1, 2, 3, 4]
    assert due.skipped == 6
    assert s.next_tick == 11
    assert s.next_deadline == pytest.approx(100.225)  # one period after the stall
    stats = s.stats
    assert (stats.ticks, stats.late, stats.skipped, stats.stalls) == (5, 4, 6, 1)
    assert stats.max_lateness == pytest.approx(0.185)
    # The new grid is as drift-free as the old one.
    for k in range(1, 100):
        assert list(s.due(100.205 + k * PERIOD + 0.001).ticks) == [10 + k]
    assert s.next_deadline == pytest.approx(100.205 + 100 * PERIOD)


def test_no_catch_up() -> None:
    s = PaceSchedule(0.0, max_catch_up=0)
    s.due(0.0)
    due = s.due(0.05)
    assert list(due.ticks) == [1] and due.skipped == 1


def test_schedule_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="period must be positive"):
        PaceSchedule(0.0, period=0.0)
    with pytest.raises(ValueError, match="max_catch_up must be >= 0"):
        PaceSchedule(0.0, max_catch_up=-1)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.floats(0.0, 0.5, allow_nan=False), min_size=1, max_size=60),
    max_catch_up=st.integers(0, 5),
)
def test_schedule_accounts_for_every_tick(steps: list[float], max_catch_up: int) -> None:
    s = PaceSchedule(50.0, max_catch_up=max_catch_up)
    now, expected_next, run_total, skipped_total = 50.0, 0, 0, 0
    for step in steps:
        now += step
        due = s.due(now)
        assert due.first == expected_next  # indices are contiguous; skipped ones are never run
        assert len(due) <= 1 + max_catch_up
        assert all(x >= 0.0 for x in due.lateness)
        assert list(due.lateness) == sorted(due.lateness, reverse=True)
        expected_next += len(due) + due.skipped
        run_total += len(due)
        skipped_total += due.skipped
        assert len(s.due(now)) == 0  # nothing due is left behind
        assert now < s.next_deadline <= now + PERIOD + 1e-9
    assert s.next_tick == expected_next
    assert (s.stats.ticks, s.stats.skipped) == (run_total, skipped_total)


# -- Pacer on a ManualClock ---------------------------------------------------------------------


async def settle() -> None:
    """Let woken tasks run; time does not move."""
    for _ in range(10):
        await asyncio.sleep(0)


@dataclass
class Rig:
    clock: ManualClock
    pacer: Pacer
    lateness: list[float]  # what on_lateness received
    skipped: list[int]  # what on_skipped received


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = ManualClock(10.0)
    lateness: list[float] = []
    skipped: list[int] = []
    pacer = Pacer(clock, on_lateness=lateness.append, on_skipped=skipped.append)
    yield Rig(clock, pacer, lateness, skipped)
    await pacer.stop()


async def test_ticks_exactly_when_due(rig: Rig) -> None:
    clock, pacer = rig.clock, rig.pacer
    seen: list[int] = []
    pacer.add(seen.append)
    pacer.start()
    await settle()
    assert seen == [0]  # tick 0 is due at start
    clock.advance(0.019)
    await settle()
    assert seen == [0]
    clock.advance(0.001)
    await settle()
    assert seen == [0, 1]
    for _ in range(10):
        clock.advance(PERIOD)
        await settle()
    assert seen == list(range(12))
    assert pacer.tick == 11
    stats = pacer.stats
    assert (stats.ticks, stats.late, stats.skipped) == (12, 0, 0)
    assert rig.lateness == pytest.approx([0.0] * 12, abs=1e-6)


async def test_stall_catch_up_on_the_runner(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    clock, pacer = rig.clock, rig.pacer
    seen: list[int] = []
    pacer.add(seen.append)
    pacer.start()
    await settle()
    with caplog.at_level(logging.WARNING, logger="media.pacer"):
        clock.advance(0.2)  # the loop was blocked for 200 ms
        await settle()
    assert seen == [0, 1, 2, 3, 4]
    assert rig.skipped == [6]
    assert "skipped 6 ticks" in caplog.text
    clock.advance(0.019)
    await settle()
    assert seen[-1] == 4
    clock.advance(0.001)
    await settle()
    assert seen[-1] == 11
    stats = pacer.stats
    assert (stats.ticks, stats.late, stats.skipped, stats.stalls) == (6, 4, 6, 1)
    assert stats.max_lateness == pytest.approx(0.18)
    assert rig.lateness[1:5] == pytest.approx([0.18, 0.16, 0.14, 0.12])


async def test_one_clock_serves_hundreds_of_streams(
    rig: Rig,
) -> None:
    clock, pacer = rig.clock, rig.pacer
    counts = [0] * 300

    def subscriber(i: int):
        def on_tick(tick: int) -> None:
            counts[i] += 1

        return on_tick

    for i in range(300):
        pacer.add(subscriber(i))
    assert len(pacer) == 300
    pacer.start()
    await settle()
    for _ in range(49):
        clock.advance(PERIOD)
        await settle()
    assert counts == [50] * 300


async def test_add_and_remove_during_a_tick(rig: Rig) -> None:
    clock, pacer = rig.clock, rig.pacer
    calls: list[tuple[str, int]] = []

    def make(name: str):
        def on_tick(tick: int) -> None:
            calls.append((name, tick))
            if name == "a" and tick == 1:
                assert pacer.remove(b)  # later in this same tick: b must not run
                pacer.add(d)  # added during the tick: runs from the next tick
            if name == "c" and tick == 2:
                assert pacer.remove(c)  # removing oneself

        return on_tick

    a, b, c, d = make("a"), make("b"), make("c"), make("d")
    for sub in (a, b, c):
        pacer.add(sub)
    pacer.start()
    await settle()
    for _ in range(3):
        clock.advance(PERIOD)
        await settle()
    assert calls == [
        ("a", 0), ("b", 0), ("c", 0),
        ("a", 1), ("c", 1),
        ("a", 2), ("c", 2), ("d", 2),
        ("a", 3), ("d", 3),
    ]  # fmt: skip
    assert pacer.remove(b) is False
    assert b not in pacer and d in pacer
    with pytest.raises(ValueError, match="already registered"):
        pacer.add(a)


async def test_a_failing_subscriber_is_logged_and_removed(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    clock, pacer = rig.clock, rig.pacer
    good: list[int] = []
    bad_calls: list[int] = []

    def bad(tick: int) -> None:
        bad_calls.append(tick)
        if tick == 1:
            raise RuntimeError("socket gone")

    pacer.add(bad)
    pacer.add(good.append)
    pacer.start()
    with caplog.at_level(logging.ERROR, logger="media.pacer"):
        for _ in range(4):
            await settle()
            clock.advance(PERIOD)
    await settle()
    assert bad_calls == [0, 1]
    assert good == [0, 1, 2, 3, 4]
    assert bad not in pacer and pacer.running
    assert pacer.stats.subscriber_errors == 1
    assert "raised at tick 1; removed" in caplog.text and "socket gone" in caplog.text


async def test_a_failing_metrics_hook_does_not_stop_ticks(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()

    def hook(lateness: float) -> None:
        raise ZeroDivisionError

    pacer = Pacer(clock, on_lateness=hook)
    seen: list[int] = []
    pacer.add(seen.append)
    pacer.start()
    await settle()
    clock.advance(PERIOD)
    await settle()
    await pacer.stop()
    assert seen == [0, 1]
    assert "on_lateness hook raised" in caplog.text


# -- starting and stopping --------------------------------------------------------------------


async def test_stop_is_clean_and_idempotent() -> None:
    clock = ManualClock()
    pacer = Pacer(clock)
    assert pacer.stats == PacerStats()
    seen: list[int] = []
    pacer.add(seen.append)
    task = pacer.start()
    await settle()
    await pacer.stop()
    assert task.done() and not task.cancelled() and task.exception() is None
    assert not pacer.running
    await pacer.stop()
    clock.advance(1.0)
    await settle()
    assert seen == [0]
    with pytest.raises(RuntimeError, match="runs once"):
        pacer.start()


async def test_stop_before_the_first_tick() -> None:
    pacer = Pacer(ManualClock())
    seen: list[int] = []
    pacer.add(seen.append)
    task = pacer.start()
    await pacer.stop()  # the task never got to run
    assert task.done() and seen == []


async def test_stop_scheduled_by_a_subscriber() -> None:
    clock = ManualClock()
    pacer = Pacer(clock)
    seen: list[int] = []
    stoppers: list[asyncio.Task[None]] = []

    def on_tick(tick: int) -> None:
        seen.append(tick)
        if tick == 2:
            stoppers.append(asyncio.get_running_loop().create_task(pacer.stop()))

    pacer.add(on_tick)
    task = pacer.start()
    for _ in range(5):
        await settle()
        clock.advance(PERIOD)
    await settle()
    assert seen == [0, 1, 2]
    assert stoppers[0].done() and task.done() and not task.cancelled()


async def test_run_awaited_directly_stops_cleanly() -> None:
    clock = ManualClock()
    pacer = Pacer(clock)
    runner = asyncio.create_task(pacer.run())
    await settle()
    assert pacer.running
    await pacer.stop()
    assert runner.done() and not runner.cancelled()


async def test_outside_cancellation_is_not_swallowed() -> None:
    pacer = Pacer(ManualClock())
    task = pacer.start()
    await settle()
    task.cancel()
    await settle()
    assert task.cancelled()
    await pacer.stop()  # nothing left to stop
