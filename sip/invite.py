"""INVITE handling for the endpoint: a new call (offer/answer, media, ringing, 200 OK)
and re-INVITE in a dialog (hold/resume, codec change, glare), plus the SDP in an ACK.

The answer to a new INVITE is worked out once with a throwaway SdpSession before any
RTP port is taken, so a 488 costs nothing; the real SdpSession then uses the bound port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import secrets
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.leg import CallInfo
from sip.call import Media, SipCall
from sip.dialog import Dialog
from sip.digest import Credentials
from sip.message import SipRequest
from sip.ports import PortError
from sip.rtp_session import MediaParams
from sip.sdp import (
    MAX_SDP_BYTES,
    NegotiatedMedia,
    NoCommonCodec,
    SdpError,
    SdpSession,
    SessionDescription,
)
from sip.transaction import InviteServerTransaction, ServerTransaction
from sip.transport import Source
from sip.uri import Uri

if TYPE_CHECKING:
    from sip.endpoint import SipEndpoint

__all__ = ["CallRefused", "PendingInvite", "answer_invite", "apply_ack", "call_info",
           "caller_credentials", "media_params", "names_request_uri", "reinvite"]

log = logging.getLogger(__name__)

SDP = "application/sdp"
# SIP headers a dialplan may route on; kept in CallInfo.params (bounded, no bodies).
ROUTING_HEADERS = ("P-Asserted-Identity", "Diversion", "Remote-Party-ID", "User-Agent",
                   "Referred-By")


class CallRefused(Exception):
    """A call that must be refused, with the response to send and a metric reason.

    A handler factory raises it (e.g. the agent is not available: 503)."""

    def __init__(self, status: int, reason: str, metric: str = "unavailable",
                 retry_after: int | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.metric = metric
        self.retry_after = retry_after


@dataclass(slots=True)
class PendingInvite:
    """A new INVITE between its arrival and our final response."""

    tx: InviteServerTransaction
    request: SipRequest
    source: Source
    dialog: Dialog
    task: asyncio.Task[None] | None = None
    media: Media | None = None
    caller: str | None = None  # the digest user it authenticated as, if it had to


def call_info(request: SipRequest, source: Source, caller: str | None = None) -> CallInfo:
    params = {
        "request_uri": str(request.uri),
        "from": str(request.from_addr.uri),
        "to": str(request.to_addr.uri),
        "source": f"{source.transport}:{source.remote[0]}:{source.remote[1]}",
    }
    if caller is not None:
        params["auth_user"] = caller  # a dialplan may route on who authenticated
    for name in ROUTING_HEADERS:
        value = request.header(name)
        if value is not None:
            params[name.lower()] = value[:256]
    for name, value in request.headers:
        if name.lower().startswith("x-") and len(params) < 32:
            params[name.lower()] = value[:256]
    caller = request.from_addr.uri.user or request.from_addr.display_name or ""
    return CallInfo(request.call_id, "sip", caller, request.uri.user or "", params)


def caller_credentials(request: SipRequest, realm: str) -> Credentials | None:
    """The request's Digest credentials for `realm`, None without any (a line for another
    realm answers someone else's challenge). DigestError for a malformed line."""
    for value in request.headers.get_lines("Authorization"):
        credentials = Credentials.parse(value)
        if credentials.realm == realm:
            return credentials
    return None


def names_request_uri(credentials: Credentials, request: SipRequest) -> bool:
    """RFC 3261 22.4: the credentials' uri is the Request-URI, compared as URIs (so
    credentials answered for one target do not open another)."""
    try:
        return Uri.parse(credentials.uri) == request.uri
    except ValueError:
        return False


async def _resolve(host: str) -> str:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    if not infos:
        raise SdpError(f"cannot resolve the media address {host!r}")
    return str(infos[0][4][0])


