"""L16 byte orders: big-endian on RTP, little-endian on the socket doors."""

from __future__ import annotations

import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.l16 import L16Error, check_l16_le, l16_be_to_pcm, pcm_to_l16_be

samples = st.lists(st.integers(-32768, 32767), max_size=400)


def native(values: list[int]) -> bytes:
    return struct.pack(f"={len(values)}h", *values)


def test_known_vector() -> None:
    pcm = native([0x0102, -2, 0x7FFF, -32768])
    assert pcm_to_l16_be(pcm) == bytes.fromhex("0102 fffe 7fff 8000")
    assert l16_be_to_pcm(bytes.fromhex("0102 fffe 7fff 8000")) == pcm


def test_socket_doors_are_little_endian() -> None:
    assert sys.byteorder == "little", "our PCM convention assumes a little-endian host"
    wire = bytes.fromhex("0201 feff")
    pcm = check_l16_le(wire)
    assert pcm is wire  # nothing to convert on a little-endian host: no copy
    assert struct.unpack("=2h", pcm) == (0x0102, -2)


@settings(max_examples=200, deadline=None)
@given(values=samples)
def test_big_endian_round_trip(values: list[int]) -> None:
    pcm = native(values)
    wire = pcm_to_l16_be(pcm)
    assert wire == struct.pack(f">{len(values)}h", *values)
    assert l16_be_to_pcm(wire) == pcm


@settings(max_examples=200, deadline=None)
@given(values=samples)
def test_little_endian_matches_struct(values: list[int]) -> None:
    wire = struct.pack(f"<{len(values)}h", *values)
    assert check_l16_le(wire) == native(values)


def test_accepts_bytearray_and_memoryview() -> None:
    assert pcm_to_l16_be(bytearray(b"\x01\x02")) == b"\x02\x01"
    assert l16_be_to_pcm(memoryview(b"\x01\x02")) == b"\x02\x01"
    assert check_l16_le(bytearray(b"\x01\x02")) == b"\x01\x02"


def test_empty_is_fine() -> None:
    assert pcm_to_l16_be(b"") == b""
    assert l16_be_to_pcm(b"") == b""
    assert check_l16_le(b"") == b""


@pytest.mark.parametrize(
    ("func", "what"),
    [
        (pcm_to_l16_be, "PCM16"),
        (l16_be_to_pcm, "L16 payload"),
        (check_l16_le, "L16 little-endian audio"),
    ],
)
@pytest.mark.parametrize("size", [1, 3, 641])
def test_odd_length_rejected(func, what: str, size: int) -> None:
    with pytest.raises(L16Error, match=f"^{what} must have an even number of bytes, got {size}$"):
        func(bytes(size))


def test_error_is_a_value_error() -> None:
    assert issubclass(L16Error, ValueError)
