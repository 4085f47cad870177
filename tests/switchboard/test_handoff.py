"""The front's request-line reading (switchboard.handoff); the handoff itself runs in
tests/streams/test_workers.py against real worker processes."""

from __future__ import annotations

import pytest

from switchboard.handoff import request_path


@pytest.mark.parametrize(("line", "expected"), [
    (b"GET /twilio/stream HTTP/1.1", ("GET", "/twilio/stream")),
    (b"GET /freeswitch?token=x&a=b HTTP/1.1", ("GET", "/freeswitch")),
    (b"POST /twilio/voice HTTP/1.0", ("POST", "/twilio/voice")),
    (b"GET /twilio/stream HTTP/2", None),  # not HTTP/1.x: aiohttp answers it
    (b"GET /twilio/stream", None),
    (b"GET  /twilio/stream HTTP/1.1", None),
    (b"", None),
    (b"GET /\xff HTTP/1.1", None),
    (b"\x16\x03\x01\x02\x00", None),  # a TLS hello on the plain port
])
def test_request_path(line: bytes, expected: tuple[str, str] | None) -> None:
    assert request_path(line) == expected
