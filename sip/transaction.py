"""SIP transactions (RFC 3261 17, with the RFC 6026 fixes for INVITE 2xx).

Server side: a new request opens a transaction and goes up to the UA core; a
retransmitted request gets the last response again and goes no further. INVITE sends
100 Trying at once; after a 2xx the transaction only absorbs retransmitted INVITEs
(Accepted, Timer L) because the 2xx itself is retransmitted by the UA core until the ACK
(AnswerRetransmitter, RFC 3261 13.3.1.4); after a non-2xx final, Timer G retransmits it
(UDP) until the ACK, and Timer H gives up. Non-INVITE: the final response is cached for
retransmitted requests until Timer J.

Client side (sip.transaction_client, re-exported here): requests we send retransmit over
UDP only, time out after 64*T1, and end with a response, TransactionTimeout or
TransactionFailed; never a hang.

Matching (17.1.3, 17.2.3): server by branch + sent-by + method (ACK matches its INVITE,
CANCEL its own transaction, and `cancel_target` finds the INVITE it cancels); client by
branch + CSeq method. Every timer runs on the injectable clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from media.clock import Clock
from pipeline.metrics import Metrics
from sip.message import (
    SipMessage,
    SipRequest,
    SipResponse,
    make_response,
    new_branch,
)
from sip.timers import Timer, Timers
from sip.transaction_client import (
    ClientTransaction,
    ResponseHandler,
    Sender,
    State,
    TransactionError,
    TransactionFailed,
    TransactionTimeout,
)
from sip.transport import Source, Target, response_target

__all__ = [
    "AnswerRetransmitter",
    "ClientTransaction",
    "InviteServerTransaction",
    "Sender",
    "ServerTransaction",
    "State",
    "TransactionError",
    "TransactionFailed",
    "TransactionLayer",
    "TransactionTimeout",
]

log = logging.getLogger(__name__)

MAGIC_COOKIE = "z9hG4bK"


RequestHandler = Callable[[SipRequest, Source, "ServerTransaction | None"], None]


def _server_key(request: SipRequest) -> tuple[str, ...]:
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch or ""
    if branch.startswith(MAGIC_COOKIE):
        return (branch, via.sent_by.lower(), method)
    # RFC 2543 peer: no usable branch, match on the dialog-ish fields (17.2.3 end).
    return ("", request.call_id, request.from_addr.tag or "", str(request.cseq.seq),
            via.sent_by.lower(), method)


class ServerTransaction:
    """A non-INVITE server transaction; InviteServerTransaction adds the INVITE rules."""

    def __init__(self, layer: TransactionLayer, request: SipRequest, source: Source,
                 key: tuple[str, ...]) -> None:
        self.layer = layer
        self.request = request
        self.source = source
        self.key = key
        self.state = State.TRYING
        self.last_response: SipResponse | None = None
        self.target = response_target(request.top_via, source)
        self.cancel_target: InviteServerTransaction | None = None  # for a CANCEL
        self._timer: Timer | None = None

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def reliable(self) -> bool:
        return self.source.reliable

    def respond(self, response: SipResponse) -> None:
        """Send a response (first send; retransmissions are this layer's job)."""
        if self.state in (State.COMPLETED, State.CONFIRMED, State.TERMINATED, State.ACCEPTED):
            log.debug("%s transaction %s already answered; %d not sent",
                      self.method, self.key[0], response.status)
            return
        self.last_response = response
        self.layer._send_response(response, self.target)
        if response.status < 200:
            self.state = State.PROCEEDING
            return
        self._final(response)

    def reply(self, status: int, reason: str | None = None, **kwargs: object) -> SipResponse:
        """Build a response to the request with sip.message.make_response, and send it."""
        response = make_response(self.request, status, reason, **kwargs)  # type: ignore[arg-type]
        self.respond(response)
        return response

    def _final(self, response: SipResponse) -> None:
        self.state = State.COMPLETED
        # Timer J: keep answering retransmissions on UDP; nothing to absorb on TCP.
        self._start("J", 0 if self.reliable else 64 * self.layer.t1, self._terminate)

    def _retransmitted(self) -> None:
        if self.last_response is not None:
            self.layer._send_response(self.last_response, self.target, first=False)

    def _ack(self, request: SipRequest, source: Source) -> None:
        """Only INVITE transactions see ACKs."""

    def _start(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.layer.timers.start(name, delay, callback)

    def _terminate(self) -> None:
        if self.state is State.TERMINATED:
            return
        self.state = State.TERMINATED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.layer._server.pop(self.key, None)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.key[0]} {self.state.value}>"


class InviteServerTransaction(ServerTransaction):
    def __init__(self, layer: TransactionLayer, request: SipRequest, source: Source,
                 key: tuple[str, ...]) -> None:
        super().__init__(layer, request, source, key)
        self.state = State.PROCEEDING
        self.on_ack_timeout: Callable[[], None] | None = None  # Timer H fired
        self._h: Timer | None = None
        self._interval = layer.t1
        # 17.2.1: a 100 at once, so the caller stops retransmitting the INVITE.
        self.respond(make_response(request, 100))

    def _final(self, response: SipResponse) -> None:
        t1 = self.layer.t1
        if response.status < 300:
            # RFC 6026 Accepted: absorb INVITE retransmissions; the core resends the 2xx.
            self.state = State.ACCEPTED
            self._start("L", 64 * t1, self._terminate)
            return
        self.state = State.COMPLETED
        if not self.reliable:
            self._start("G", t1, self._timer_g)
        self._h = self.layer.timers.start("H", 64 * t1, self._timer_h)

    def _retransmitted(self) -> None:
        if self.state is not State.ACCEPTED:
            super()._retransmitted()

    def _timer_g(self) -> None:
        if self.state is not State.COMPLETED or self.last_response is None:
            return
        self.layer._send_response(self.last_response, self.target, first=False)
        self._interval = min(2 * self._interval, self.layer.t2)
        self._start("G", self._interval, self._timer_g)

    def _timer_h(self) -> None:
        if self.state is not State.COMPLETED:
            return
        log.info("no ACK for the %d to INVITE %s", getattr(self.last_response, "status", 0),
                 self.request.call_id)
        self._terminate()
        if self.on_ack_timeout is not None:
            self.on_ack_timeout()

    def _ack(self, request: SipRequest, source: Source) -> None:
        if self.state is State.COMPLETED:
            self.state = State.CONFIRMED
            if self._h is not None:
                self._h.cancel()
            # Timer I: absorb ACK retransmissions for T4 (UDP).
            self._start("I", 0 if self.reliable else self.layer.t4, self._terminate)

    def _terminate(self) -> None:
        if self._h is not None:
            self._h.cancel()
            self._h = None
        super()._terminate()


class AnswerRetransmitter:
    """The UAS core's 2xx retransmission (RFC 3261 13.3.1.4): T1, 2*T1 ... capped at T2
    between sends, until ack(); after 64*T1 without an ACK, `on_timeout` (send BYE)."""

    def __init__(self, layer: TransactionLayer, response: SipResponse, target: Target,
                 on_timeout: Callable[[], None]) -> None:
        self.layer = layer
        self.response = response
        self.target = target
        self.on_timeout = on_timeout
        self.sent = 1
        self._data = bytes(response)
        self._interval = layer.t1
        self._resend = layer.timers.start("2xx", self._interval, self._fire)
        self._giveup = layer.timers.start("2xx-H", 64 * layer.t1, self._gave_up)

    @property
    def waiting(self) -> bool:
        return self._giveup.active

    def ack(self) -> bool:
        """The ACK came: stop. False if we were no longer waiting."""
        waiting = self.waiting
        self.stop()
        return waiting

    def stop(self) -> None:
        self._resend.cancel()
        self._giveup.cancel()

    def _fire(self) -> None:
        self.layer.transport.send(self._data, self.target)
        self.sent += 1
        self._interval = min(2 * self._interval, self.layer.t2)
        self._resend = self.layer.timers.start("2xx", self._interval, self._fire)

    def _gave_up(self) -> None:
        self._resend.cancel()
        log.info("no ACK for the 2xx to INVITE %s after %d sends", self.response.call_id,
                 self.sent)
        self.on_timeout()


class TransactionLayer:
    """Matches messages to transactions; new requests go to `on_request`."""

    def __init__(
        self,
        transport: Sender,
        clock: Clock,
        on_request: RequestHandler,
        *,
        metrics: Metrics,
        t1: float = 0.5,
        t2: float = 4.0,
        t4: float = 5.0,
        on_stray_response: ResponseHandler | None = None,
    ) -> None:
        self.transport = transport
        self.clock = clock
        self.on_request = on_request
        self.on_stray_response = on_stray_response
        self.metrics = metrics
        self.t1, self.t2, self.t4 = t1, t2, t4
        self.timers = Timers(clock)
        self._server: dict[tuple[str, ...], ServerTransaction] = {}
        self._client: dict[tuple[str, str], ClientTransaction] = {}

    # -- inbound -----------------------------------------------------------------------------

    def receive(self, message: SipMessage, source: Source) -> None:
        """Entry point for every parsed message from the transport."""
        if isinstance(message, SipResponse):
            self._receive_response(message)
        else:
            self._receive_request(message, source)

    def _receive_request(self, request: SipRequest, source: Source) -> None:
        key = _server_key(request)
        tx = self._server.get(key)
        if request.method == "ACK":
            if tx is not None and tx.state in (State.COMPLETED, State.CONFIRMED):
                tx._ack(request, source)  # the ACK of a non-2xx: ends here
                return
            self.on_request(request, source, None)  # the ACK of a 2xx: the dialog's
            return
        if tx is not None:
            tx._retransmitted()
            return
        if request.method == "INVITE":
            tx = InviteServerTransaction(self, request, source, key)
        else:
            tx = ServerTransaction(self, request, source, key)
            if request.method == "CANCEL":
                target = self._server.get(key[:-1] + ("INVITE",))
                if isinstance(target, InviteServerTransaction):
                    tx.cancel_target = target
        self._server[key] = tx
        try:
            self.on_request(request, source, tx)
        except Exception:
            # A bug above us must still end the transaction, or it would never terminate.
            log.exception("%s %s: request handler raised", request.method, request.call_id)
            if tx.last_response is None or tx.last_response.status < 200:
                tx.reply(500)

    def _receive_response(self, response: SipResponse) -> None:
        via = response.top_via
        tx = self._client.get((via.branch or "", response.cseq.method))
        if tx is not None:
            tx._received(response)
        elif self.on_stray_response is not None:
            self.on_stray_response(response)

    # -- outbound ----------------------------------------------------------------------------

    def _send_response(self, response: SipResponse, target: Target, first: bool = True) -> None:
        if first:
            self.metrics.sip_responses_sent_total.labels(f"{response.status // 100}xx").inc()
        self.transport.send(bytes(response), target)

    def send_response(self, response: SipResponse, target: Target) -> None:
        """A response outside any transaction (a 2xx retransmission, a stateless answer)."""
        self._send_response(response, target)

    def request(self, request: SipRequest, target: Target,
                on_response: ResponseHandler | None = None) -> ClientTransaction:
        """Start a client transaction: adds our Via (new branch) and sends."""
        if request.method in ("ACK", "CANCEL") and "Via" in request.headers:
            via = request.top_via  # a CANCEL reuses its INVITE's branch (9.1)
        else:
            via = self.transport.via_for(target, new_branch())
            request = request.with_header("Via", via, top=True)
        tx = ClientTransaction(self, request, target, on_response)
        self._client[tx.key] = tx
        tx._start()
        return tx

    def send_ack(self, ack: SipRequest, target: Target) -> SipRequest:
        """An ACK for a 2xx: no transaction, a fresh branch (17.1.1.3)."""
        if "Via" not in ack.headers:
            ack = ack.with_header("Via", self.transport.via_for(target, new_branch()), top=True)
        self.transport.send(bytes(ack), target)
        return ack

    def retransmit_answer(self, response: SipResponse, target: Target,
                          on_timeout: Callable[[], None]) -> AnswerRetransmitter:
        return AnswerRetransmitter(self, response, target, on_timeout)

    @property
    def server_transactions(self) -> int:
        return len(self._server)

    @property
    def client_transactions(self) -> int:
        return len(self._client)

    def close(self) -> None:
        self.timers.close()
        for tx in list(self._client.values()):
            tx._fail(TransactionFailed(f"{tx.request.method} abandoned: shutting down"))
        self._server.clear()
        self._client.clear()
