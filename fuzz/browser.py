"""The browser door's start message (streams.browser.StartMessage.parse), the first text
frame of the console's Talk WebSocket.

The documented error is BrowserMessageError.
"""

from __future__ import annotations

from streams.browser import BrowserMessageError, StartMessage

MAX_LEN = 4096


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")  # aiohttp hands over text frames as str
    try:
        start = StartMessage.parse(text)
    except BrowserMessageError:
        return
    assert 0 < len(start.agent) <= 64 and len(start.caller) <= 64
