"""Dialog state (RFC 3261 12) and the in-dialog requests and responses built from it.

A dialog is identified by Call-ID, local tag and remote tag. It remembers the route set
(from Record-Route, in the order that makes our requests retrace the path), the remote
target (the peer's Contact, refreshed by re-INVITE), both CSeq counters, and the flow the
dialog was created on, so a BYE over TCP goes back on the caller's own connection.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass, replace

from sip.grammar import EMPTY_PARAMS, SipParseError
from sip.headers import Address
from sip.message import SipRequest, SipResponse, build_request, make_response
from sip.transport import Source, Target
from sip.uri import Uri, bare_host

__all__ = ["Dialog", "DialogError", "DialogState"]

DEFAULT_PORTS = {"sip": 5060, "sips": 5061}
# Requests that may change the remote target (RFC 3261 12.2.2 and RFC 3515/6665).
TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})


class DialogError(ValueError):
    """A request that does not fit the dialog (CSeq out of order, no Contact, ...).

    `status` is the response to send: 500 for a CSeq lower than the last one
    (RFC 3261 12.2.2), 400 for a missing or unusable Contact.
    """

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(f"{status} {reason}")
        self.reason = reason
        self.status = status


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


def _no_tag(address: Address) -> Address:
    return replace(address, params=address.params.without("tag"))


@dataclass(slots=True)
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: Address  # our identity (From of our requests), without tag
    remote_uri: Address  # theirs (To of our requests), without tag
    remote_target: Uri
    route_set: tuple[Address, ...]
    local_contact: Address
    local_cseq: int
    remote_cseq: int | None
    transport: str  # "udp" | "tcp" | "tls": the flow the dialog was created on
    connection: int | None = None  # its TCP connection
    flow_remote: tuple[str, int] | None = None  # where that flow's packets came from
    state: DialogState = DialogState.EARLY

    @classmethod
    def from_request(
        cls,
        request: SipRequest,
        source: Source,
        *,
        local_tag: str,
        local_contact: Address,
        rng: random.Random | None = None,
    ) -> Dialog:
        """The UAS side of a dialog created by `request` (an INVITE), RFC 3261 12.1.1."""
        contacts = request.contacts
        if not contacts:
            raise DialogError("INVITE without a Contact", 400)
        target = contacts[0].uri
        if not target.is_sip:
            raise DialogError(f"Contact scheme {target.scheme!r} is not sip/sips", 416)
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_addr.tag or "",
            local_uri=_no_tag(request.to_addr),
            remote_uri=_no_tag(request.from_addr),
            remote_target=target,
            route_set=request.record_routes,
            local_contact=local_contact,
            # Our first CSeq: anything below 2**31; random keeps restarts apart.
            local_cseq=(rng or random.SystemRandom()).randrange(1, 2**16),
            remote_cseq=request.cseq.seq,
            transport=source.transport,
            connection=source.connection,
            flow_remote=source.remote,
        )

    @property
    def id(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    # -- requests that come in -------------------------------------------------------------

    def check_request(self, request: SipRequest) -> None:
        """RFC 3261 12.2.2: CSeq must grow (500 otherwise); ACK and CANCEL carry the
        INVITE's number and are not checked. A target refresh updates the remote target."""
        method = request.method
        if method in ("ACK", "CANCEL"):
            return
        seq = request.cseq.seq
        if self.remote_cseq is not None and seq <= self.remote_cseq:
            if seq < self.remote_cseq:
                raise DialogError(f"CSeq {seq} is lower than {self.remote_cseq}", 500)
            raise DialogError(f"CSeq {seq} was already used", 500)
        self.remote_cseq = seq
        if method in TARGET_REFRESH and request.contacts:
            uri = request.contacts[0].uri
            if uri.is_sip:
                self.remote_target = uri

    def response(self, request: SipRequest, status: int, reason: str | None = None, *,
                 body: bytes = b"", content_type: str | None = None,
                 extra: Iterable[tuple[str, object]] = ()) -> SipResponse:
        """A response carrying our tag, plus our Contact on a 2xx to a target refresh."""
        items = list(extra)
        if 200 <= status < 300 and request.method in TARGET_REFRESH:
            items.append(("Contact", self.local_contact))
        return make_response(request, status, reason, to_tag=self.local_tag, extra=items,
                             body=body, content_type=content_type)

    # -- requests we send ------------------------------------------------------------------

    def create_request(
        self,
        method: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        extra: Iterable[tuple[str, object]] = (),
        cseq: int | None = None,
    ) -> SipRequest:
        """An in-dialog request (RFC 3261 12.2.1.1): the next local CSeq (or `cseq`, for
        an ACK), Request-URI and Route per loose or strict routing. Via is added by the
        transaction layer."""
        if self.state is DialogState.TERMINATED and method not in ("ACK", "BYE"):
            raise DialogError(f"dialog {self.call_id} is over; cannot send {method}", 481)
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        uri, routes = self._request_uri_and_routes()
        items: list[tuple[str, object]] = [("Route", r) for r in routes]
        items += list(extra)
        contact = self.local_contact if method in TARGET_REFRESH else None
        return build_request(
            method,
            uri,
            from_addr=self.local_uri.with_tag(self.local_tag),
            to_addr=self.remote_uri.with_tag(self.remote_tag) if self.remote_tag
            else self.remote_uri,
            call_id=self.call_id,
            cseq=cseq,
            contact=contact,
            extra=items,
            body=body,
            content_type=content_type,
        )

    def create_ack(self, invite_cseq: int, body: bytes = b"",
                   content_type: str | None = None) -> SipRequest:
        """The ACK for a 2xx to our (re-)INVITE: same CSeq number, method ACK."""
        return self.create_request("ACK", cseq=invite_cseq, body=body, content_type=content_type)

    def _request_uri_and_routes(self) -> tuple[Uri, tuple[Address, ...]]:
        routes = self.route_set
        if not routes or routes[0].uri.lr:
            return self.remote_target, routes
        # Strict routing (RFC 2543 proxy): the first route becomes the Request-URI and the
        # remote target goes last in Route.
        first = routes[0].uri
        return (replace(first, params=EMPTY_PARAMS, headers=()),
                routes[1:] + (Address(self.remote_target),))

    def next_hop(self) -> Target:
        """Where an in-dialog request goes: the first route, else the remote target.
        Over TCP the dialog's own connection is preferred while it is open."""
        uri = self.route_set[0].uri if self.route_set else self.remote_target
        if not uri.is_sip:
            raise SipParseError(f"cannot route to a {uri.scheme} URI")
        secure = "tls" if self.transport == "tls" else "tcp"  # we only answer TLS, on its flow
        transport = uri.transport or (secure if uri.scheme == "sips" else self.transport)
        host = bare_host(uri.maddr or uri.host)
        port = uri.port or DEFAULT_PORTS.get(uri.scheme, 5060)
        connection = self.connection if transport == self.transport else None
        return Target(transport, host, port, connection)

    def terminate(self) -> None:
        self.state = DialogState.TERMINATED

    def __repr__(self) -> str:
        return (f"<Dialog {self.call_id} local={self.local_tag} remote={self.remote_tag} "
                f"{self.state.value} cseq={self.local_cseq}/{self.remote_cseq}>")
