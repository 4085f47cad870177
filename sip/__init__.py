"""SIP signalling. The pure layer (no I/O) is re-exported here: messages, headers,
URIs, stream framing; sip.sdp and sip.digest are imported by name."""

from sip.framing import KEEPALIVE_PING, KEEPALIVE_PONG, StreamFramer
from sip.grammar import Params, SipParseError
from sip.headers import Address, CSeq, Headers, MediaType, Via
from sip.message import (
    DEFAULT_LIMITS,
    Limits,
    SipMessage,
    SipRequest,
    SipResponse,
    build_request,
    error_response,
    make_ack,
    make_cancel,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse_message,
)
from sip.uri import Uri

__all__ = [
    "DEFAULT_LIMITS",
    "KEEPALIVE_PING",
    "KEEPALIVE_PONG",
    "Address",
    "CSeq",
    "Headers",
    "Limits",
    "MediaType",
    "Params",
    "SipMessage",
    "SipParseError",
    "SipRequest",
    "SipResponse",
    "StreamFramer",
    "Uri",
    "Via",
    "build_request",
    "error_response",
    "make_ack",
    "make_cancel",
    "make_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse_message",
]
