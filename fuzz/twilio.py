"""Twilio Media Streams messages (streams.twilio_messages.parse_message), one WebSocket
text frame each.

The documented error is TwilioMessageError (UnknownEventError is one). The input is
tried as the raw bytes and as the text aiohttp would hand over. A parsed message must
print (to_json) as a frame that parses back to it.
"""

from __future__ import annotations

from streams.twilio_messages import TwilioMessageError, parse_message

MAX_LEN = 8192


def test_one_input(data: bytes) -> None:
    for frame in (data, data.decode("utf-8", "replace")):
        try:
            message = parse_message(frame)
        except TwilioMessageError:
            continue
        assert parse_message(message.to_json()) == message
