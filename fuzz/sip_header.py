"""SIP header values one at a time: Via, name-addr (From/To/Contact/Route), URI, CSeq,
Content-Type and parameters (sip.headers, sip.uri, sip.grammar).

The first input byte picks the parser, the rest is the value as parse_head() decodes it.
The documented error is SipParseError. What parses must print as text that parses back
to the same value, since we copy these into the messages we send.
"""

from __future__ import annotations

from sip.grammar import Params, SipParseError
from sip.headers import Address, CSeq, MediaType, Via
from sip.uri import Uri

PARSERS = (Via.parse, Address.parse, Uri.parse, CSeq.parse, MediaType.parse, Params.parse)
MAX_LEN = 4096


def test_one_input(data: bytes) -> None:
    if not data:
        return
    parse = PARSERS[data[0] % len(PARSERS)]
    text = data[1:].decode("utf-8", "surrogateescape")
    try:
        value = parse(text)
    except SipParseError:
        return
    again = parse(str(value))
    assert again == value, (text, str(value), again, value)
