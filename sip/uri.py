"""SIP, SIPS and tel URIs (RFC 3261 19.1, RFC 3966), plus opaque absolute URIs.

User, password, parameters and headers are stored %-unescaped and re-escaped on output,
so `Uri.parse("sip:%75ser@h").user == "user"`. Unknown schemes (RFC 4475 unksm2:
"isbn:2983792873" in To) keep everything after the colon in `opaque`; whether that is
acceptable is the caller's choice (a Request-URI answers 416).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from urllib.parse import quote, unquote

from sip.grammar import EMPTY_PARAMS, Params, SipParseError, parse_uint, snippet

SIP_SCHEMES = frozenset({"sip", "sips"})
SUPPORTED_SCHEMES = frozenset({"sip", "sips", "tel"})

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_HOSTNAME = re.compile(r"[A-Za-z0-9_\-.]+")
_NO_SPACE = re.compile(r"[^\x00-\x20\x7f]+")  # raw controls and spaces never appear in a URI
# Characters that may stay unescaped in each component (RFC 3261 25.1); quote() always
# keeps letters, digits and "_.-~".
_MARK = "!*'()"
_USER_SAFE = _MARK + "&=+$,;?/"
_PASSWORD_SAFE = _MARK + "&=+$,"
_PARAM_SAFE = _MARK + "[]/:&+$"
_HEADER_SAFE = _MARK + "[]/?:+$"


def _unescape(text: str) -> str:
    # A '%' not followed by two hex digits is kept literally (RFC 4475 esc02 shows it
    # in places where it is not an escape; leniency here costs nothing).
    return unquote(text, errors="surrogateescape") if "%" in text else text


def _escape(text: str, safe: str) -> str:
    return quote(text, safe=safe, errors="surrogateescape")


def parse_hostport(text: str, what: str = "host") -> tuple[str, int | None]:
    """host [":" port] where host is a name, IPv4 address or [IPv6] reference.

    The IPv6 reference keeps its brackets, so f"{host}:{port}" is always right.
    """
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise SipParseError(f"unclosed IPv6 reference in {what}: {snippet(text)}")
        host, rest = text[: close + 1], text[close + 1 :]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise SipParseError(f"bad IPv6 address in {what}: {snippet(host)}") from None
        if rest and not rest.startswith(":"):
            raise SipParseError(f"junk after IPv6 reference in {what}: {snippet(text)}")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = text.partition(":")
        port_text = port_text_ if colon else None
        if _HOSTNAME.fullmatch(host) is None:
            raise SipParseError(f"bad {what}: {snippet(text)}")
    port = None if port_text is None else parse_uint(port_text, f"{what} port", 65535)
    return host, port


def bare_host(host: str) -> str:
    """The address without IPv6 brackets, as sockets want it."""
    return host[1:-1] if host.startswith("[") else host


@dataclass(frozen=True, slots=True)
class Uri:
    scheme: str  # lower case
    host: str = ""
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = EMPTY_PARAMS
    headers: tuple[tuple[str, str], ...] = ()
    opaque: str | None = None  # everything after "scheme:" for schemes we do not know

    @classmethod
    def parse(cls, text: str) -> Uri:
        colon = text.find(":")
        if colon <= 0 or _SCHEME.fullmatch(text[:colon]) is None:
            raise SipParseError(f"URI has no scheme: {snippet(text)}")
        if _NO_SPACE.fullmatch(text) is None:
            raise SipParseError(f"whitespace or control character in URI: {snippet(text)}")
        scheme = text[:colon].lower()
        rest = text[colon + 1 :]
        if not rest:
            raise SipParseError(f"empty URI: {snippet(text)}")
        if scheme in SIP_SCHEMES:
            return cls._parse_sip(scheme, rest)
        if scheme == "tel":
            number, _, param_text = rest.partition(";")
            if not number:
                raise SipParseError(f"tel URI without a number: {snippet(text)}")
            return cls(scheme, user=_unescape(number), params=_uri_params(param_text))
        if any(ch in rest for ch in '<>"'):  # printed back raw: a '>' would end <...> early
            raise SipParseError(f"'<', '>' or '\"' in URI: {snippet(text)}")
        return cls(scheme, opaque=rest)

    @classmethod
    def _parse_sip(cls, scheme: str, rest: str) -> Uri:
        user = password = None
        at = rest.find("@")
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user_text, colon, password_text = userinfo.partition(":")
            if not user_text:
                raise SipParseError(f"empty user part in URI: {snippet(userinfo)}")
            user = _unescape(user_text)
            password = _unescape(password_text) if colon else None
        rest, qmark, header_text = rest.partition("?")
        hostport, _, param_text = rest.partition(";")
        host, port = parse_hostport(hostport, "URI host")
        headers: tuple[tuple[str, str], ...] = ()
        if qmark:
            pairs = []
            for piece in header_text.split("&"):
                name, eq, value = piece.partition("=")
                if not name or not eq:
                    raise SipParseError(f"bad URI header: {snippet(piece)}")
                pairs.append((_unescape(name), _unescape(value)))
            headers = tuple(pairs)
        return cls(scheme, host, user, password, port, _uri_params(param_text), headers)

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        parts = [self.scheme, ":"]
        if self.scheme == "tel":
            parts.append(_escape(self.user or "", _USER_SAFE + "#"))
        else:
            if self.user is not None:
                parts.append(_escape(self.user, _USER_SAFE))
                if self.password is not None:
                    parts += (":", _escape(self.password, _PASSWORD_SAFE))
                parts.append("@")
            parts.append(self.host)
            if self.port is not None:
                parts += (":", str(self.port))
        for name, value in self.params.items:
            parts += (";", _escape(name, _PARAM_SAFE))
            if value is not None:
                parts += ("=", _escape(value, _PARAM_SAFE))
        if self.headers:
            parts.append("?")
            parts.append(
                "&".join(
                    f"{_escape(n, _HEADER_SAFE)}={_escape(v, _HEADER_SAFE)}"
                    for n, v in self.headers
                )
            )
        return "".join(parts)

    @property
    def is_sip(self) -> bool:
        return self.scheme in SIP_SCHEMES

    @property
    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def lr(self) -> bool:
        return "lr" in self.params

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    def with_params(self, **params: str | None) -> Uri:
        """Set URI parameters; a value of None makes a flag (";lr")."""
        new = self.params
        for name, value in params.items():
            new = new.with_param(name, value)
        return replace(self, params=new)


def _uri_params(text: str) -> Params:
    if not text:
        return EMPTY_PARAMS
    items: list[tuple[str, str | None]] = []
    for piece in text.split(";"):
        name, eq, value = piece.partition("=")
        if not name:
            raise SipParseError(f"empty URI parameter in {snippet(text)}")
        items.append((_unescape(name), _unescape(value) if eq else None))
    return Params(tuple(items))
