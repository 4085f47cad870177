"""Outbound calls: INVITE through the trunk or straight to a SIP URI (RFC 3261 13.2).

Our SDP offer goes in the INVITE; 100/180/183 are noted; a 401/407 is answered with
digest credentials (new CSeq, same Call-ID and From tag); a 2xx is ACKed (again on
every retransmission of it), becomes a UAC dialog and a SipCall on the answered codec,
and the handler starts. A final failure raises a DialError that carries the status. If
the caller gives up first (cancel(), the task cancelled, or the ring timeout) a CANCEL
goes out as soon as a provisional response allows it (RFC 3261 9.1), and a 2xx that
races it is ACKed and hung up with BYE.

The RTP port is bound before the offer is made; until the answer names the far end the
session is "inactive", so the media timeout does not run while the phone rings.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.leg import CallHandler, CallInfo
from sip.call import Media, SipCall
from sip.dialog import Dialog
from sip.grammar import SipParseError
from sip.headers import Address
from sip.invite import media_params
from sip.message import (
    SipRequest,
    SipResponse,
    build_request,
    make_cancel,
    new_call_id,
    new_tag,
)
from sip.ports import PortError
from sip.registration import TrunkAccount, uac_metrics, with_deadline
from sip.rtp_session import MediaParams
from sip.sdp import KNOWN_CODECS, SdpError, SdpSession, SessionDescription
from sip.transaction import ClientTransaction, TransactionError, TransactionTimeout
from sip.transport import Target
from sip.uri import Uri, bare_host

if TYPE_CHECKING:
    from sip.endpoint import SipEndpoint

__all__ = ["CallCancelled", "CallLimitReached", "CallRejected", "CallTimedOut",
           "Destination", "DestinationError", "DialError", "Dialer", "OutboundCall",
           "TargetNotAllowed", "parse_destination"]

log = logging.getLogger(__name__)
SDP = "application/sdp"
_NUMBER = re.compile(r"\+?[0-9*#]{1,32}")
LocalAddress = Callable[[Target], tuple[str, int]]


class DialError(Exception):
    """An outbound call that did not get answered. `status` is the SIP final response
    (or the nearest equivalent: 408 timeout, 487 cancelled, 503 no capacity)."""

    outcome = "error"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DestinationError(DialError, ValueError):
    """The number or URI to call cannot be used (HTTP 400)."""


class CallRejected(DialError):
    def __init__(self, response: SipResponse) -> None:
        super().__init__(f"{response.status} {response.reason}", response.status)
        self.reason = response.reason
        status = response.status
        self.outcome = ("busy" if status in (486, 600) else "no_answer" if status in (408, 480)
                        else "auth_failed" if status in (401, 403, 407) else "rejected")


class TargetNotAllowed(DestinationError):
    """The target is not one we may call (sip.policy): HTTP 403, no INVITE sent."""


class CallTimedOut(DialError):
    outcome = "no_answer"


class CallCancelled(DialError):
    outcome = "cancelled"


class CallLimitReached(DialError):
    outcome = "limit"


@dataclass(frozen=True, slots=True)
class Destination:
    uri: Uri  # the Request-URI and To
    target: Target  # where the INVITE is sent
    via_trunk: bool


def parse_destination(to: str, trunk: TrunkAccount | None) -> Destination:
    """A SIP URI ("sip:bob@host[:port][;transport=tcp]") is called directly, unless its
    host is the trunk's; a number ("+15551234", "tel:+15551234") goes through the trunk."""
    text = to.strip()
    if text.lower().startswith("tel:"):
        text = text[4:].split(";")[0].replace("-", "").replace(".", "")
    if _NUMBER.fullmatch(text):
        if trunk is None:
            raise DestinationError(f"cannot call the number {text!r}: no sip.trunk configured")
        return Destination(Uri.parse(f"sip:{text}@{trunk.domain_name}"), trunk.target, True)
    try:
        uri = Uri.parse(text)
    except SipParseError as exc:
        raise DestinationError(f"not a SIP URI or a phone number: {to[:80]!r} ({exc.reason})") \
            from None
    if uri.scheme == "sips":
        raise DestinationError("sips: (TLS) is not supported")
    if uri.scheme != "sip" or not uri.host:
        raise DestinationError(f"not a SIP URI or a phone number: {to[:80]!r}")
    if uri.headers:
        raise DestinationError("headers in the URI to call are not supported")
    if trunk is not None and uri.host.lower() in (trunk.host.lower(), trunk.domain_name.lower()):
        return Destination(uri, trunk.target, True)
    transport = uri.transport or "udp"
    if transport not in ("udp", "tcp"):
        raise DestinationError(f"transport {transport!r} is not supported (udp or tcp)")
    return Destination(uri, Target(transport, bare_host(uri.maddr or uri.host), uri.port or 5060),
                       False)


