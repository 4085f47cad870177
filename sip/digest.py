"""Digest authentication for SIP (RFC 2617, RFC 7616, RFC 3261 22): MD5 and SHA-256
(and their -sess variants as a client), qop=auth or the legacy no-qop form.

Client: parse_challenges() the WWW-Authenticate / Proxy-Authenticate lines of a 401/407,
choose_challenge() (SHA-256 preferred), authorize() -> Credentials for the
Authorization / Proxy-Authorization header of the retried request (new CSeq).

Server: DigestServer issues stateless nonces (issue time + HMAC, so they expire and
cannot be forged) and verifies credentials, refusing stale nonces and replayed nc.
Time is always passed in; nothing here reads a clock.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# status -> (challenge header, credentials header)
AUTH_HEADERS = {
    401: ("WWW-Authenticate", "Authorization"),
    407: ("Proxy-Authenticate", "Proxy-Authorization"),
}
_HASHES: dict[str, Callable[[bytes], Any]] = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
}
# Client preference, best first (RFC 7616 3.7: the first challenge the client supports).
_PREFERENCE = ("SHA-256", "SHA-256-SESS", "MD5", "MD5-SESS")
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(rf'[ \t]*({_TOKEN})[ \t]*=[ \t]*({_TOKEN}|"(?:[^"\\]|\\.)*")[ \t]*(?:,|$)')
_SCHEME = re.compile(rf"[ \t]*({_TOKEN})(?:[ \t]+|$)")
_NONCE = struct.Struct(">q8s")  # issue time in ms, 8 random bytes
_MAC_SIZE = 16


class DigestError(ValueError):
    """A malformed or unusable challenge or credentials header."""


def _unquote(value: str) -> str:
    if value.startswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_params(text: str, start: int) -> tuple[dict[str, str], int]:
    """Read name=value pairs from text[start:], stopping at the next auth scheme."""
    params: dict[str, str] = {}
    pos = start
    while pos < len(text):
        match = _PARAM.match(text, pos)
        if match is None:
            if _SCHEME.match(text, pos) and params:
                break  # "..., Digest realm=..." : the next challenge begins
            raise DigestError(f"malformed auth parameter near {text[pos : pos + 30]!r}")
        name = match.group(1).lower()
        if name in params:
            raise DigestError(f"duplicate auth parameter {name!r}")
        params[name] = _unquote(match.group(2))
        pos = match.end()
    return params, pos


def _split_schemes(value: str) -> list[tuple[str, dict[str, str]]]:
    """'Digest a=1, b=2, Basic realm="x"' -> [("digest", {...}), ("basic", {...})]."""
    out = []
    pos = 0
    while pos < len(value.rstrip(" \t,")):
        while value[pos] in " \t,":
            pos += 1
        scheme = _SCHEME.match(value, pos)
        if scheme is None:
            raise DigestError(f"expected an auth scheme near {value[pos : pos + 30]!r}")
        params, pos = _parse_params(value, scheme.end())
        out.append((scheme.group(1).lower(), params))
    return out


@dataclass(frozen=True, slots=True)
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()  # empty: the RFC 2069 legacy form
    opaque: str | None = None
    stale: bool = False

    @classmethod
    def from_params(cls, params: dict[str, str]) -> Challenge:
        if "realm" not in params or "nonce" not in params:
            raise DigestError("Digest challenge without realm or nonce")
        qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
        return cls(
            params["realm"],
            params["nonce"],
            params.get("algorithm", "MD5").upper(),
            qop,
            params.get("opaque"),
            params.get("stale", "").lower() == "true",
        )

    @classmethod
    def parse(cls, value: str) -> Challenge:
        schemes = _split_schemes(value)
        if len(schemes) != 1 or schemes[0][0] != "digest":
            raise DigestError(f"not a single Digest challenge: {value[:40]!r}")
        return cls.from_params(schemes[0][1])

    def __str__(self) -> str:
        parts = [f"realm={_quote(self.realm)}", f"nonce={_quote(self.nonce)}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.stale:
            parts.append("stale=true")
        parts.append(f"algorithm={self.algorithm}")
        if self.qop:
            parts.append(f"qop={_quote(','.join(self.qop))}")
        return "Digest " + ", ".join(parts)

    @property
    def usable(self) -> bool:
        return self.algorithm in _PREFERENCE and (not self.qop or "auth" in self.qop)


def parse_challenges(header_values: Iterable[str]) -> list[Challenge]:
    """Every Digest challenge in the lines of a WWW-/Proxy-Authenticate header, in order.
    Other schemes (Basic, ...) and malformed challenges are skipped: one bad line must
    not hide a good one."""
    out = []
    for value in header_values:
        try:
            schemes = _split_schemes(value)
        except DigestError:
            continue
        for scheme, params in schemes:
            if scheme == "digest":
                try:
                    out.append(Challenge.from_params(params))
                except DigestError:
                    continue
    return out


def choose_challenge(challenges: Sequence[Challenge]) -> Challenge:
    """The challenge to answer: SHA-256 over MD5, qop=auth or none; never auth-int only."""
    usable = [c for c in challenges if c.usable]
    if not usable:
        offered = sorted({f"{c.algorithm}/{','.join(c.qop) or 'no-qop'}" for c in challenges})
        raise DigestError(f"no usable Digest challenge (offered: {offered or 'none'})")
    return min(usable, key=lambda c: _PREFERENCE.index(c.algorithm))


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: int | None = None
    cnonce: str | None = None
    opaque: str | None = None

    @classmethod
    def parse(cls, value: str) -> Credentials:
        schemes = _split_schemes(value)
        if len(schemes) != 1 or schemes[0][0] != "digest":
            raise DigestError(f"not Digest credentials: {value[:40]!r}")
        p = schemes[0][1]
        missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in p]
        if missing:
            raise DigestError(f"Digest credentials without {', '.join(missing)}")
        nc = p.get("nc")
        if nc is not None and re.fullmatch(r"[0-9a-fA-F]{8}", nc) is None:
            raise DigestError(f"bad nc {nc[:20]!r}")
        return cls(
            p["username"],
            p["realm"],
            p["nonce"],
            p["uri"],
            p["response"],
            p.get("algorithm", "MD5").upper(),
            p.get("qop", "").lower() or None,
            int(nc, 16) if nc is not None else None,
            p.get("cnonce"),
            p.get("opaque"),
        )

    def __str__(self) -> str:
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
            f"algorithm={self.algorithm}",
        ]
        if self.qop is not None:
            parts += [
                f"qop={self.qop}",
                f"nc={self.nc or 0:08x}",
                f"cnonce={_quote(self.cnonce or '')}",
            ]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        return "Digest " + ", ".join(parts)


def digest_response(
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: int | None = None,
    cnonce: str | None = None,
) -> str:
    """The request-digest of RFC 2617 3.2.2.1 / RFC 7616 3.4.1, as lower-case hex."""
    base = algorithm.upper().removesuffix("-SESS")
    if base not in _HASHES:
        raise DigestError(f"unsupported Digest algorithm {algorithm[:20]!r}")
    hash_ = _HASHES[base]

    def h(text: str) -> str:
        return hash_(text.encode("utf-8", "surrogateescape")).hexdigest()  # type: ignore[no-any-return]

    ha1 = h(f"{username}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce or ''}")
    ha2 = h(f"{method}:{uri}")
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}")
    return h(f"{ha1}:{nonce}:{nc or 0:08x}:{cnonce or ''}:{qop}:{ha2}")


def new_cnonce() -> str:
    return secrets.token_hex(8)


def authorize(
    challenge: Challenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str,
    nc: int = 1,
) -> Credentials:
    """Credentials answering `challenge` for a request `method` to `uri` (the
    Request-URI as sent). Reuse of a nonce must come with a higher nc."""
    if not challenge.usable:
        raise DigestError(
            f"cannot answer a {challenge.algorithm} challenge with qop {challenge.qop}"
        )
    qop = "auth" if challenge.qop else None
    response = digest_response(
        challenge.algorithm,
        username,
        challenge.realm,
        password,
        method,
        uri,
        challenge.nonce,
        qop,
        nc if qop else None,
        cnonce if qop else None,
    )
    return Credentials(
        username,
        challenge.realm,
        challenge.nonce,
        uri,
        response,
        challenge.algorithm,
        qop,
        nc if qop else None,
        cnonce if qop else None,
        challenge.opaque,
    )


def authorization_for(
    status: int,
    challenge_lines: Iterable[str],
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str,
    nc: int = 1,
) -> tuple[str, Credentials]:
    """For a 401 or 407: the header to add to the retried request and its value, from
    the response's WWW-Authenticate / Proxy-Authenticate lines."""
    if status not in AUTH_HEADERS:
        raise DigestError(f"status {status} is not an authentication challenge")
    challenge = choose_challenge(parse_challenges(challenge_lines))
    credentials = authorize(
        challenge,
        username=username,
        password=password,
        method=method,
        uri=uri,
        cnonce=cnonce,
        nc=nc,
    )
    return AUTH_HEADERS[status][1], credentials


