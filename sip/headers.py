"""SIP header fields: the ordered, case-insensitive header list and the typed values
(Via, name-addr for From/To/Contact/Route, CSeq, Content-Type).

Each typed value parses ONE header value (one comma-separated element) with `parse` and
prints itself back with `str()`. Headers keeps the raw text and caches typed views.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from sip.grammar import (
    EMPTY_PARAMS,
    LWS,
    Params,
    SipParseError,
    is_token,
    parse_quoted,
    parse_uint,
    quote,
    snippet,
    split_outside,
)
from sip.uri import Uri, parse_hostport

T = TypeVar("T")

COMPACT_FORMS = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact",
    "k": "Supported", "l": "Content-Length", "m": "Contact", "n": "Identity-Info",
    "o": "Event", "r": "Refer-To", "s": "Subject", "t": "To", "u": "Allow-Events",
    "v": "Via", "x": "Session-Expires", "y": "Identity",
}  # fmt: skip

# Headers whose values are comma-separated lists (RFC 3261 7.3.1). Anything else, and
# above all WWW-Authenticate/Authorization/Date, keeps its commas.
LIST_HEADERS = frozenset({
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Call-Info", "Contact", "Content-Encoding", "Content-Language",
    "Error-Info", "History-Info", "In-Reply-To", "P-Asserted-Identity",
    "P-Preferred-Identity", "Path", "Proxy-Require", "Reason", "Record-Route",
    "Reject-Contact", "Request-Disposition", "Require", "Route", "Security-Client",
    "Security-Server", "Security-Verify", "Service-Route", "Supported", "Unsupported",
    "Via", "Warning",
})  # fmt: skip

_LIST_KEYS = frozenset(name.lower() for name in LIST_HEADERS)

_KNOWN = (
    "Accept-Resource-Priority", "Alert-Info", "Authentication-Info", "Authorization",
    "Call-ID", "CSeq", "Date", "Expires", "Max-Forwards", "Min-Expires", "Min-SE",
    "MIME-Version", "Organization", "P-Charging-Vector", "Priority", "Privacy",
    "Proxy-Authenticate", "Proxy-Authorization", "RAck", "Refer-Sub", "Replaces",
    "Reply-To", "Retry-After", "RSeq", "Server", "SIP-ETag", "SIP-If-Match", "Timestamp",
    "User-Agent", "WWW-Authenticate",
)  # fmt: skip
CANONICAL_NAMES = {name.lower(): name for name in (*_KNOWN, *LIST_HEADERS)}
CANONICAL_NAMES.update((name.lower(), name) for name in COMPACT_FORMS.values())
CANONICAL_NAMES.update(COMPACT_FORMS)
CANONICAL_NAMES.update((short.upper(), name) for short, name in COMPACT_FORMS.items())


def canonical_name(name: str) -> str:
    """'i', 'I', 'call-id' -> 'Call-ID'; unknown names keep their spelling."""
    return CANONICAL_NAMES.get(name) or CANONICAL_NAMES.get(name.lower(), name)


@functools.lru_cache(maxsize=1024)
def _key(name: str) -> str:
    return canonical_name(name).lower()


class Headers:
    """An immutable ordered list of (name, value) header lines.

    Lookup is case-insensitive and knows compact forms. Values are the raw text of each
    line (folding already replaced by a space). `with_*`/`without` return new objects.
    """

    __slots__ = ("_cache", "_index", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        pairs = []
        for name, value in items:
            if not is_token(name):
                raise ValueError(f"bad header name {name!r}")
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} value contains CR or LF")
            pairs.append((canonical_name(name), value))
        self._set(tuple(pairs))

    @classmethod
    def _trusted(cls, items: tuple[tuple[str, str], ...]) -> Headers:
        """For the parser: names already canonical, values already clean."""
        self = cls.__new__(cls)
        self._set(items)
        return self

    def _set(self, items: tuple[tuple[str, str], ...]) -> None:
        self._items = items
        self._cache: dict[str, Any] = {}
        index: dict[str, list[int]] = {}
        for i, (name, _) in enumerate(items):
            index.setdefault(name.lower(), []).append(i)
        self._index = index

    def _positions(self, name: str) -> list[int]:
        return self._index.get(_key(name), [])

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first line's value."""
        positions = self._positions(name)
        return self._items[positions[0]][1] if positions else default

    def get_lines(self, name: str) -> list[str]:
        """Every line's value, never split on commas."""
        return [self._items[i][1] for i in self._positions(name)]

    def get_all(self, name: str) -> list[str]:
        """Every value: one per line, and list headers (Via, Contact, ...) split on commas
        outside quotes and <>. Values are stripped; empty elements are kept so that typed
        parsers can reject them."""
        lines = self.get_lines(name)
        if _key(name) not in _LIST_KEYS:
            return lines
        out: list[str] = []
        for line in lines:
            if "," in line:
                out.extend(piece.strip(LWS) for piece in split_outside(line, ","))
            else:
                out.append(line)
        return out

    def get_tokens(self, name: str) -> tuple[str, ...]:
        """A token list such as Allow or Supported, empty elements dropped."""
        return tuple(v for v in self.get_all(name) if v)

    def typed(self, name: str, parse: Callable[[list[str]], T]) -> T:
        """parse(get_all(name)), computed once per Headers object."""
        key = _key(name)
        try:
            return self._cache[key]  # type: ignore[no-any-return]
        except KeyError:
            value = self._cache[key] = parse(self.get_all(name))
            return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self._positions(name))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"

    def with_header(self, name: str, value: object, *, top: bool = False) -> Headers:
        """Add a line after the last one (or before every other line when top=True, as
        a new Via goes)."""
        new = Headers([(name, str(value))])._items
        return Headers._trusted(new + self._items if top else self._items + new)

    def with_replaced(self, name: str, value: object) -> Headers:
        """One line for `name`, where its first line was (or appended)."""
        (new,) = Headers([(name, str(value))])._items
        positions = self._positions(name)
        if not positions:
            return Headers._trusted((*self._items, new))
        first = positions[0]
        items = tuple(
            new if i == first else item
            for i, item in enumerate(self._items)
            if i == first or i not in positions
        )
        return Headers._trusted(items)

    def without(self, name: str) -> Headers:
        drop = set(self._positions(name))
        return Headers._trusted(tuple(item for i, item in enumerate(self._items) if i not in drop))


