"""SIP over TCP: sip.framing.StreamFramer cuts the stream, parse_message reads each frame.

The documented error of both is SipParseError. The first input byte sets the size of
the chunks (1-256 bytes) the rest of the stream arrives in, so boundaries fall anywhere.
"""

from __future__ import annotations

from sip.framing import KEEPALIVE_PING, StreamFramer
from sip.grammar import SipParseError
from sip.message import error_response, parse_message

MAX_LEN = 16384


def test_one_input(data: bytes) -> None:
    if not data:
        return
    framer = StreamFramer()
    size = data[0] + 1
    for start in range(1, len(data), size):
        try:
            frames = framer.feed(data[start : start + size])
        except SipParseError as err:
            response = error_response(err)
            if response is not None:
                bytes(response)
            return  # the transport closes the connection
        for frame in frames:
            if frame == KEEPALIVE_PING:
                continue
            try:
                parse_message(frame)
            except SipParseError:
                pass
