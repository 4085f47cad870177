"""Asterisk chan_websocket control frames (streams.asterisk_ws_messages): an event as the
door reads it (parse_event, then media_start / dtmf_digit by name), and a command as a
test peer reads it (parse_command). The documented error is ControlMessageError.
"""

from __future__ import annotations

from streams.asterisk_ws_messages import (
    ControlMessageError,
    dtmf_digit,
    media_start,
    parse_command,
    parse_event,
)

MAX_LEN = 4096


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")  # aiohttp hands over text frames as str
    try:
        event = parse_event(text)
        if event.name == "MEDIA_START":
            start = media_start(event)
            assert start.ptime == 20 and start.optimal_frame_size > 0
        elif event.name == "DTMF_END":
            assert len(dtmf_digit(event)) == 1
    except ControlMessageError:
        pass
    try:
        parse_command(text)
    except ControlMessageError:
        pass