# sent-protocol LWS sent-by, with LWS allowed around '/' and ':' (RFC 4475 wsinv)
_VIA_SENT = re.compile(
    r"([^\s/]+)[ \t]*/[ \t]*([^\s/]+)[ \t]*/[ \t]*([^\s/;]+)[ \t]+"
    r"([^ \t;]+(?:[ \t]*:[ \t]*[0-9]+)?)[ \t]*"
)


def has_sent_by(value: str) -> bool:
    """Whether a Via value at least names a protocol and a sent-by, even if the rest of
    it is broken: enough to send an error response back."""
    return _VIA_SENT.match(value) is not None


@dataclass(frozen=True, slots=True)
class Via:
    transport: str  # upper case: UDP, TCP, TLS, WS, SCTP, ...
    host: str
    port: int | None = None
    params: Params = EMPTY_PARAMS

    @classmethod
    def parse(cls, value: str) -> Via:
        match = _VIA_SENT.match(value)
        if match is None:
            raise SipParseError(f"malformed Via: {snippet(value)}")
        name, version, transport, sent_by = match.groups()
        if name.upper() != "SIP" or version != "2.0":
            raise SipParseError(f"Via protocol is not SIP/2.0: {snippet(value)}")
        if not is_token(transport):
            raise SipParseError(f"bad Via transport: {snippet(transport)}")
        host, port = parse_hostport(sent_by.replace(" ", "").replace("\t", ""), "Via host")
        params = Params.parse(value[match.end() :])
        return cls(transport.upper(), host, port, params)

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sent_by}{self.params}"

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def has_rport(self) -> bool:
        return "rport" in self.params

    @property
    def rport(self) -> int | None:
        """The port an RFC 3581 server filled in; None when absent or empty."""
        value = self.params.get("rport")
        if not value or len(value) > 5 or not (value.isascii() and value.isdigit()):
            return None
        return int(value)

    def with_received(self, host: str, port: int | None = None) -> Via:
        """What a server does to the top Via on receipt (RFC 3261 18.2.1, RFC 3581 4):
        add received=<source address>, and fill rport=<source port> if asked for."""
        params = self.params.with_param("received", host)
        if port is not None and self.has_rport:
            params = params.with_param("rport", str(port))
        return replace(self, params=params)


