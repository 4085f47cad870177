"""RTP port allocator: even ports, RTCP inside the range, spread, release, exhaustion."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.ports import PortAllocator, PortError, PortRangeError, PortsExhaustedError


def test_allocates_even_ports_with_rtcp_inside_range() -> None:
    alloc = PortAllocator(10001, 10010, rng=random.Random(1))
    ports = [alloc.allocate() for _ in range(alloc.capacity)]
    assert sorted(ports) == [10002, 10004, 10006, 10008]  # 10010 has no 10011 in range
    assert all(p % 2 == 0 and p + 1 <= 10010 for p in ports)


def test_exhaustion_raises_specific_error_and_release_recovers() -> None:
    alloc = PortAllocator(20000, 20003)
    assert alloc.capacity == 2
    a, b = alloc.allocate(), alloc.allocate()
    with pytest.raises(PortsExhaustedError, match=r"all 2 RTP ports in 20000-20003 are in use"):
        alloc.allocate()
    alloc.release(a)
    assert alloc.allocate() == a
    assert alloc.in_use == 2 and b in (20000, 20002)


def test_released_port_goes_to_the_back() -> None:
    alloc = PortAllocator(30000, 30009, rng=random.Random(0))
    first = alloc.allocate()
    alloc.release(first)
    following = [alloc.allocate() for _ in range(alloc.capacity)]
    assert following[-1] == first


def test_random_start_spreads_allocations() -> None:
    firsts = {PortAllocator(40000, 41000, rng=random.Random(seed)).allocate() for seed in range(20)}
    assert len(firsts) > 10


def test_double_release_and_foreign_port_raise() -> None:
    alloc = PortAllocator(10000, 10003)
    port = alloc.allocate()
    alloc.release(port)
    with pytest.raises(PortError, match="not allocated"):
        alloc.release(port)
    with pytest.raises(PortError, match="not allocated"):
        alloc.release(12345)


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [(80, 10000, "within 1024-65535"), (10000, 9000, "within"), (10001, 10002, "no even port"),
     (10000, 10000, "no even port"), (65534, 65536, "within")],
)
def test_bad_ranges(low: int, high: int, message: str) -> None:
    with pytest.raises(PortRangeError, match=message):
        PortAllocator(low, high)
    assert issubclass(PortRangeError, ValueError)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), max_size=60), st.integers(0, 2**32))
def test_never_hands_out_a_port_twice(ops: list[bool], seed: int) -> None:
    alloc = PortAllocator(50000, 50020, rng=random.Random(seed))
    held: list[int] = []
    rng = random.Random(seed)
    for take in ops:
        if take:
            try:
                port = alloc.allocate()
            except PortsExhaustedError:
                assert len(held) == alloc.capacity
                continue
            assert port not in held
            held.append(port)
        elif held:
            alloc.release(held.pop(rng.randrange(len(held))))
        assert alloc.in_use == len(held)
        assert alloc.available + alloc.in_use == alloc.capacity
