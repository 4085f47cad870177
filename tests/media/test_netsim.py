from __future__ import annotations

import statistics

import pytest

from media.netsim import NetConditions, NetSim

FRAME = 0.02


def _sends(count: int, net: NetSim) -> list[tuple[float, bytes]]:
    return [(net.send_time(i), i.to_bytes(4, "big")) for i in range(count)]


def _index(data: bytes) -> int:
    return int.from_bytes(data, "big")


def test_perfect_path_delivers_everything_in_order_after_the_fixed_delay() -> None:
    net = NetSim(NetConditions(delay=0.035), seed=1)
    arrivals = net.run(_sends(100, net))
    assert [_index(d) for _, d in arrivals] == list(range(100))
    assert all(a == pytest.approx(i * FRAME + 0.035) for i, (a, _) in enumerate(arrivals))
    assert (net.stats.sent, net.stats.lost, net.stats.delivered) == (100, 0, 100)


def test_same_seed_same_run_and_other_seed_another() -> None:
    cond = NetConditions(loss=0.1, jitter=0.03, duplicate=0.05)
    first = NetSim(cond, seed=7).run(_sends(500, NetSim(cond)))
    again = NetSim(cond, seed=7).run(_sends(500, NetSim(cond)))
    other = NetSim(cond, seed=8).run(_sends(500, NetSim(cond)))
    assert first == again
    assert first != other


def test_random_loss_rate() -> None:
    net = NetSim(NetConditions(loss=0.1), seed=3)
    arrivals = net.run(_sends(20000, net))
    assert 0.09 < 1 - len(arrivals) / 20000 < 0.11
    assert net.stats.lost == 20000 - len(arrivals)


def test_gilbert_elliott_bursts_have_the_requested_rate_and_length() -> None:
    net = NetSim(NetConditions.bursty(0.1, mean_burst=4.0), seed=5)
    arrivals = net.run(_sends(50000, net))
    got = {_index(d) for _, d in arrivals}
    lost = [i not in got for i in range(50000)]
    bursts: list[int] = []
    run = 0
    for flag in lost:
        if flag:
            run += 1
        elif run:
            bursts.append(run)
            run = 0
    assert 0.09 < sum(lost) / len(lost) < 0.11
    assert 3.5 < statistics.mean(bursts) < 4.5
    # Independent loss at 10 % would give bursts of 1.11 on average.
    assert max(bursts) >= 10


def test_jitter_reorders_and_never_delivers_before_the_fixed_delay() -> None:
    net = NetSim(NetConditions(delay=0.02, jitter=0.04), seed=11)
    arrivals = net.run(_sends(2000, net))
    order = [_index(d) for _, d in arrivals]
    assert sorted(order) == list(range(2000))
    assert order != sorted(order)  # 40 ms of jitter on 20 ms spacing reorders
    assert [a for a, _ in arrivals] == sorted(a for a, _ in arrivals)
    extra = [a - i * FRAME - 0.02 for a, i in ((a, _index(d)) for a, d in arrivals)]
    assert min(extra) >= 0.0
    # Half-normal with sigma 40 ms: mean sigma * sqrt(2 / pi) = 31.9 ms.
    assert statistics.mean(extra) == pytest.approx(0.0319, rel=0.1)


def test_exponential_jitter_has_the_requested_mean() -> None:
    net = NetSim(NetConditions(delay=0.0, jitter=0.04, jitter_model="exponential"), seed=2)
    arrivals = net.run(_sends(5000, net))
    extra = [a - _index(d) * FRAME for a, d in arrivals]
    assert statistics.mean(extra) == pytest.approx(0.04, rel=0.1)


def test_duplicates_are_identical_copies_with_their_own_delay() -> None:
    net = NetSim(NetConditions(duplicate=0.2, jitter=0.01), seed=4)
    arrivals = net.run(_sends(5000, net))
    counts: dict[int, int] = {}
    for _, data in arrivals:
        counts[_index(data)] = counts.get(_index(data), 0) + 1
    doubled = sum(1 for c in counts.values() if c == 2)
    assert set(counts.values()) <= {1, 2}
    assert doubled == net.stats.duplicated
    assert 0.18 < doubled / 5000 < 0.22


@pytest.mark.parametrize("drift", [0.005, -0.005])
def test_sender_clock_drift_stretches_the_send_schedule(drift: float) -> None:
    net = NetSim(NetConditions(drift=drift))
    assert net.send_time(30000) == pytest.approx(30000 * FRAME * (1 + drift))
    assert net.send_time(1, start=5.0) == pytest.approx(5.0 + FRAME * (1 + drift))


def test_streaming_send_and_receive_match_run() -> None:
    cond = NetConditions(loss=0.05, jitter=0.03, duplicate=0.05)
    ref = NetSim(cond, seed=9)
    expected = ref.run(_sends(300, ref))
    net = NetSim(cond, seed=9)
    got: list[tuple[float, bytes]] = []
    sends = _sends(300, net)
    now = 0.0
    for send_time, data in sends:
        while now + 0.01 < send_time:
            now += 0.01
            got += net.receive(now)
        net.send(send_time, data)
    got += net.receive(1e9)
    assert got == expected
    assert net.in_flight == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss": 1.5}, "loss must be a probability"),
        ({"duplicate": -0.1}, "duplicate must be a probability"),
        ({"jitter": -0.01}, "delay and jitter must be >= 0"),
        ({"jitter_model": "pareto"}, "jitter_model must be"),
        ({"burst_start": 0.1, "burst_end": 0.0}, "burst never ends"),
        ({"drift": 0.7}, "drift must be a small fraction"),
    ],
)
def test_bad_conditions_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NetConditions(**kwargs)  # type: ignore[arg-type]


def test_bursty_refuses_impossible_parameters() -> None:
    with pytest.raises(ValueError, match="mean_burst >= 1"):
        NetConditions.bursty(0.1, mean_burst=0.5)
