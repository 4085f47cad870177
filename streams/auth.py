"""Shared-token checks, one rule for every door and API that takes a token.

A client offers the token as `?token=`, an `X-Switchboard-Token` header, or
`Authorization: Bearer <token>`; where the peer can only send Basic credentials
(Asterisk's websocket_client.conf), the Basic password counts too. Tokens are compared in
constant time. Without any token configured, callers decide: the doors that must work out
of the box let everyone in; the console and the calls API answer loopback only.
"""

from __future__ import annotations

import binascii
import hmac
import ipaddress
from collections.abc import Iterable

from aiohttp import web

__all__ = ["basic_password", "is_loopback", "offered_tokens", "token_accepted"]


def basic_password(auth: str) -> str:
    """The password of `Authorization: Basic ...`, or ""."""
    if auth[:6].lower() != "basic ":
        return ""
    try:
        decoded = binascii.a2b_base64(auth[6:].strip()).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2]


def offered_tokens(request: web.Request, *, basic: bool = False) -> list[str]:
    """Every non-empty token the request offers."""
    auth = request.headers.get("Authorization", "")
    offered = [request.query.get("token", ""), request.headers.get("X-Switchboard-Token", ""),
               auth[7:] if auth[:7].lower() == "bearer " else ""]
    if basic:
        offered.append(basic_password(auth))
    return [o for o in offered if o]


def token_accepted(request: web.Request, tokens: Iterable[str], *, basic: bool = False) -> bool:
    """Does the request offer one of `tokens` (empty ones ignored)?"""
    wanted = [t.encode() for t in tokens if t]
    return any(hmac.compare_digest(o.encode(), t) for o in offered_tokens(request, basic=basic)
               for t in wanted)


def is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False
