"""RFC 3261 lexical rules shared by the SIP parsers, and the one SIP error type.

Everything here works on already-decoded header text (str). Parsers raise only
SipParseError; callers never see IndexError/UnicodeError from malformed input.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sip.headers import Headers

LWS = " \t"
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# gen-value = token / host / quoted-string; host adds ':' '[' ']' for IPv6 references.
_GEN_VALUE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+")
_DIGITS = re.compile(r"[0-9]+")


class SipParseError(ValueError):
    """A SIP message or header that cannot be accepted.

    `status` is the response the server should send (400 malformed, 413 body too large,
    416 unsupported URI scheme, 505 bad version, 513 message too large). `headers` is set
    when the message is a request whose Via/From/To/Call-ID/CSeq parsed, i.e. when a
    response can be built (see sip.message.error_response); otherwise drop the message.
    """

    def __init__(self, reason: str, status: int = 400, headers: Headers | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers

    @property
    def respondable(self) -> bool:
        return self.headers is not None


def is_token(text: str) -> bool:
    return _TOKEN.fullmatch(text) is not None


def parse_uint(text: str, what: str, maximum: int) -> int:
    """ASCII digits only (int() would also take '٣', '1_0' and ' 7')."""
    if _DIGITS.fullmatch(text) is None:
        raise SipParseError(f"{what} is not a number: {snippet(text)}")
    # Leading zeros are legal (RFC 4475 wsinv: "Max-Forwards: 0068"); bound before int().
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(maximum)) or int(digits) > maximum:
        raise SipParseError(f"{what} out of range: {snippet(text)}")
    return int(digits)


def snippet(text: str, limit: int = 40) -> str:
    """A short printable excerpt of untrusted text, safe to put in a reason phrase."""
    clean = "".join(ch if " " <= ch < "\x7f" else "?" for ch in text[:limit])
    return repr(clean + ("..." if len(text) > limit else ""))


def parse_quoted(text: str, start: int) -> tuple[str, int]:
    """Read the quoted-string whose opening '"' is at text[start].

    Returns the unescaped content and the index just past the closing quote.
    """
    out: list[str] = []
    i = start + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch == "\\":
            if i + 1 >= n:
                break
            out.append(text[i + 1])
            i += 2
            continue
        out.append(ch)
        i += 1
    raise SipParseError(f"unterminated quoted string: {snippet(text[start:])}")


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_outside(text: str, sep: str) -> list[str]:
    """Split on `sep` where it is not inside a quoted string or <...>.

    An unterminated quote raises; the pieces are not stripped.
    """
    if '"' not in text and "<" not in text:
        return text.split(sep)
    parts: list[str] = []
    begin = 0
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            _, i = parse_quoted(text, i)
            continue
        if ch == "<":
            close = text.find(">", i)
            if close < 0:
                raise SipParseError(f"unclosed '<': {snippet(text[i:])}")
            i = close + 1
            continue
        if ch == sep:
            parts.append(text[begin:i])
            begin = i + 1
        i += 1
    parts.append(text[begin:])
    return parts


@dataclass(frozen=True, slots=True)
class Params:
    """Ordered ;name=value parameters. Names match case-insensitively.

    A value of None is a flag parameter (";lr"); get() returns "" for it and None when
    the parameter is absent, so use `in` to test presence.
    """

    items: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Params:
        """Header parameters: ';'-separated, LWS allowed around ';' and '=', values may be
        quoted strings (stored unquoted)."""
        text = text.strip(LWS)
        if not text:
            return EMPTY_PARAMS
        if text[0] != ";":
            raise SipParseError(f"expected ';' before parameters: {snippet(text)}")
        items: list[tuple[str, str | None]] = []
        for piece in split_outside(text[1:], ";"):
            name, eq, value = piece.partition("=")
            name = name.strip(LWS)
            if not is_token(name):
                raise SipParseError(f"bad parameter name: {snippet(piece)}")
            if not eq:
                items.append((name, None))
                continue
            value = value.strip(LWS)
            if value.startswith('"'):
                unquoted, end = parse_quoted(value, 0)
                if end != len(value):
                    raise SipParseError(f"junk after quoted parameter: {snippet(piece)}")
                items.append((name, unquoted))
            elif _GEN_VALUE.fullmatch(value):
                items.append((name, value))
            else:
                raise SipParseError(f"bad value for parameter {name!r}: {snippet(value)}")
        return cls(tuple(items))

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower()
        for item_name, value in self.items:
            if item_name.lower() == key:
                return "" if value is None else value
        return default

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower()
        return any(item_name.lower() == key for item_name, _ in self.items)

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def with_param(self, name: str, value: str | None = None) -> Params:
        """Set (replacing in place) or append a parameter."""
        key = name.lower()
        items = list(self.items)
        for i, (item_name, _) in enumerate(items):
            if item_name.lower() == key:
                items[i] = (item_name, value)
                return Params(tuple(items))
        return Params((*self.items, (name, value)))

    def without(self, name: str) -> Params:
        key = name.lower()
        return Params(tuple(item for item in self.items if item[0].lower() != key))

    def __str__(self) -> str:
        out = []
        for name, value in self.items:
            if value is None:
                out.append(f";{name}")
            elif _GEN_VALUE.fullmatch(value):
                out.append(f";{name}={value}")
            else:
                out.append(f";{name}={quote(value)}")
        return "".join(out)


EMPTY_PARAMS = Params()
