"""RTP packets (media.rtp.RtpPacket.parse), every datagram of every call.

The documented error is RtpError. A parsed packet must build back to bytes that parse to
the same packet (padding octets are rebuilt as zeros, so the bytes may differ there).
"""

from __future__ import annotations

from media.rtp import RtpError, RtpPacket, is_rtcp

MAX_LEN = 2048


def test_one_input(data: bytes) -> None:
    is_rtcp(data)
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        return
    wire = bytes(packet)
    assert RtpPacket.parse(wire) == packet
    if not packet.padding:
        assert wire == data