async def media_params(neg: NegotiatedMedia) -> MediaParams:
    """RtpSession parameters from a negotiation (the c= address resolved, never sent to
    when it is 0.0.0.0). We always send 20 ms packets; a=ptime is only a preference."""
    host: str | None = neg.remote_address
    if host in ("0.0.0.0", "::"):
        host = None
    elif host is not None:
        try:
            host = await _resolve(host)
        except OSError as exc:
            raise SdpError(f"cannot resolve the media address {host!r}: {exc}") from None
    event = neg.telephone_event
    return MediaParams(
        remote_host=host,
        remote_port=neg.remote_port,
        codec=neg.codec.name,
        payload_type=neg.codec.payload_type,
        dtmf_payload_type=event.payload_type if event is not None else None,
        rtcp_port=neg.remote_rtcp_port,
        direction=neg.direction,
    )


def parse_body(request: SipRequest) -> SessionDescription | None:
    """The SDP of a request: None without a body; CallRefused 415 for anything else, 413
    for an SDP over MAX_SDP_BYTES."""
    if not request.body.strip():
        return None
    if len(request.body) > MAX_SDP_BYTES:
        raise CallRefused(413, "SDP Too Large", "too_large")
    ctype = request.content_type
    if ctype is None or ctype.mime != SDP:
        raise CallRefused(415, "Unsupported Media Type", "unsupported_media")
    encoding = request.header("Content-Encoding")
    if encoding and encoding.strip().lower() != "identity":
        raise CallRefused(415, "Unsupported Media Type", "unsupported_media")
    return SessionDescription.parse(request.body)


def _refuse(ep: SipEndpoint, p: PendingInvite, status: int, reason: str, metric: str,
            retry_after: int | None = None) -> None:
    extra: list[tuple[str, object]] = list(ep.server_headers())
    if status == 415:
        extra.append(("Accept", SDP))
    if retry_after is not None:
        extra.append(("Retry-After", retry_after))
    if status == 488:
        extra.append(("Warning", f'304 {ep.settings.user_agent} "{reason[:100]}"'))
    log.info("INVITE %s from %s:%d refused: %d %s", p.request.call_id, *p.source.remote,
             status, reason)
    p.tx.respond(p.dialog.response(p.request, status, None if status != 400 else reason,
                                   extra=extra))
    ep.metrics.calls_rejected_total.labels("sip", metric).inc()


async def answer_invite(ep: SipEndpoint, p: PendingInvite) -> None:
    """Negotiate, get a handler, open media, ring, answer. Runs as the pending INVITE's
    task; a CANCEL cancels it (the endpoint has already sent the 487)."""
    request = p.request
    try:
        address, session_id = ep.sdp_address(p.source), secrets.randbelow(2**31)
        probe = SdpSession(address, 0, session_id, ep.settings.codecs)
        try:
            offer = parse_body(request)
            if offer is not None:  # negotiated before any port is taken: 488 costs nothing
                params = await media_params(probe.receive_offer(offer)[1])
            else:
                codec = probe.create_offer().media[0].codecs()[0]
                params = MediaParams(None, 0, codec.name, codec.payload_type)
        except NoCommonCodec as exc:
            raise CallRefused(488, str(exc), "codec") from None
        except SdpError as exc:
            raise CallRefused(400, f"Bad SDP: {exc}", "bad_request") from None
        info = call_info(request, p.source, p.caller)
        handler = ep.handler_factory(info)  # may raise CallRefused
        opening = asyncio.ensure_future(ep.open_media(params))
        try:
            # Shielded: a CANCEL during the bind must not leak the port it took.
            p.media = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_opened)
            raise
        except (OSError, ValueError, PortError) as exc:
            log.warning("no media for INVITE %s: %s", request.call_id, exc)
            raise CallRefused(503, "Service Unavailable", "no_media", ep.settings.retry_after) \
                from None
        sdp = SdpSession(address, p.media.local_port, session_id, ep.settings.codecs)
        body = sdp.receive_offer(offer)[0] if offer is not None else sdp.create_offer()
        if ep.settings.ring_seconds > 0:
            p.tx.respond(p.dialog.response(request, 180, extra=ep.server_headers()))
            await ep.clock.sleep_until(ep.clock.now() + ep.settings.ring_seconds)
        if not ep.accepting:
            raise CallRefused(503, "Service Unavailable", "shutdown", ep.settings.retry_after)
        call = ep.new_call(p, info, handler, sdp)
        ok = p.dialog.response(request, 200, body=bytes(body), content_type=SDP,
                               extra=ep.server_headers(allow=True))
        p.tx.respond(ok)
        p.media = None  # the call owns it now
        call.answered(ep.transactions.retransmit_answer(ok, p.tx.target, call.ack_timed_out))
        log.info("call %s answered (%s %s:%d -> RTP %s)", request.call_id,
                 p.source.transport.upper(), *p.source.remote, params.codec)
    except CallRefused as refused:
        _refuse(ep, p, refused.status, refused.reason, refused.metric, refused.retry_after)
    except Exception:
        # A bug must still end the INVITE with an answer, not leave the caller hanging.
        log.exception("INVITE %s failed", request.call_id)
        if p.tx.last_response is None or p.tx.last_response.status < 200:
            _refuse(ep, p, 500, "Server Internal Error", "error")
    finally:
        if p.media is not None:
            p.media.close()
        ep.pending_done(p)


