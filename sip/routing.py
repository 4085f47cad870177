"""Where SIP messages come from and go to: Source and Target, RFC 3261 18.2.2 / RFC 3581
response routing, and the received/rport stamp a server puts on a request's top Via.

Pure: no sockets. sip.transport re-exports everything here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, replace

from sip.grammar import split_outside
from sip.headers import Headers, Via
from sip.message import SipMessage, SipRequest
from sip.uri import bare_host

__all__ = [
    "DEFAULT_PORT",
    "Addr",
    "ErrorHandler",
    "MessageHandler",
    "Source",
    "Target",
    "TransportError",
    "is_ip",
    "response_target",
    "stamp_via",
]

Addr = tuple[str, int]
DEFAULT_PORT = 5060
MessageHandler = Callable[[SipMessage, "Source"], None]
ErrorHandler = Callable[[Exception], None]


class TransportError(ConnectionError):
    """A message could not be sent (no route, connection refused or reset)."""


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from, and through which socket."""

    transport: str  # "udp" | "tcp"
    remote: Addr
    local: Addr  # our address as the far end reached it (for Contact and SDP)
    connection: int | None = None  # TCP connection id

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send: `connection` is tried first while that TCP connection is open."""

    transport: str
    host: str
    port: int
    connection: int | None = None

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


def response_target(via: Via, source: Source | None) -> Target:
    """RFC 3261 18.2.2 and RFC 3581 4: where the response to a request goes. Always over
    the transport the request came on, whatever its Via claims: a UDP request with a TCP
    Via must not make us open connections to ports of the sender's choosing, and a TCP
    request with a UDP Via is answered on its connection, where the sender listens."""
    transport = source.transport if source is not None else via.transport.lower()
    port = via.port or DEFAULT_PORT
    host = bare_host(via.host)
    maddr = via.params.get("maddr")
    if via.received:
        host = via.received
        if via.rport is not None:
            port = via.rport
    elif maddr:
        host = maddr
    connection = source.connection if source is not None else None
    return Target(transport, host, port, connection)


def stamp_via(request: SipRequest, remote: Addr) -> SipRequest:
    """Add received (and fill rport) to the top Via, as a server does on receipt."""
    via = request.top_via
    if bare_host(via.host) == remote[0] and not via.has_rport:
        return request
    stamped = str(via.with_received(remote[0], remote[1]))
    items = []
    done = False
    for name, value in request.headers:
        if name == "Via" and not done:
            parts = split_outside(value, ",")
            value = ", ".join([stamped] + [p.strip() for p in parts[1:]])
            done = True
        items.append((name, value))
    return replace(request, headers=Headers(items))


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True