class AuthResult(enum.Enum):
    OK = "ok"
    STALE = "stale"  # right password, expired nonce: challenge again with stale=true
    BAD_NONCE = "bad-nonce"  # a nonce we never issued (forged, malformed, other secret)
    REPLAY = "replay"  # nc not above the last one seen with this nonce
    BAD_RESPONSE = "bad-response"  # wrong password, or unknown user
    MISMATCH = "mismatch"  # realm, algorithm, qop or uri differ from what we asked


class DigestServer:
    """Stateless nonces, plus a bounded memory of the last nc seen per nonce."""

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        nonce_ttl: float = 300.0,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        max_nonces: int = 10_000,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the nonce secret must be at least 16 bytes")
        unknown = [a for a in algorithms if a not in _HASHES]
        if unknown or not algorithms:
            raise ValueError(f"unsupported algorithms {unknown}; use SHA-256 and/or MD5")
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self.algorithms = tuple(algorithms)
        self._secret = secret
        self._max_nonces = max_nonces
        self._seen: OrderedDict[str, tuple[int, int]] = OrderedDict()  # nonce -> (issued ms, nc)
        self._forgotten_before = -(2**63)  # nonces issued up to here may have been evicted

    def new_nonce(self, now: float) -> str:
        payload = _NONCE.pack(int(now * 1000), secrets.token_bytes(8))
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode().rstrip("=")

    def challenges(self, now: float, *, stale: bool = False) -> list[Challenge]:
        """One challenge per algorithm, SHA-256 first (RFC 8760), sharing one nonce."""
        nonce = self.new_nonce(now)
        return [Challenge(self.realm, nonce, a, ("auth",), None, stale) for a in self.algorithms]

    def verify(
        self,
        credentials: Credentials,
        *,
        method: str,
        password: str | None,
        now: float,
        uri: str | None = None,
    ) -> AuthResult:
        """Check credentials for a request `method` (and Request-URI `uri` if given).
        `password` is None for an unknown user (answered like a wrong password)."""
        c = credentials
        if c.realm != self.realm or c.algorithm not in self.algorithms:
            return AuthResult.MISMATCH
        if c.qop not in (None, "auth") or (c.qop and (c.nc is None or not c.cnonce)):
            return AuthResult.MISMATCH
        if uri is not None and c.uri != uri:
            return AuthResult.MISMATCH
        issued = self._issued_ms(c.nonce)
        if issued is None or issued > now * 1000 + 1000:
            return AuthResult.BAD_NONCE
        if password is None:
            return AuthResult.BAD_RESPONSE
        expected = digest_response(
            c.algorithm,
            c.username,
            self.realm,
            password,
            method,
            c.uri,
            c.nonce,
            c.qop,
            c.nc,
            c.cnonce,
        )
        given = c.response.lower().encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(expected.encode(), given):
            return AuthResult.BAD_RESPONSE
        self._forget_expired(now)
        if now * 1000 - issued > self.nonce_ttl * 1000:
            return AuthResult.STALE
        if c.qop is None:
            # RFC 2069 answers carry no nc, so a captured one could be replayed: such a
            # nonce answers one request; the next gets a fresh nonce (stale=true).
            first = self._check_nc(c.nonce, issued, 1) is AuthResult.OK
            return AuthResult.OK if first else AuthResult.STALE
        return self._check_nc(c.nonce, issued, c.nc or 0)

    def _mac(self, payload: bytes) -> bytes:
        message = self.realm.encode("utf-8", "surrogateescape") + b"\x00" + payload
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:_MAC_SIZE]

    def _issued_ms(self, nonce: str) -> int | None:
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _NONCE.size + _MAC_SIZE:
            return None
        payload, mac = raw[: _NONCE.size], raw[_NONCE.size :]
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        return int(_NONCE.unpack(payload)[0])

    def _check_nc(self, nonce: str, issued: int, nc: int) -> AuthResult:
        seen = self._seen.get(nonce)
        if seen is None and issued <= self._forgotten_before:
            return AuthResult.STALE  # we may have forgotten its nc: make the client re-auth
        if seen is not None and nc <= seen[1]:
            return AuthResult.REPLAY
        self._seen[nonce] = (issued, nc)
        while len(self._seen) > self._max_nonces:
            _, (evicted, _) = self._seen.popitem(last=False)
            self._forgotten_before = max(self._forgotten_before, evicted)
        return AuthResult.OK

    def _forget_expired(self, now: float) -> None:
        horizon = now * 1000 - self.nonce_ttl * 1000
        while self._seen:
            nonce, (issued, _) = next(iter(self._seen.items()))
            if issued >= horizon:
                break
            del self._seen[nonce]
