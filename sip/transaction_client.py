"""SIP client transactions (RFC 3261 17.1, RFC 6026): the requests we send.

Over UDP a request is retransmitted (Timer A doubling for INVITE, Timer E capped at T2
otherwise); over TCP it is sent once. Either way it ends with a final response,
TransactionTimeout after 64*T1 (Timer B/F) or TransactionFailed when the transport could
not deliver it; never a hang. A non-2xx final to an INVITE is ACKed here, and a 2xx is
kept for 64*T1 (Timer M) so its retransmissions reach `on_response` to be ACKed again.
The TransactionLayer in sip.transaction creates these and matches responses to them.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from sip.headers import Via
from sip.message import SipRequest, SipResponse, make_ack
from sip.timers import Timer
from sip.transport import ErrorHandler, Target

if TYPE_CHECKING:
    from sip.transaction import TransactionLayer

__all__ = [
    "ClientTransaction",
    "Sender",
    "State",
    "TransactionError",
    "TransactionFailed",
    "TransactionTimeout",
]

log = logging.getLogger(__name__)

ResponseHandler = Callable[[SipResponse], None]


class Sender(Protocol):
    """What the transaction layer needs from a transport (SipTransport, or a test fake)."""

    def send(self, data: bytes, target: Target, on_error: ErrorHandler | None = None) -> None: ...

    def via_for(self, target: Target, branch: str) -> Via: ...


class TransactionError(Exception):
    """A client transaction ended without a final response."""


class TransactionTimeout(TransactionError, TimeoutError):
    """No final response within 64*T1 (Timer B or F)."""


class TransactionFailed(TransactionError):
    """The transport could not deliver the request."""


class State(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"



class ClientTransaction:
    """A request we sent. `await result()` gives the final response or raises."""

    def __init__(self, layer: TransactionLayer, request: SipRequest, target: Target,
                 on_response: ResponseHandler | None) -> None:
        self.layer = layer
        self.request = request
        self.target = target
        self.on_response = on_response  # provisional responses, and 2xx retransmissions
        self.invite = request.method == "INVITE"
        self.state = State.CALLING if self.invite else State.TRYING
        self.branch = request.top_via.branch or ""
        self.key = (self.branch, request.method)
        self.response: SipResponse | None = None
        self._future: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        self._interval = layer.t1
        self._retransmit: Timer | None = None
        self._timeout: Timer | None = None
        self._data = bytes(request)

    def _start(self) -> None:
        self._send(self._data)
        t1 = self.layer.t1
        if not self.target.reliable:
            self._retransmit = self.layer.timers.start("A" if self.invite else "E", t1,
                                                       self._resend)
        self._timeout = self.layer.timers.start("B" if self.invite else "F", 64 * t1,
                                                self._timed_out)

    def _send(self, data: bytes) -> None:
        self.layer.transport.send(data, self.target, self._transport_error)

    def _resend(self) -> None:
        if self.state not in (State.CALLING, State.TRYING, State.PROCEEDING):
            return
        if self.invite and self.state is State.PROCEEDING:
            return  # Timer A stops at the first provisional response
        self._send(self._data)
        if self.invite:
            self._interval *= 2  # Timer A doubles without a cap
        elif self.state is State.PROCEEDING:
            self._interval = self.layer.t2
        else:
            self._interval = min(2 * self._interval, self.layer.t2)
        self._retransmit = self.layer.timers.start("A" if self.invite else "E", self._interval,
                                                   self._resend)

    async def result(self) -> SipResponse:
        """The final response. Raises TransactionTimeout or TransactionFailed."""
        return await asyncio.shield(self._future)

    @property
    def done(self) -> bool:
        return self._future.done()

    def _received(self, response: SipResponse) -> None:
        status = response.status
        if status < 200:
            if self.state in (State.CALLING, State.TRYING):
                self.state = State.PROCEEDING
                if self.invite and self._timeout is not None:
                    # RFC 3261 17.1.1.2: Timer B only runs in Calling. A ringing INVITE
                    # waits for its final response; the caller CANCELs when it gives up.
                    self._timeout.cancel()
                    self._timeout = None
            if self.state is State.PROCEEDING:
                self._notify(response)
            return
        if self.state is State.ACCEPTED:
            if status < 300:
                self._notify(response)  # a retransmitted 2xx: the dialog ACKs it again
            return
        if self.state is State.COMPLETED:
            if self.invite and self.response is not None and status >= 300:
                self._send(bytes(make_ack(self.request, self.response)))
            return
        if self.state is State.TERMINATED:
            return
        self.response = response
        self._stop_timers()
        if self.invite and status < 300:
            self.state = State.ACCEPTED  # RFC 6026 Timer M: catch 2xx retransmissions
            self._retransmit = self.layer.timers.start("M", 64 * self.layer.t1, self._terminate)
        elif self.invite:
            self.state = State.COMPLETED
            self._send(bytes(make_ack(self.request, response)))
            wait = 0 if self.target.reliable else 32.0
            self._retransmit = self.layer.timers.start("D", wait, self._terminate)
        else:
            self.state = State.COMPLETED
            wait = 0 if self.target.reliable else self.layer.t4
            self._retransmit = self.layer.timers.start("K", wait, self._terminate)
        if not self._future.done():
            self._future.set_result(response)

    def _notify(self, response: SipResponse) -> None:
        if self.on_response is not None:
            try:
                self.on_response(response)
            except Exception:
                log.exception("response handler raised for %s", self.request.method)

    def give_up(self) -> None:
        """End an INVITE still waiting for its final response: the TU's timeout after a
        CANCEL (RFC 3261 9.1), since Timer B no longer runs once it is Proceeding."""
        self._timed_out()

    def _timed_out(self) -> None:
        self._fail(TransactionTimeout(
            f"no final response to {self.request.method} after {64 * self.layer.t1:g} s"))

    def _transport_error(self, exc: Exception) -> None:
        self._fail(TransactionFailed(f"{self.request.method} not sent: {exc}"))

    def _fail(self, exc: TransactionError) -> None:
        if self._future.done():
            return
        log.info("%s", exc)
        self._future.set_exception(exc)
        self._future.exception()  # mark retrieved: nobody awaiting is not an error
        self._terminate()

    def _stop_timers(self) -> None:
        for timer in (self._retransmit, self._timeout):
            if timer is not None:
                timer.cancel()
        self._retransmit = self._timeout = None

    def _terminate(self) -> None:
        self._stop_timers()
        self.state = State.TERMINATED
        self.layer._client.pop(self.key, None)
