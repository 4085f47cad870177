"""SIP messages as they arrive in UDP datagrams (sip.message.parse_message).

The documented error is SipParseError. A message that parses must serialize, parse again
to the same start line, and give every typed header the layers above read; a request
that fails to parse must give an error response (or None) that serializes.
"""

from __future__ import annotations

from sip.grammar import SipParseError
from sip.message import SipRequest, error_response, make_response, parse_message

MAX_LEN = 16384
MORE_SEEDS = ("tests/sip/fixtures/rfc4475", "tests/sip/torture")


def test_one_input(data: bytes) -> None:
    try:
        message = parse_message(data)
    except SipParseError as err:
        response = error_response(err, to_tag="fuzz")
        if response is not None:
            bytes(response)
        return
    # Everything the transaction and dialog layers read, after parse validated it.
    via = message.top_via
    via.branch, via.rport, via.received, str(via.with_received("192.0.2.1", 5060))
    message.cseq, message.call_id, message.max_forwards, message.expires  # noqa: B018
    for address in (message.from_addr, message.to_addr, *message.contacts):
        address.tag, address.expires, str(address)
    for address in (*message.routes, *message.record_routes):
        str(address)
    again = parse_message(bytes(message))
    if isinstance(message, SipRequest):
        assert isinstance(again, SipRequest) and again.method == message.method
        assert again.uri == message.uri, (again.uri, message.uri)
        bytes(make_response(message, 486))
    else:
        assert again.status == message.status  # type: ignore[union-attr]
