"""Compound RTCP packets (media.rtcp.parse_compound): SR, RR, SDES, BYE and the rest kept raw.

The documented error is RtcpError. What parses must build back (build_compound) to
bytes that parse to the same packets.
"""

from __future__ import annotations

from media.rtcp import RtcpError, build_compound, parse_compound

MAX_LEN = 2048


def test_one_input(data: bytes) -> None:
    try:
        packets = parse_compound(data)
    except RtcpError:
        return
    assert parse_compound(build_compound(packets)) == packets
