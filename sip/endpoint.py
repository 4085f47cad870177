"""The SIP user agent core for inbound calls: dispatch by method, the call table,
access control and limits, and shutdown.

INVITE -> trusted source, or else a digest-authenticated caller when callers are
configured (401 challenge; 403 for bad credentials), or else 403 -> room for the call
(else 503 + Retry-After, or 486)
-> handler for the call (the factory may refuse) -> offer/answer, media, optional 180,
200 OK (sip.invite). Then ACK, BYE, CANCEL, re-INVITE, OPTIONS, INFO (DTMF); 405 for
methods we do not take, 481 for dialogs we do not know. A REFER sent to us is never
obeyed (403 for a target sip.policy refuses, else 501): we call no one for others.
Every request is counted by method (unknown methods as "other", so the label set stays
bounded).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from media.clock import Clock
from pipeline.leg import CallHandler, CallInfo
from pipeline.metrics import Metrics
from sip.call import Media, SipCall
from sip.dialog import Dialog, DialogError
from sip.digest import AuthResult, DigestError, DigestServer
from sip.grammar import SipParseError
from sip.headers import Address
from sip.invite import (
    CallRefused,
    PendingInvite,
    answer_invite,
    apply_ack,
    caller_credentials,
    names_request_uri,
    reinvite,
    retry_after_jitter,
)
from sip.message import SipMessage, SipRequest, SipResponse, make_response, new_tag
from sip.policy import TargetPolicy
from sip.refer import on_notify
from sip.rtp_session import MediaParams
from sip.sdp import SdpSession
from sip.transaction import (
    InviteServerTransaction,
    Sender,
    ServerTransaction,
    TransactionLayer,
)
from sip.transport import Source
from sip.uri import Uri

__all__ = ["CallRefused", "EndpointSettings", "SipEndpoint", "parse_dtmf_relay"]

log = logging.getLogger(__name__)

KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "REFER", "NOTIFY", "UPDATE", "PRACK",
    "REGISTER", "SUBSCRIBE", "MESSAGE", "PUBLISH",
})
BASE_ALLOW = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO")
DTMF_TYPES = ("application/dtmf-relay", "application/dtmf")
_DTMF_DIGITS = frozenset("0123456789*#ABCD")

HandlerFactory = Callable[[CallInfo], CallHandler]
MediaFactory = Callable[[MediaParams], Awaitable[Media]]
MethodHandler = Callable[[SipCall | None, SipRequest, ServerTransaction], None]


@dataclass(frozen=True, slots=True)
class EndpointSettings:
    codecs: tuple[str, ...] = ("PCMU", "PCMA", "opus")
    max_calls: int = 200
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    ring_seconds: float = 0.0
    advertised_address: str | None = None
    user_agent: str = "Switchboard"
    limit_status: int = 503  # at max_calls: 503 + Retry-After (a balancer tries elsewhere) or 486
    retry_after: int = 5
    contact_user: str = "switchboard"
    # Digest users (username -> password) who may call from outside trusted_networks.
    callers: Mapping[str, str] = field(default_factory=dict, repr=False)
    auth_realm: str = "switchboard"
    # Challenges in this order; clients answer the first they support, and some (SIPp
    # 3.6, older phones) read only the first: put MD5 first for them.
    auth_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    nonce_ttl: float = 300.0
    auth_secret: bytes | None = field(default=None, repr=False)  # None: random per process


def parse_dtmf_relay(body: bytes, mime: str) -> str | None:
    """The digit of an INFO body: 'Signal=5' (application/dtmf-relay) or '5'
    (application/dtmf); 10 and 11 mean * and # for some gateways."""
    text = body.decode("ascii", "replace")
    value = text.strip()
    if mime == "application/dtmf-relay":
        value = ""
        for line in text.splitlines():
            key, sep, rest = line.partition("=")
            if sep and key.strip().lower() == "signal":
                value = rest.strip()
                break
    value = {"10": "*", "11": "#"}.get(value, value).upper()
    return value if len(value) == 1 and value in _DTMF_DIGITS else None


