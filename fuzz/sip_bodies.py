"""Small SIP bodies read from the network: the message/sipfrag of a refer NOTIFY
(sip.refer.SipFrag, raises SipFragError) and the DTMF of an INFO
(sip.endpoint.parse_dtmf_relay, never raises: None for anything but one digit).

The first input byte picks the parser, the rest is the body.
"""

from __future__ import annotations

from sip.endpoint import DTMF_TYPES, parse_dtmf_relay
from sip.refer import SipFrag, SipFragError

MAX_LEN = 2048


def test_one_input(data: bytes) -> None:
    if not data:
        return
    choice, body = data[0] % 3, data[1:]
    if choice < len(DTMF_TYPES):
        digit = parse_dtmf_relay(body, DTMF_TYPES[choice])
        assert digit is None or (len(digit) == 1 and digit in "0123456789*#ABCD")
        return
    try:
        frag = SipFrag.parse(body)
    except SipFragError:
        return
    assert 100 <= frag.status <= 699 and SipFrag.parse(bytes(frag)) == frag
