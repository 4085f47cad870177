from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.seqnum import (
    SeqUnwrapper,
    TsUnwrapper,
    seq_add,
    seq_diff,
    seq_gt,
    seq_lt,
    ts_add,
    ts_diff,
    ts_lt,
)

SETTINGS = settings(max_examples=200, deadline=None)
seqs = st.integers(0, 0xFFFF)
stamps = st.integers(0, 0xFFFFFFFF)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (5, 3, 2),
        (3, 5, -2),
        (0, 65535, 1),
        (65535, 0, -1),
        (2, 65534, 4),
        (32767, 0, 32767),
        (32768, 0, -32768),  # exactly half way: the negative side, by convention
        (7, 7, 0),
    ],
)
def test_seq_diff_examples(a: int, b: int, expected: int) -> None:
    assert seq_diff(a, b) == expected


def test_seq_order_across_wrap() -> None:
    assert seq_lt(65535, 0)
    assert seq_gt(0, 65535)
    assert not seq_lt(0, 65535)
    assert not seq_lt(9, 9)
    assert seq_add(65535, 1) == 0
    assert seq_add(0, -1) == 65535


def test_ts_diff_examples() -> None:
    assert ts_diff(160, 0) == 160
    assert ts_diff(0, 0xFFFFFF60) == 160
    assert ts_diff(0xFFFFFF60, 0) == -160
    assert ts_lt(0xFFFFFF60, 100)
    assert ts_add(0xFFFFFFFF, 161) == 160


@SETTINGS
@given(seqs, st.integers(-32768, 32767))
def test_seq_diff_inverts_add(a: int, n: int) -> None:
    assert seq_diff(seq_add(a, n), a) == n


@SETTINGS
@given(seqs, seqs)
def test_seq_diff_antisymmetric(a: int, b: int) -> None:
    d = seq_diff(a, b)
    assert -32768 <= d <= 32767
    if d != -32768:
        assert seq_diff(b, a) == -d
    assert seq_lt(a, b) == (d < 0)


@SETTINGS
@given(stamps, st.integers(-(2**31), 2**31 - 1))
def test_ts_diff_inverts_add(a: int, n: int) -> None:
    assert ts_diff(ts_add(a, n), a) == n


def test_unwrapper_across_wrap_and_reorder() -> None:
    u = SeqUnwrapper()
    assert [u.unwrap(s) for s in (65533, 65534, 65535, 0, 1, 65535, 2)] == [
        65533,
        65534,
        65535,
        65536,
        65537,
        65535,  # late packet from before the wrap stays in the old cycle
        65538,
    ]
    assert u.highest == 65538


def test_unwrapper_late_packet_before_first_goes_negative() -> None:
    u = SeqUnwrapper()
    assert u.unwrap(2) == 2
    assert u.unwrap(65535) == -1
    u.reset()
    assert u.unwrap(65535) == 65535


def test_unwrapper_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        SeqUnwrapper().unwrap(65536)


def test_ts_unwrapper() -> None:
    u = TsUnwrapper()
    assert u.unwrap(0xFFFFFF60) == 0xFFFFFF60
    assert u.unwrap(0) == 0x1_0000_0000
    assert u.unwrap(160) == 0x1_0000_00A0


@SETTINGS
@given(seqs, st.lists(st.integers(-20, 100), max_size=300))
def test_unwrapper_matches_true_counter(start: int, steps: list[int]) -> None:
    """Walk a true extended counter forward with jitter (never jumping more than half the
    space from the highest value); unwrapping the 16-bit values recovers it exactly."""
    u = SeqUnwrapper()
    true = start
    highest = start
    assert u.unwrap(start) == start
    for step in steps:
        true = max(highest - 100, true + step * 100)
        highest = max(highest, true)
        assert u.unwrap(true & 0xFFFF) == true