def _close_opened(opening: asyncio.Future[Media]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


def apply_ack(call: SipCall, ack: SipRequest) -> None:
    """An ACK may carry the answer to the offer we put in a 2xx (INVITE without SDP)."""
    sdp = call.sdp
    if sdp is None or not sdp.offer_pending:
        return
    if not ack.body.strip():
        log.info("call %s: ACK without the SDP answer to our offer", call.info.call_id)
        call.close_soon("sdp_error", bye=True)
        return
    try:
        neg = sdp.receive_answer(SessionDescription.parse(ack.body))
    except SdpError as exc:
        log.info("call %s: bad SDP answer in ACK: %s", call.info.call_id, exc)
        call.close_soon("sdp_error", bye=True)
        return
    task = asyncio.get_running_loop().create_task(_update_media(call, neg))
    call.tasks.add(task)
    task.add_done_callback(call.tasks.discard)


async def _update_media(call: SipCall, neg: NegotiatedMedia) -> None:
    try:
        params = await media_params(neg)
    except SdpError as exc:
        log.info("call %s: %s", call.info.call_id, exc)
        call.close_soon("sdp_error", bye=True)
        return
    if call.active:
        call.media.update(params)


async def reinvite(ep: SipEndpoint, call: SipCall, tx: ServerTransaction,
                   request: SipRequest) -> None:
    """A re-INVITE: answer its offer (or offer in the 200 when it has none), then apply
    the new media. A failed offer leaves the session as it was (RFC 3264 8)."""
    dialog = call.dialog
    extra = ep.server_headers()
    sdp = call.sdp
    assert sdp is not None
    try:
        offer = parse_body(request)
    except CallRefused as refused:
        tx.respond(dialog.response(request, refused.status, extra=[*extra, ("Accept", SDP)]))
        return
    except SdpError as exc:
        tx.respond(dialog.response(request, 400, f"Bad SDP: {exc}", extra=extra))
        return
    params = None
    try:
        if offer is not None:
            body, neg = sdp.receive_offer(offer)  # NoCommonCodec leaves `sdp` as it was
            params = await media_params(neg)
        else:
            body = sdp.create_offer()
    except NoCommonCodec as exc:
        tx.respond(dialog.response(request, 488, extra=[
            *extra, ("Warning", f'304 {ep.settings.user_agent} "{str(exc)[:100]}"')]))
        return
    except SdpError as exc:
        tx.respond(dialog.response(request, 488, extra=extra))
        log.info("call %s: re-INVITE refused: %s", call.info.call_id, exc)
        return
    if not call.active:
        tx.respond(dialog.response(request, 481, extra=extra))
        return
    ok = dialog.response(request, 200, body=bytes(body), content_type=SDP,
                         extra=ep.server_headers(allow=True))
    tx.respond(ok)
    call.reanswered(request.cseq.seq,
                    ep.transactions.retransmit_answer(ok, tx.target, call.ack_timed_out))
    if params is not None:
        call.media.update(params)
        log.info("call %s: re-INVITE, media now %s %s", call.info.call_id, params.codec,
                 params.direction)


def retry_after_jitter() -> int:
    """RFC 3261 14.2: 500 to an overlapping re-INVITE with Retry-After in 0..10 s."""
    return random.randint(0, 10)

