"""SIP header values one at a time: Via, name-addr (From/To/Contact/Route), URI, CSeq,
Content-Type and parameters (sip.headers, sip.uri, sip.grammar).

The first input byte picks the parser, the rest is the value as parse_head() decodes it.
The documented error is SipParseError. What parses must print as text that parses and
prints the same again, since we copy these into the messages we send.
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
    printed = str(value)  # '""<sip:a@b>' prints as '<sip:a@b>': same meaning, other value
    assert str(parse(printed)) == printed, (text, printed)
