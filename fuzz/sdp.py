"""SDP bodies (sip.sdp): SessionDescription.parse, then offer/answer as a call does it.

The documented error is SdpError (NoCommonCodec is one). The input is read as an offer
from the caller and, separately, as the answer to our own offer. What parses must print
as SDP that prints the same again.
"""

from __future__ import annotations

from sip.sdp import SdpError, SdpSession, SessionDescription

MAX_LEN = 8192


def _session() -> SdpSession:
    return SdpSession("192.0.2.1", 40000, 1, codecs=("PCMU", "PCMA", "opus", "G722"))


def test_one_input(data: bytes) -> None:
    try:
        sdp = SessionDescription.parse(data)
    except SdpError:
        return
    for media in sdp.media:
        media.codecs(), media.ptime, media.maxptime, media.rtcp_port
        sdp.direction_of(media), sdp.connection_of(media)
    wire = bytes(sdp)  # lines in RFC 4566 order: stable from the first rewrite on
    assert bytes(SessionDescription.parse(wire)) == wire
    try:
        answer, _ = _session().receive_offer(sdp)
        bytes(answer)
    except SdpError:
        pass
    ours = _session()
    ours.create_offer()
    try:
        ours.receive_answer(sdp)
    except SdpError:
        pass