class OutboundCall:
    """One outbound call attempt, from INVITE to answer (or failure). `await run()`."""

    def __init__(self, dialer: Dialer, dest: Destination, handler: CallHandler | None, *,
                 codecs: Sequence[str], caller: str | None, headers: Iterable[tuple[str, str]],
                 ring_timeout: float) -> None:
        self.dialer = dialer
        self.dest = dest
        self.handler = handler
        self.codecs = tuple(codecs)
        self.ring_timeout = ring_timeout
        ep = dialer.endpoint
        self.call_id = new_call_id()
        self.local_tag = new_tag()
        trunk = dialer.trunk if dest.via_trunk else None
        user = caller or (trunk.username if trunk is not None and trunk.username else
                          ep.settings.contact_user)
        domain = trunk.domain_name if trunk is not None else None
        self._from_user, self._from_domain = user, domain
        uri = dest.uri
        self.info = CallInfo(self.call_id, "sip", caller=user, callee=uri.user or "",
                             params={"direction": "outbound", "to": str(uri)})
        self._headers = tuple(headers)
        self._auth = trunk.digest() if trunk is not None else None
        self.state = "new"  # calling, ringing, answered, failed, cancelled
        self.status: int | None = None  # the last final (or provisional) status seen
        self.started_at: float | None = None
        self.setup_time: float | None = None  # first INVITE sent -> 2xx received
        self.call: SipCall | None = None
        self.error: DialError | None = None
        self._provisional = asyncio.Event()
        self._cancel = asyncio.Event()
        self._acks: dict[str, tuple[bytes, Target]] = {}  # remote tag -> our ACK, where
        self._answered = False  # a 2xx was taken (a 2xx of another fork gets a BYE)
        self._abandoned = False  # we gave up: any 2xx gets ACK + BYE
        self._tx: ClientTransaction | None = None

    def cancel(self) -> None:
        """Give up before the answer: CANCEL, and run() raises CallCancelled."""
        self._cancel.set()

    async def run(self) -> SipCall:
        m = uac_metrics(self.dialer.endpoint.metrics)
        try:
            call = await self._run()
        except DialError as exc:
            self.error = exc
            self.state = "cancelled" if isinstance(exc, CallCancelled) else "failed"
            self.status = exc.status if exc.status is not None else self.status
            m.outbound_calls_total.labels(exc.outcome).inc()
            log.info("outbound call %s to %s failed: %s", self.call_id, self.dest.uri, exc)
            raise
        m.outbound_calls_total.labels("answered").inc()
        if self.setup_time is not None:
            m.outbound_setup_seconds.observe(self.setup_time)
        log.info("outbound call %s to %s answered (%s) in %.3f s", self.call_id, self.dest.uri,
                 call.media.params.codec, self.setup_time or 0.0)
        return call

    async def _run(self) -> SipCall:
        ep = self.dialer.endpoint
        if self.handler is None:
            raise DialError("no handler for the call")
        if ep.full or not ep.accepting:
            raise CallLimitReached("at the call limit" if ep.full else "shutting down", 503)
        host, port = self.dialer.local_address(self.dest.target)
        first = KNOWN_CODECS[self.codecs[0].lower()]
        try:
            media = await ep.open_media(MediaParams(None, 0, first.name, first.payload_type,
                                                    direction="inactive"))
        except (OSError, ValueError, PortError) as exc:
            raise CallLimitReached(f"no RTP port: {exc}", 503) from None
        adopted = False
        try:
            address = ep.settings.advertised_address or host
            sdp = SdpSession(address, media.local_port, secrets.randbelow(2**31), self.codecs)
            request = self._invite(bytes(sdp.create_offer()), host, port)
            self.state, self.started_at = "calling", ep.clock.now()
            request, response = await self._transact(request)
            self.setup_time = ep.clock.now() - self.started_at
            call = await self._establish(request, response, sdp, media)
            adopted = True
            return call
        finally:
            if not adopted:
                media.close()

    def _invite(self, body: bytes, host: str, port: int) -> SipRequest:
        ep = self.dialer.endpoint
        domain = self._from_domain or (f"[{host}]" if ":" in host else host)
        from_addr = Address(Uri.parse(f"sip:{self._from_user}@{domain}"))
        self._local_uri = from_addr
        self._contact = _contact(ep.settings.contact_user, host, port, self.dest.target.transport)
        extra: list[tuple[str, object]] = [("Allow", ep.allow()), ("User-Agent",
                                                                     ep.settings.user_agent)]
        extra += list(self._headers)
        return build_request("INVITE", self.dest.uri, from_addr=from_addr.with_tag(self.local_tag),
                             to_addr=Address(self.dest.uri), call_id=self.call_id,
                             cseq=secrets.randbelow(2**15) + 1, contact=self._contact,
                             extra=extra, body=body, content_type=SDP)

    async def _transact(self, request: SipRequest) -> tuple[SipRequest, SipResponse]:
        """Send, answer challenges; the 2xx and the request it answers."""
        deadline = self.dialer.endpoint.clock.now() + self.ring_timeout
        for _ in range(3):  # the INVITE, then a 401 and/or a 407 answered
            tx = self._tx = self.dialer.endpoint.transactions.request(
                request, self.dest.target, on_response=self._on_response)
            response = await self._final(tx, deadline)
            status = self.status = response.status
            if 200 <= status < 300:
                return tx.request, response
            if status in (401, 407) and self._auth is not None:
                retried = self._auth.answer(request, response)
                if retried is not None:
                    request = retried
                    continue
            raise CallRejected(response)
        raise CallRejected(response)

    async def _final(self, tx: ClientTransaction, deadline: float) -> SipResponse:
        clock = self.dialer.endpoint.clock
        result = asyncio.ensure_future(tx.result())
        cancelled = asyncio.ensure_future(self._cancel.wait())
        timer = asyncio.ensure_future(clock.sleep_until(deadline))
        try:
            await asyncio.wait((result, cancelled, timer), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._abandoned = True
            self.dialer.spawn(self._give_up(tx))  # our task was cancelled: still CANCEL
            raise
        finally:
            for helper in (result, cancelled, timer):
                if helper is not result or not helper.done():
                    helper.cancel()
        if result.done():
            try:
                return result.result()
            except TransactionTimeout as exc:
                raise CallTimedOut(f"no answer: {exc}", 408) from None
            except TransactionError as exc:
                raise DialError(f"INVITE not delivered: {exc}", 503) from None
        self._abandoned = True
        self.dialer.spawn(self._give_up(tx))
        if cancelled.done():
            raise CallCancelled("cancelled before the answer", 487)
        raise CallTimedOut(f"not answered within {self.ring_timeout:g} s", 408)

    async def _give_up(self, tx: ClientTransaction) -> None:
        """CANCEL once a provisional response allows it; ACK and BYE a 2xx that races it."""
        ep = self.dialer.endpoint
        clock, wait = ep.clock, 64 * ep.transactions.t1
        if not tx.done and not self._provisional.is_set():
            provisional = asyncio.ensure_future(self._provisional.wait())
            final = asyncio.ensure_future(tx.result())
            try:
                await with_deadline(clock, clock.now() + wait, asyncio.wait(
                    (provisional, final), return_when=asyncio.FIRST_COMPLETED))
            except TimeoutError:
                pass  # Timer B will end the INVITE transaction
            finally:
                provisional.cancel()
                if not final.done():
                    final.cancel()
        if not tx.done and self._provisional.is_set():
            ep.transactions.request(make_cancel(tx.request), tx.target)
        try:
            response = await with_deadline(clock, clock.now() + wait, tx.result())
        except TimeoutError:
            tx.give_up()  # nothing came back in 64*T1: the INVITE transaction ends here
            return
        except TransactionError:
            return
        if 200 <= response.status < 300:
            self._ack_and_bye(tx.request, response)

    def _on_response(self, response: SipResponse) -> None:
        """Provisional responses, and retransmissions of the 2xx (ACK again)."""
        status = response.status
        if status < 200:
            self.status = status
            if status in (180, 183) and self.state == "calling":
                self.state = "ringing"
            self._provisional.set()
            return
        if status >= 300 or response.cseq.method != "INVITE":
            return
        acked = self._acks.get(response.to_addr.tag or "")
        if acked is not None:
            self.dialer.endpoint.transactions.transport.send(*acked)
        elif self._tx is not None and (self._answered or self._abandoned):
            # Another fork answered too (RFC 3261 13.2.2.4): ACK it, then hang it up.
            self._ack_and_bye(self._tx.request, response)

    def _dialog(self, request: SipRequest, response: SipResponse) -> Dialog:
        to_tag = response.to_addr.tag
        if not to_tag:
            raise DialError("2xx without a To tag", 502)
        contacts = response.contacts
        target = contacts[0].uri if contacts and contacts[0].uri.is_sip else self.dest.uri
        routes = tuple(reversed(response.record_routes))
        trunk = self.dialer.trunk
        if not routes and self.dest.via_trunk and trunk is not None:
            # No Record-Route: keep the trunk as outbound proxy for in-dialog requests.
            routes = (Address(Uri("sip", trunk.host, port=trunk.port).with_params(lr=None)),)
        return Dialog(call_id=self.call_id, local_tag=self.local_tag, remote_tag=to_tag,
                      local_uri=self._local_uri, remote_uri=Address(self.dest.uri),
                      remote_target=target, route_set=routes, local_contact=self._contact,
                      local_cseq=request.cseq.seq, remote_cseq=None,
                      transport=self.dest.target.transport)

    def _send_ack(self, dialog: Dialog, cseq: int) -> None:
        target = dialog.next_hop()
        ack = self.dialer.endpoint.transactions.send_ack(dialog.create_ack(cseq), target)
        self._acks[dialog.remote_tag] = (bytes(ack), target)

    def _ack_and_bye(self, request: SipRequest, response: SipResponse) -> None:
        try:
            dialog = self._dialog(request, response)
            self._send_ack(dialog, request.cseq.seq)
            self.dialer.endpoint.transactions.request(dialog.create_request("BYE"),
                                                      dialog.next_hop())
        except (DialError, ValueError) as exc:
            log.info("outbound call %s: cannot end a late 2xx: %s", self.call_id, exc)

    async def _establish(self, request: SipRequest, response: SipResponse, sdp: SdpSession,
                         media: Media) -> SipCall:
        ep = self.dialer.endpoint
        dialog = self._dialog(request, response)
        self._answered = True
        self._send_ack(dialog, request.cseq.seq)
        try:
            if response.content_type is None or response.content_type.mime != SDP:
                raise SdpError("the 2xx carries no SDP answer")
            neg = sdp.receive_answer(SessionDescription.parse(response.body))
            if neg.codec.name.lower() == "telephone-event":  # sdp.py would take it as audio
                raise SdpError("the answer has telephone-event but no audio codec we offered")
            params = await media_params(neg)
        except SdpError as exc:
            ep.transactions.request(dialog.create_request("BYE"), dialog.next_hop())
            dialog.terminate()
            raise DialError(f"unusable SDP answer: {exc}", 488) from None
        media.update(params)
        assert self.handler is not None
        info = CallInfo(self.call_id, "sip", self.info.caller, self.info.callee,
                        {**self.info.params, "from": str(self._local_uri.uri)})
        call = SipCall(info=info, dialog=dialog, media=media, handler=self.handler,
                       transactions=ep.transactions, clock=ep.clock, metrics=ep.metrics,
                       on_closed=self.dialer.call_closed)
        call.sdp = sdp
        call.auth = self._auth  # trunk credentials, for a challenged REFER
        call.targets = ep.targets
        ep.calls[dialog.id] = call  # the endpoint routes its in-dialog requests from now on
        ep.metrics.calls_active.labels("sip").inc()
        self.state, self.call = "answered", call
        call.started_at = ep.clock.now()  # for call_duration_seconds
        call.acked()  # the 2xx/ACK exchange is done: the handler starts
        return call


def _contact(user: str, host: str, port: int, transport: str) -> Address:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    uri = Uri("sip", host, user, port=port)
    return Address(uri.with_params(transport=transport) if transport != "udp" else uri)


class Dialer:
    """Places outbound calls for one SipEndpoint (the app's, or `switchboard call`'s)."""

    def __init__(self, endpoint: SipEndpoint, *, local_address: LocalAddress,
                 trunk: TrunkAccount | None = None, ring_timeout: float = 60.0) -> None:
        self.endpoint = endpoint
        self.local_address = local_address
        self.trunk = trunk
        self.ring_timeout = ring_timeout
        self.pending: dict[str, OutboundCall] = {}
        self._tasks: set[asyncio.Task[object]] = set()

    def prepare(self, to: str, handler: CallHandler | None = None, *,
                codecs: Sequence[str] | None = None,
                caller: str | None = None, headers: Iterable[tuple[str, str]] = (),
                ring_timeout: float | None = None) -> OutboundCall:
        """Check the destination (DestinationError) and make the call object. The handler
        may be set later (`attempt.handler = factory(attempt.info)`), before run()."""
        dest = parse_destination(to, self.trunk)
        policy = getattr(self.endpoint, "targets", None)
        if policy is not None and not policy.allowed_target(dest.uri):
            self.endpoint.metrics.sip_targets_refused_total.labels("dial").inc()
            log.warning("outbound call to %s refused: not an allowed target", dest.uri)
            raise TargetNotAllowed(f"calls to {str(dest.uri)[:80]!r} are not allowed "
                                   "(sip.targets)", 403)
        chosen = tuple(codecs or self.endpoint.settings.codecs)
        unknown = [c for c in chosen if c.lower() not in KNOWN_CODECS]
        if unknown or not chosen:
            raise DestinationError(f"unknown codecs {unknown}; use PCMU, PCMA or opus")
        return OutboundCall(self, dest, handler, codecs=chosen, caller=caller, headers=headers,
                            ring_timeout=ring_timeout or self.ring_timeout)

    async def dial(self, to: str, handler: CallHandler, **kwargs: object) -> SipCall:
        """Call and wait for the answer. Raises DialError (with .status) on failure."""
        attempt = self.prepare(to, handler, **kwargs)  # type: ignore[arg-type]
        return await self.run(attempt)

    async def run(self, attempt: OutboundCall) -> SipCall:
        self.pending[attempt.call_id] = attempt
        try:
            return await attempt.run()
        finally:
            self.pending.pop(attempt.call_id, None)

    def start(self, attempt: OutboundCall) -> asyncio.Task[object]:
        """Run `attempt` in the background (POST /calls); failures are logged.

        It counts as calling from here: a status read before the task first runs
        must not say "new" to a client that was just told "calling"."""
        attempt.state = "calling"
        return self.spawn(self.run(attempt))

    def spawn(self, coro: object) -> asyncio.Task[object]:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and isinstance(task.exception(), DialError):
            return  # already logged and counted by OutboundCall.run
        if not task.cancelled() and task.exception() is not None:
            log.error("outbound task failed", exc_info=task.exception())

    def call_closed(self, call: SipCall) -> None:
        self.endpoint.calls.pop(call.dialog.id, None)

    async def close(self, timeout: float = 5.0) -> None:
        """Cancel calls still ringing (CANCEL goes out) and wait for the clean-ups."""
        for attempt in list(self.pending.values()):
            attempt.cancel()
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=timeout)
            for task in late:
                task.cancel()
