"""Twilio Media Streams messages (streams.twilio_messages.parse_message), one WebSocket
text frame each.

The documented error is TwilioMessageError (UnknownEventError is one). The input is
tried as the raw bytes and as the text aiohttp would hand over. A parsed message must
print (to_json) as a frame that parses back to it. The fast path for media in Twilio's
exact layout (media_fields) must agree with the full JSON parser whenever it answers.
"""

from __future__ import annotations

from streams.twilio_messages import (
    Media,
    TwilioMessageError,
    _parse_json,
    media_fields,
    parse_message,
)

MAX_LEN = 8192


def _same_as_full_parser(frame: str | bytes) -> None:
    fields = media_fields(frame)
    if fields is None:
        return
    sid, track, timestamp, payload, seq, chunk = fields
    assert _parse_json(frame) == Media(sid, seq, chunk, timestamp, payload, track)


def test_one_input(data: bytes) -> None:
    for frame in (data, data.decode("utf-8", "replace")):
        _same_as_full_parser(frame)
        try:
            message = parse_message(frame)
        except TwilioMessageError:
            continue
        printed = message.to_json()
        _same_as_full_parser(printed)
        assert parse_message(printed) == message == _parse_json(printed)