# RFC 3261 display names are tokens or one quoted string; raw UTF-8 is tolerated.
_DISPLAY_WORD = re.compile("[A-Za-z0-9\\-.!%*_+`'~\x80-\U0010ffff]+")


def _split_display(text: str) -> tuple[str | None, str]:
    """Split off the display name of a name-addr; returns (display, rest-from-'<')."""
    if text.startswith('"'):
        display, end = parse_quoted(text, 0)
        rest = text[end:].lstrip(LWS)
        if not rest.startswith("<"):
            raise SipParseError(f"quoted display name not followed by <URI>: {snippet(text)}")
        return display, rest
    angle = text.find("<")
    words = [word for word in re.split(r"[ \t]+", text[:angle]) if word]
    for word in words:
        if _DISPLAY_WORD.fullmatch(word) is None:
            raise SipParseError(f"display name must be tokens or quoted: {snippet(text)}")
    return (" ".join(words) or None), text[angle:]


@dataclass(frozen=True, slots=True)
class Address:
    """name-addr / addr-spec with header parameters: From, To, Contact, Route, Refer-To."""

    uri: Uri
    display_name: str | None = None
    params: Params = EMPTY_PARAMS

    @classmethod
    def parse(cls, value: str) -> Address:
        text = value.strip(LWS)
        semi = text.find(";")
        angle = text.find("<")
        if text.startswith('"') or (angle >= 0 and (semi < 0 or angle < semi)):
            display, rest = _split_display(text)
            close = rest.find(">")
            if close < 0:
                raise SipParseError(f"missing '>' after URI: {snippet(text)}")
            uri = Uri.parse(rest[1:close])
            params = Params.parse(rest[close + 1 :])
            return cls(uri, display, params)
        # addr-spec: a URI holding ',', '?' or ';' must be in <> (RFC 3261 20, 4475 regbadct)
        uri_text = text if semi < 0 else text[:semi].rstrip(LWS)
        if "?" in uri_text or "," in uri_text:
            raise SipParseError(f"URI with '?' or ',' must be enclosed in <>: {snippet(text)}")
        if not uri_text:
            raise SipParseError(f"empty address: {snippet(value)}")
        return cls(Uri.parse(uri_text), None, Params.parse(text[semi:] if semi >= 0 else ""))

    def __str__(self) -> str:
        name = f"{quote(self.display_name)} " if self.display_name else ""
        return f"{name}<{self.uri}>{self.params}"

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_tag(self, tag: str) -> Address:
        return replace(self, params=self.params.with_param("tag", tag))

    @property
    def expires(self) -> int | None:
        """Contact ;expires=, clamped to 2**32-1 as RFC 3261 20.19 allows."""
        value = self.params.get("expires")
        if value is None:
            return None
        if len(value) > 10 and value.isascii() and value.isdigit():
            return 2**32 - 1
        return min(parse_uint(value, "Contact expires", 10**10), 2**32 - 1)


@dataclass(frozen=True, slots=True)
class CSeq:
    seq: int
    method: str

    @classmethod
    def parse(cls, value: str) -> CSeq:
        parts = value.split()
        if len(parts) != 2:
            raise SipParseError(f"CSeq must be 'number METHOD': {snippet(value)}")
        # RFC 3261 8.1.1.5: the sequence number is less than 2**31.
        seq = parse_uint(parts[0], "CSeq number", 2**31 - 1)
        if not is_token(parts[1]):
            raise SipParseError(f"bad CSeq method: {snippet(parts[1])}")
        return cls(seq, parts[1])

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


@dataclass(frozen=True, slots=True)
class MediaType:
    type: str
    subtype: str
    params: Params = EMPTY_PARAMS

    @classmethod
    def parse(cls, value: str) -> MediaType:
        main, _, param_text = value.partition(";")
        kind, slash, sub = main.partition("/")
        kind, sub = kind.strip(LWS), sub.strip(LWS)
        if not slash or not is_token(kind) or not is_token(sub):
            raise SipParseError(f"bad Content-Type: {snippet(value)}")
        return cls(kind.lower(), sub.lower(), Params.parse(";" + param_text if param_text else ""))

    @property
    def mime(self) -> str:
        return f"{self.type}/{self.subtype}"

    def __str__(self) -> str:
        return f"{self.mime}{self.params}"