class SipEndpoint:
    def __init__(
        self,
        settings: EndpointSettings,
        *,
        transport: Sender,
        handler_factory: HandlerFactory,
        media_factory: MediaFactory,
        clock: Clock,
        metrics: Metrics,
        t1: float = 0.5,
        t2: float = 4.0,
        local_host: Callable[[str], str] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.handler_factory = handler_factory
        self.open_media = media_factory
        self._local_host = local_host
        self.transactions = TransactionLayer(
            transport, clock, self._on_request, metrics=metrics, t1=t1, t2=t2)
        self.accepting = True
        self.calls: dict[tuple[str, str, str], SipCall] = {}
        self._pending: dict[InviteServerTransaction, PendingInvite] = {}
        self._networks = [ipaddress.ip_network(n, strict=False)
                          for n in settings.trusted_networks]
        self._digest: DigestServer | None = None
        if settings.callers:
            self._digest = DigestServer(settings.auth_realm,
                                        settings.auth_secret or os.urandom(32),
                                        nonce_ttl=settings.nonce_ttl,
                                        algorithms=settings.auth_algorithms)
        # Who we may call or transfer to (sip.policy); None: anyone (the `switchboard call` UA).
        self.targets: TargetPolicy | None = None
        self.methods: dict[str, MethodHandler] = {}  # extensions: REFER, NOTIFY, ...
        # The progress of our blind transfers (REFER, sip.refer) comes in NOTIFYs.
        self.register_method("NOTIFY", on_notify)

    # -- wiring ------------------------------------------------------------------------------

    def receive(self, message: SipMessage, source: Source) -> None:
        """Plug into SipTransport(on_message=endpoint.receive)."""
        self.transactions.receive(message, source)

    def register_method(self, method: str, handler: MethodHandler) -> None:
        """Take another method (a teammate's REFER/NOTIFY); it is added to Allow."""
        self.methods[method.upper()] = handler

    def allow(self) -> str:
        return ", ".join((*BASE_ALLOW, *self.methods))

    def server_headers(self, allow: bool = False) -> list[tuple[str, object]]:
        items: list[tuple[str, object]] = [("Server", self.settings.user_agent)]
        if allow:
            items += [("Allow", self.allow()), ("Supported", "")]
        return items

    def sdp_address(self, source: Source) -> str:
        return self.settings.advertised_address or source.local[0]

    def contact_for(self, source: Source) -> Address:
        host = self.settings.advertised_address or source.local[0]
        if ":" in host:
            host = f"[{host}]"
        uri = Uri("sip", host, self.settings.contact_user, port=source.local[1])
        if source.transport != "udp":
            uri = uri.with_params(transport=source.transport)
        return Address(uri)

    @property
    def load(self) -> int:
        return len(self.calls) + len(self._pending)

    @property
    def full(self) -> bool:
        return self.load >= self.settings.max_calls

    # -- dispatch ----------------------------------------------------------------------------

    def _on_request(self, request: SipRequest, source: Source,
                    tx: ServerTransaction | None) -> None:
        method = request.method
        self.metrics.sip_requests_total.labels(method if method in KNOWN_METHODS else "other").inc()
        if method == "ACK":
            self._ack(request)
            return
        assert tx is not None
        if method == "CANCEL":
            self._cancel(tx)
            return
        to_tag = request.to_addr.tag
        if to_tag is None:
            self._out_of_dialog(request, source, tx)
            return
        call = self.calls.get((request.call_id, to_tag, request.from_addr.tag or ""))
        if call is None or not call.active:
            tx.respond(self._response(request, 481))
            return
        try:
            call.dialog.check_request(request)
        except DialogError as exc:
            extra = [("Retry-After", retry_after_jitter())] if exc.status == 500 else []
            tx.respond(call.dialog.response(request, exc.status, exc.reason, extra=extra))
            return
        self._in_dialog(call, request, tx)

    def _response(self, request: SipRequest, status: int, reason: str | None = None,
                  extra: Iterable[tuple[str, object]] = ()) -> SipResponse:
        return make_response(request, status, reason, extra=[*self.server_headers(), *extra])

    def _out_of_dialog(self, request: SipRequest, source: Source,
                       tx: ServerTransaction) -> None:
        method = request.method
        caller: str | None = None  # the digest user, for a caller outside trusted_networks
        # OPTIONS is open to all: a load balancer may probe from outside trusted_networks.
        if method != "OPTIONS" and not self._trusted(source):
            if method != "INVITE" or self._digest is None:
                log.info("%s from untrusted %s:%d refused", method, *source.remote)
                if method == "INVITE":
                    self.metrics.calls_rejected_total.labels("sip", "forbidden").inc()
                tx.respond(self._response(request, 403))
                return
            caller = self._authenticate(request, source, tx)
            if caller is None:
                return  # answered 401 or 403
        if method == "INVITE":
            assert isinstance(tx, InviteServerTransaction)
            self._invite(request, source, tx, caller)
        elif method == "OPTIONS":
            if self.full or not self.accepting:
                tx.respond(self._response(request, 503, extra=[
                    ("Retry-After", self.settings.retry_after)]))
            else:
                tx.respond(self._options_ok(request, None))
        elif method in self.methods:
            self.methods[method](None, request, tx)
        elif method == "REFER":
            self._refer_in(None, request, tx)
        elif method in BASE_ALLOW:  # BYE, INFO without a dialog
            tx.respond(self._response(request, 481))
        else:
            tx.respond(self._response(request, 405, extra=[("Allow", self.allow())]))

    def _in_dialog(self, call: SipCall, request: SipRequest, tx: ServerTransaction) -> None:
        method = request.method
        if method == "BYE":
            tx.respond(call.dialog.response(request, 200, extra=self.server_headers()))
            call.close_soon("remote_bye", bye=False)
        elif method == "INVITE":
            self._reinvite(call, request, tx)
        elif method == "OPTIONS":
            tx.respond(self._options_ok(request, call))
        elif method == "INFO":
            self._info(call, request, tx)
        elif method in self.methods:
            self.methods[method](call, request, tx)
        elif method == "REFER":
            self._refer_in(call, request, tx)
        else:
            tx.respond(call.dialog.response(request, 405, extra=[
                *self.server_headers(), ("Allow", self.allow())]))

    def _refer_in(self, call: SipCall | None, request: SipRequest,
                  tx: ServerTransaction) -> None:
        """A REFER asking us to call its Refer-To (RFC 3515): never acted on. A target the
        policy does not allow is refused 403 and counted (a toll-fraud probe); an allowed
        one 501, as we do not place calls for others."""
        def answer(status: int, reason: str | None = None) -> None:
            extra = self.server_headers()
            tx.respond(call.dialog.response(request, status, reason, extra=extra)
                       if call is not None else self._response(request, status, reason))

        value = request.header("Refer-To")
        try:
            uri = Address.parse(value).uri if value else None
        except SipParseError:
            uri = None
        if uri is None:
            answer(400, "Bad Refer-To")
            return
        if self.targets is None or not self.targets.allowed_target(uri):
            self.metrics.sip_targets_refused_total.labels("refer").inc()
            log.warning("REFER %s to %s refused: not an allowed target", request.call_id,
                        str(uri)[:80])
            answer(403, "Transfer Target Not Allowed")
            return
        answer(501, "Transfers Not Taken")

    def _options_ok(self, request: SipRequest, call: SipCall | None) -> SipResponse:
        extra = [*self.server_headers(allow=True), ("Accept", "application/sdp")]
        if call is not None:
            return call.dialog.response(request, 200, extra=extra)
        return make_response(request, 200, extra=extra)

    def _trusted(self, source: Source) -> bool:
        try:
            address = ipaddress.ip_address(source.remote[0])
        except ValueError:
            return False
        return any(address in net for net in self._networks if net.version == address.version)

    def _authenticate(self, request: SipRequest, source: Source,
                      tx: ServerTransaction) -> str | None:
        """The digest user an INVITE from an untrusted source authenticates as; None once
        it has been answered: 401 without credentials for our realm or with a stale
        nonce, 403 for anything else. Never logs the password or the credentials."""
        digest = self._digest
        assert digest is not None
        now = self.clock.now()
        try:
            credentials = caller_credentials(request, digest.realm)
        except DigestError as exc:
            self._forbid(request, source, tx, f"malformed Authorization ({str(exc)[:60]})")
            return None
        if credentials is None:
            self._challenge(request, tx, digest, now, stale=False)
            log.debug("INVITE %s from %s:%d challenged", request.call_id, *source.remote)
            return None
        user = credentials.username
        if not names_request_uri(credentials, request):
            result = AuthResult.MISMATCH
        else:
            result = digest.verify(credentials, method=request.method, now=now,
                                   password=self.settings.callers.get(user))
        if result is AuthResult.OK:
            return user
        if result is AuthResult.STALE:
            self._challenge(request, tx, digest, now, stale=True)
            log.info("INVITE %s from %s:%d: stale nonce for %r, challenged again",
                     request.call_id, *source.remote, user[:64])
            return None
        self._forbid(request, source, tx, f"digest {result.value} for user {user[:64]!r}")
        return None

    def _challenge(self, request: SipRequest, tx: ServerTransaction, digest: DigestServer,
                   now: float, *, stale: bool) -> None:
        challenges = digest.challenges(now, stale=stale)
        self.metrics.calls_rejected_total.labels("sip", "unauthorized").inc()
        tx.respond(self._response(request, 401, extra=[
            ("WWW-Authenticate", str(c)) for c in challenges]))

    def _forbid(self, request: SipRequest, source: Source, tx: ServerTransaction,
                why: str) -> None:
        log.info("INVITE %s from %s:%d refused: %s", request.call_id, *source.remote, why)
        self.metrics.calls_rejected_total.labels("sip", "forbidden").inc()
        tx.respond(self._response(request, 403))

    # -- INVITE ------------------------------------------------------------------------------

    def _invite(self, request: SipRequest, source: Source, tx: InviteServerTransaction,
                caller: str | None = None) -> None:
        local_tag = new_tag()
        try:
            dialog = Dialog.from_request(request, source, local_tag=local_tag,
                                         local_contact=self.contact_for(source))
        except DialogError as exc:
            self.metrics.calls_rejected_total.labels("sip", "bad_request").inc()
            tx.respond(make_response(request, exc.status, exc.reason, to_tag=local_tag))
            return
        p = PendingInvite(tx, request, source, dialog, caller=caller)
        refusal = self._admission(request)
        if refusal is not None:
            extra = [*self.server_headers()]
            if refusal.retry_after is not None:
                extra.append(("Retry-After", refusal.retry_after))
            if refusal.status == 420:
                extra.append(("Unsupported", ", ".join(request.headers.get_tokens("Require"))))
            self.metrics.calls_rejected_total.labels("sip", refusal.metric).inc()
            log.info("INVITE %s from %s:%d refused: %d %s", request.call_id, *source.remote,
                     refusal.status, refusal.reason)
            tx.respond(dialog.response(request, refusal.status, extra=extra))
            return
        self._pending[tx] = p
        p.task = asyncio.get_running_loop().create_task(
            answer_invite(self, p), name=f"invite-{request.call_id}")

    def _admission(self, request: SipRequest) -> CallRefused | None:
        retry = self.settings.retry_after
        if not self.accepting:
            return CallRefused(503, "Service Unavailable", "shutdown", retry)
        if self.full:
            status = self.settings.limit_status
            return CallRefused(status, "Busy", "busy", retry if status == 503 else None)
        required = request.headers.get_tokens("Require")
        if required:
            return CallRefused(420, f"Bad Extension: {', '.join(required)[:80]}", "bad_request")
        return None

    def new_call(self, p: PendingInvite, info: CallInfo, handler: CallHandler,
                 sdp: SdpSession) -> SipCall:
        """Called by answer_invite just before the 200 OK goes out."""
        assert p.media is not None
        call = SipCall(info=info, dialog=p.dialog, media=p.media,
                       handler=handler, transactions=self.transactions, clock=self.clock,
                       metrics=self.metrics, on_closed=self._call_closed)
        call.sdp = sdp
        call.targets = self.targets
        self.calls[p.dialog.id] = call
        if p.source.reliable:  # TCP or TLS: keep the connection for our BYE
            self._hold(p.source.connection, True)
        self.metrics.calls_active.labels("sip").inc()
        return call

    def pending_done(self, p: PendingInvite) -> None:
        self._pending.pop(p.tx, None)

    def _call_closed(self, call: SipCall) -> None:
        self.calls.pop(call.dialog.id, None)
        if call.dialog.transport != "udp":
            self._hold(call.dialog.connection, False)

    def _hold(self, connection: int | None, hold: bool) -> None:
        sender = self.transactions.transport
        method = getattr(sender, "hold" if hold else "release", None)
        if method is not None:
            method(connection)

    def _cancel(self, tx: ServerTransaction) -> None:
        target = tx.cancel_target
        if target is None:
            tx.respond(self._response(tx.request, 481))
            return
        tx.respond(self._response(tx.request, 200))
        p = self._pending.pop(target, None)
        if p is None or target.last_response is None or target.last_response.status >= 200:
            return  # already answered: the CANCEL changes nothing (RFC 3261 9.2)
        if p.task is not None:
            p.task.cancel()
        target.respond(p.dialog.response(p.request, 487, extra=self.server_headers()))
        self.metrics.calls_rejected_total.labels("sip", "cancelled").inc()
        log.info("INVITE %s cancelled by the caller", p.request.call_id)

    def _ack(self, ack: SipRequest) -> None:
        call = self.calls.get((ack.call_id, ack.to_addr.tag or "", ack.from_addr.tag or ""))
        if call is None:
            return  # late, or for a dialog already gone: nothing to answer
        first = call.acked(ack.cseq.seq)
        if first or (call.reanswer is not None and call.reanswer[0] == ack.cseq.seq):
            apply_ack(call, ack)

    def _reinvite(self, call: SipCall, request: SipRequest, tx: ServerTransaction) -> None:
        if call.reinvite_busy:  # RFC 3261 14.2: an earlier re-INVITE is still pending
            tx.respond(call.dialog.response(request, 500, extra=[
                *self.server_headers(), ("Retry-After", retry_after_jitter())]))
            return
        if call.awaiting_ack or (call.sdp is not None and call.sdp.offer_pending):
            tx.respond(call.dialog.response(request, 491, extra=self.server_headers()))
            return
        call.reinvite_busy = True

        async def run() -> None:
            try:
                await reinvite(self, call, tx, request)
            except Exception:
                log.exception("call %s: re-INVITE failed", call.info.call_id)
                if tx.last_response is None or tx.last_response.status < 200:
                    tx.respond(call.dialog.response(request, 500, extra=self.server_headers()))
            finally:
                call.reinvite_busy = False

        task = asyncio.get_running_loop().create_task(run(), name=f"reinvite-{call.info.call_id}")
        call.tasks.add(task)
        task.add_done_callback(call.tasks.discard)

    def _info(self, call: SipCall, request: SipRequest, tx: ServerTransaction) -> None:
        extra = self.server_headers()
        if not request.body.strip():
            tx.respond(call.dialog.response(request, 200, extra=extra))  # an INFO keepalive
            return
        ctype = request.content_type
        mime = ctype.mime if ctype is not None else ""
        if mime not in DTMF_TYPES:
            tx.respond(call.dialog.response(request, 415, extra=[
                *extra, ("Accept", ", ".join(DTMF_TYPES))]))
            return
        digit = parse_dtmf_relay(request.body, mime)
        if digit is None:
            tx.respond(call.dialog.response(request, 400, "Bad DTMF signal", extra=extra))
            return
        tx.respond(call.dialog.response(request, 200, extra=extra))
        call.dtmf_from_info(digit)

    # -- shutdown ----------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """New calls and OPTIONS probes get 503 from now on; calls in progress go on."""
        self.accepting = False

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stop taking calls, refuse INVITEs still ringing, BYE every call, bounded."""
        self.stop_accepting()
        for p in list(self._pending.values()):
            if p.task is not None and not p.task.done():
                p.task.cancel()
                if p.tx.last_response is None or p.tx.last_response.status < 200:
                    p.tx.respond(p.dialog.response(p.request, 503, extra=[
                        *self.server_headers(), ("Retry-After", self.settings.retry_after)]))
        self._pending.clear()
        calls = list(self.calls.values())
        if calls:
            log.info("hanging up %d SIP calls", len(calls))
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*(c.close("shutdown", bye=True) for c in calls),
                                         return_exceptions=True)
            except TimeoutError:
                log.warning("%d SIP calls still closing after %.0f s", len(self.calls), timeout)
        self.transactions.close()
