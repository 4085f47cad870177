"""SIP requests and responses (RFC 3261 7): parse, serialize, and build responses.

parse_message() takes one UDP datagram or one frame cut by sip.framing.StreamFramer.
It raises SipParseError only; `err.headers` is set when a request is bad but a response
can still be routed (error_response(err) builds it), otherwise the message is dropped.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace

from sip.grammar import LWS, SipParseError, is_token, parse_uint, snippet
from sip.headers import Address, CSeq, Headers, MediaType, Via, canonical_name, has_sent_by
from sip.uri import SUPPORTED_SCHEMES, Uri


@dataclass(frozen=True, slots=True)
class Limits:
    max_message: int = 65536  # bytes, start line to end of body
    max_headers: int = 128  # header lines after unfolding
    max_line: int = 8192  # characters in one unfolded header line
    max_via: int = 70  # Via values (a loop or an attack long before 70 hops)


DEFAULT_LIMITS = Limits()
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_VERSION = re.compile(r"SIP/[0-9]+\.[0-9]+")


def _required(name: str, parse):  # type: ignore[no-untyped-def]
    def run(values: list[str]):  # type: ignore[no-untyped-def]
        if not values:
            raise SipParseError(f"missing {name} header")
        if len(values) > 1:
            raise SipParseError(f"more than one {name} header")
        return parse(values[0])

    return run


def _optional(name: str, parse):  # type: ignore[no-untyped-def]
    def run(values: list[str]):  # type: ignore[no-untyped-def]
        if len(values) > 1:
            raise SipParseError(f"more than one {name} header")
        return parse(values[0]) if values else None

    return run


def _each(name: str, parse):  # type: ignore[no-untyped-def]
    def run(values: list[str]):  # type: ignore[no-untyped-def]
        if any(not v for v in values):
            raise SipParseError(f"empty element in {name} header")
        return tuple(parse(v) for v in values)

    return run


def _call_id(value: str) -> str:
    if not value or " " in value or "\t" in value:
        raise SipParseError(f"bad Call-ID: {snippet(value)}")
    return value


def _delta_seconds(what: str):  # type: ignore[no-untyped-def]
    def run(value: str) -> int:
        # RFC 3261 20.19: values past 2**32-1 mean 2**32-1.
        if len(value) > 10 and value.isascii() and value.isdigit():
            return 2**32 - 1
        return min(parse_uint(value, what, 10**10), 2**32 - 1)

    return run


_VIAS = _each("Via", Via.parse)
_FROM = _required("From", Address.parse)
_TO = _required("To", Address.parse)
_CALL_ID = _required("Call-ID", _call_id)
_CSEQ = _required("CSeq", CSeq.parse)
_MAX_FORWARDS = _optional("Max-Forwards", lambda v: parse_uint(v, "Max-Forwards", 255))
_CONTENT_LENGTH = _optional("Content-Length", lambda v: parse_uint(v, "Content-Length", 2**31))
_CONTENT_TYPE = _optional("Content-Type", MediaType.parse)
_EXPIRES = _optional("Expires", _delta_seconds("Expires"))
_ROUTES = _each("Route", Address.parse)
_RECORD_ROUTES = _each("Record-Route", Address.parse)
_CONTACTS = _each("Contact", lambda v: None if v == "*" else Address.parse(v))


class _Message:
    """Typed header views shared by requests and responses, parsed once and cached."""

    __slots__ = ()
    headers: Headers
    body: bytes

    @property
    def vias(self) -> tuple[Via, ...]:
        return self.headers.typed("Via", _VIAS)  # type: ignore[no-any-return]

    @property
    def top_via(self) -> Via:
        vias = self.vias
        if not vias:
            raise SipParseError("missing Via header")
        return vias[0]

    @property
    def from_addr(self) -> Address:
        return self.headers.typed("From", _FROM)  # type: ignore[no-any-return]

    @property
    def to_addr(self) -> Address:
        return self.headers.typed("To", _TO)  # type: ignore[no-any-return]

    @property
    def call_id(self) -> str:
        return self.headers.typed("Call-ID", _CALL_ID)  # type: ignore[no-any-return]

    @property
    def cseq(self) -> CSeq:
        return self.headers.typed("CSeq", _CSEQ)  # type: ignore[no-any-return]

    @property
    def max_forwards(self) -> int | None:
        return self.headers.typed("Max-Forwards", _MAX_FORWARDS)  # type: ignore[no-any-return]

    @property
    def content_type(self) -> MediaType | None:
        return self.headers.typed("Content-Type", _CONTENT_TYPE)  # type: ignore[no-any-return]

    @property
    def content_length(self) -> int | None:
        """The Content-Length header; after parsing, len(body) equals it when present."""
        return self.headers.typed("Content-Length", _CONTENT_LENGTH)  # type: ignore[no-any-return]

    @property
    def expires(self) -> int | None:
        return self.headers.typed("Expires", _EXPIRES)  # type: ignore[no-any-return]

    @property
    def contacts(self) -> tuple[Address, ...]:
        """Contact addresses; empty for 'Contact: *' (see contact_wildcard)."""
        return tuple(c for c in self.headers.typed("Contact", _CONTACTS) if c is not None)

    @property
    def contact_wildcard(self) -> bool:
        """'Contact: *' (REGISTER removing every binding)."""
        return None in self.headers.typed("Contact", _CONTACTS)

    @property
    def routes(self) -> tuple[Address, ...]:
        return self.headers.typed("Route", _ROUTES)  # type: ignore[no-any-return]

    @property
    def record_routes(self) -> tuple[Address, ...]:
        return self.headers.typed("Record-Route", _RECORD_ROUTES)  # type: ignore[no-any-return]

    def header(self, name: str) -> str | None:
        """The raw value of the first `name` line (case-insensitive, compact forms too)."""
        return self.headers.get(name)

    def _serialize(self, start_line: str) -> bytes:
        lines = [start_line]
        length_done = False
        for name, value in self.headers:
            if name == "Content-Length":
                if length_done:
                    continue
                value, length_done = str(len(self.body)), True
            lines.append(f"{name}: {value}")
        if not length_done:
            lines.append(f"Content-Length: {len(self.body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body


@dataclass(frozen=True, slots=True)
class SipRequest(_Message):
    method: str
    uri: Uri
    headers: Headers
    body: bytes = b""

    @classmethod
    def parse(cls, data: bytes, limits: Limits = DEFAULT_LIMITS) -> SipRequest:
        message = parse_message(data, limits)
        if not isinstance(message, SipRequest):
            raise SipParseError("expected a request, got a response")
        return message

    def __bytes__(self) -> bytes:
        return self._serialize(f"{self.method} {self.uri} SIP/2.0")

    def with_header(self, name: str, value: object, *, top: bool = False) -> SipRequest:
        return replace(self, headers=self.headers.with_header(name, value, top=top))

    def with_replaced(self, name: str, value: object) -> SipRequest:
        return replace(self, headers=self.headers.with_replaced(name, value))

    def without(self, name: str) -> SipRequest:
        return replace(self, headers=self.headers.without(name))


@dataclass(frozen=True, slots=True)
class SipResponse(_Message):
    status: int
    reason: str
    headers: Headers
    body: bytes = b""

    @classmethod
    def parse(cls, data: bytes, limits: Limits = DEFAULT_LIMITS) -> SipResponse:
        message = parse_message(data, limits)
        if not isinstance(message, SipResponse):
            raise SipParseError("expected a response, got a request")
        return message

    def __bytes__(self) -> bytes:
        return self._serialize(f"SIP/2.0 {self.status} {self.reason}")

    def with_header(self, name: str, value: object, *, top: bool = False) -> SipResponse:
        return replace(self, headers=self.headers.with_header(name, value, top=top))

    def with_replaced(self, name: str, value: object) -> SipResponse:
        return replace(self, headers=self.headers.with_replaced(name, value))

    def without(self, name: str) -> SipResponse:
        return replace(self, headers=self.headers.without(name))


SipMessage = SipRequest | SipResponse


def parse_message(data: bytes, limits: Limits = DEFAULT_LIMITS) -> SipMessage:
    """Parse one message. A body longer than Content-Length is cut (RFC 3261 18.3, what a
    UDP datagram may carry); a shorter one is an error; no Content-Length means the rest
    of the data is the body."""
    if len(data) > limits.max_message:
        raise SipParseError(f"message of {len(data)} bytes exceeds {limits.max_message}", 513)
    start_line, headers, body, error = parse_head(data, limits)
    is_request = not start_line.startswith("SIP/")
    try:
        if error is not None:
            raise error
        if is_request:
            method, uri = _parse_request_line(start_line)
            message: SipMessage = SipRequest(method, uri, headers, _body(headers, body))
        else:
            status, reason = _parse_status_line(start_line)
            message = SipResponse(status, reason, headers, _body(headers, body))
        _validate(message, limits)
    except SipParseError as err:
        if is_request and _answerable(headers):
            err.headers = headers
        raise
    return message


def parse_head(data: bytes, limits: Limits) -> tuple[str, Headers, bytes, SipParseError | None]:
    """Split start line, header lines (unfolded) and body. Header errors are returned,
    not raised, so the caller still gets the headers that did parse."""
    start = 0
    while data.startswith(b"\r\n", start) or data.startswith(b"\n", start):
        start += 2 if data[start] == 13 else 1  # RFC 3261 7.5: ignore CRLFs before a message
    end = data.find(b"\r\n\r\n", start)  # the common case, much faster than the regex
    match = _HEAD_END.search(data, start) if end < 0 else None
    if end >= 0:
        head_bytes, body = data[start:end], data[end + 4 :]
    elif match:
        head_bytes, body = data[start : match.start()], data[match.end() :]
    else:  # no blank line: tolerated on a datagram, everything is header
        head_bytes, body = data[start:].rstrip(b"\r\n"), b""
    lines = head_bytes.decode("utf-8", "surrogateescape").split("\n")
    start_line = lines[0].rstrip("\r")
    pairs: list[tuple[str, str]] = []
    error: SipParseError | None = None
    if not start_line:
        error = SipParseError("empty message")
    for raw in lines[1:]:
        line = raw[:-1] if raw.endswith("\r") else raw
        if "\r" in line:
            error = error or SipParseError("bare CR in header line")
            continue
        if len(line) > limits.max_line:
            error = error or SipParseError(f"header line longer than {limits.max_line}", 513)
            continue
        if line[:1] in (" ", "\t"):  # folded continuation (RFC 3261 7.3.1)
            if not pairs:
                error = error or SipParseError("continuation line before the first header")
                continue
            name, value = pairs[-1]
            more = line.strip(LWS)
            value = f"{value} {more}" if value and more else value or more
            if len(value) > limits.max_line:
                error = error or SipParseError(f"header line longer than {limits.max_line}", 513)
            pairs[-1] = (name, value)
            continue
        colon = line.find(":")
        name = line[:colon].rstrip(LWS) if colon > 0 else ""
        if not is_token(name):
            error = error or SipParseError(f"malformed header line: {snippet(line)}")
            continue
        if len(pairs) >= limits.max_headers:
            error = error or SipParseError(f"more than {limits.max_headers} headers", 513)
            break
        pairs.append((canonical_name(name), line[colon + 1 :].strip(LWS)))
    return start_line, Headers._trusted(tuple(pairs)), body, error


def _check_version(version: str) -> None:
    if _VERSION.fullmatch(version.upper()) is None:
        raise SipParseError(f"malformed SIP version: {snippet(version)}")
    if version.upper() != "SIP/2.0":
        raise SipParseError(f"SIP version not supported: {snippet(version)}", 505)


def _parse_request_line(line: str) -> tuple[str, Uri]:
    # Exactly single spaces (RFC 4475 lwsstart, lwsruri); trailing LWS is forgiven (trws).
    parts = line.rstrip(LWS).split(" ")
    if len(parts) != 3 or not all(parts):
        raise SipParseError(f"malformed Request-Line: {snippet(line)}")
    method, uri_text, version = parts
    if not is_token(method):
        raise SipParseError(f"bad method: {snippet(method)}")
    _check_version(version)
    uri = Uri.parse(uri_text)
    if uri.scheme not in SUPPORTED_SCHEMES:
        raise SipParseError(f"unsupported URI scheme {snippet(uri.scheme)}", 416)
    if uri.headers:
        raise SipParseError("headers are not allowed in a Request-URI")
    return method, uri


def _parse_status_line(line: str) -> tuple[int, str]:
    parts = line.split(" ", 2)
    _check_version(parts[0])
    code = parts[1] if len(parts) > 1 else ""
    if len(code) != 3 or not (code.isascii() and code.isdigit()) or code[0] not in "123456":
        raise SipParseError(f"bad status code: {snippet(code)}")
    return int(code), parts[2] if len(parts) > 2 else ""


def _body(headers: Headers, body: bytes) -> bytes:
    length = headers.typed("Content-Length", _CONTENT_LENGTH)
    if length is None:
        return body
    if len(body) < length:
        raise SipParseError(f"body of {len(body)} bytes is shorter than Content-Length {length}")
    return body[:length]


def _validate(message: SipMessage, limits: Limits) -> None:
    """Parse every header the layers above rely on, so that a bad one is answered here
    with a 400 rather than found later."""
    vias = message.vias
    if not vias:
        raise SipParseError("missing Via header")
    if len(vias) > limits.max_via:
        raise SipParseError(f"more than {limits.max_via} Via values", 513)
    message.from_addr, message.to_addr, message.call_id, message.max_forwards  # noqa: B018
    message.content_type, message.routes, message.record_routes, message.expires  # noqa: B018
    cseq = message.cseq
    if message.contact_wildcard and len(message.headers.get_all("Contact")) > 1:
        raise SipParseError("Contact '*' mixed with other contacts")
    for contact in message.contacts:
        contact.expires  # noqa: B018
    if isinstance(message, SipRequest) and cseq.method != message.method:
        raise SipParseError(f"CSeq method {cseq.method[:20]!r} does not match the request")


def _answerable(headers: Headers) -> bool:
    """Enough to answer: a top Via with a sent-by, and From/To/Call-ID/CSeq to copy."""
    if any(name not in headers for name in ("From", "To", "Call-ID", "CSeq")):
        return False
    vias = headers.get_all("Via")
    return bool(vias) and has_sent_by(vias[0])


REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Moved Temporarily", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    406: "Not Acceptable", 407: "Proxy Authentication Required", 408: "Request Timeout",
    410: "Gone", 413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Server Time-out", 505: "Version Not Supported", 513: "Message Too Large",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}  # fmt: skip


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    """A branch with the RFC 3261 magic cookie, unique per transaction."""
    return "z9hG4bK" + secrets.token_hex(10)


def new_call_id(host: str | None = None) -> str:
    ident = secrets.token_hex(12)
    return f"{ident}@{host}" if host else ident


def _clean_reason(reason: str) -> str:
    return "".join(ch if ch >= " " and ch != "\x7f" else " " for ch in reason)[:120]


def _response(
    request: Headers,
    status: int,
    reason: str | None,
    to_tag: str | None,
    extra: Iterable[tuple[str, object]],
    body: bytes,
    content_type: str | None,
) -> SipResponse:
    items: list[tuple[str, object]] = [("Via", v) for v in request.get_lines("Via")]
    if 100 < status < 300:  # dialog-creating responses echo Record-Route (RFC 3261 12.1.1)
        items += [("Record-Route", v) for v in request.get_lines("Record-Route")]
    to_value = request.get("To", "")
    if status > 100:
        try:
            to = Address.parse(to_value)
        except SipParseError:
            to = None  # unparseable To (we are answering a 400): copy it as it came
        if to is not None and to.tag is None:
            to_value = str(to.with_tag(to_tag or new_tag()))
    items += [("From", request.get("From", "")), ("To", to_value)]
    items += [("Call-ID", request.get("Call-ID", "")), ("CSeq", request.get("CSeq", ""))]
    items += list(extra)
    if content_type is not None:
        items.append(("Content-Type", content_type))
    phrase = _clean_reason(reason if reason is not None else REASON_PHRASES.get(status, ""))
    return SipResponse(status, phrase, Headers((n, str(v)) for n, v in items), body)


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra: Iterable[tuple[str, object]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> SipResponse:
    """A response per RFC 3261 8.2.6: Via (all, in order), From, Call-ID and CSeq copied;
    To copied and, for anything but 100, given `to_tag` (a fresh one if None) unless it
    already has a tag. Content-Length is written on serialization."""
    return _response(request.headers, status, reason, to_tag, extra, body, content_type)


def error_response(error: SipParseError, to_tag: str | None = None) -> SipResponse | None:
    """The response to a request that failed to parse, or None when it must be dropped
    (a response, an ACK, or too broken to answer). Its Via lines are copied as received
    and may not parse: send it back to the request's source address (rport-style) or
    over the same connection rather than routing by Via."""
    if error.headers is None:
        return None
    if error.headers.get("CSeq", "").rstrip(LWS).upper().endswith(" ACK"):
        return None  # RFC 3261 17: an ACK is never answered
    return _response(error.headers, error.status, error.reason, to_tag, (), b"", None)


def build_request(
    method: str,
    uri: Uri,
    *,
    from_addr: Address,
    to_addr: Address,
    call_id: str,
    cseq: int,
    via: Via | None = None,
    max_forwards: int = 70,
    contact: Address | None = None,
    extra: Iterable[tuple[str, object]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> SipRequest:
    """A new request (RFC 3261 8.1.1). `via` may be left to the transaction layer, which
    adds it with request.with_header("Via", via, top=True)."""
    items: list[tuple[str, object]] = [("Via", via)] if via is not None else []
    items += [("Max-Forwards", max_forwards), ("From", from_addr), ("To", to_addr)]
    items += [("Call-ID", call_id), ("CSeq", CSeq(cseq, method))]
    if contact is not None:
        items.append(("Contact", contact))
    items += list(extra)
    if content_type is not None:
        items.append(("Content-Type", content_type))
    return SipRequest(method, uri, Headers((n, str(v)) for n, v in items), body)


def _same_transaction_request(request: SipRequest, method: str, to_value: str) -> SipRequest:
    items: list[tuple[str, str]] = [("Via", str(request.top_via)), ("Max-Forwards", "70")]
    items += [("From", request.headers.get("From", "")), ("To", to_value)]
    items += [("Call-ID", request.call_id), ("CSeq", str(CSeq(request.cseq.seq, method)))]
    items += [("Route", v) for v in request.headers.get_lines("Route")]
    return SipRequest(method, request.uri, Headers(items))


def make_cancel(request: SipRequest) -> SipRequest:
    """CANCEL for a pending request (RFC 3261 9.1): same Request-URI, top Via (branch),
    From, To, Call-ID, CSeq number and Route set."""
    return _same_transaction_request(request, "CANCEL", request.headers.get("To", ""))


def make_ack(request: SipRequest, response: SipResponse) -> SipRequest:
    """The ACK for a non-2xx final response to an INVITE (RFC 3261 17.1.1.3); it carries
    the response's To (with its tag). ACKs for 2xx belong to the dialog layer."""
    return _same_transaction_request(request, "ACK", response.headers.get("To", ""))
