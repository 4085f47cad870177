"""Blind transfer with REFER (RFC 3515), as the transferor.

We send REFER in the call's dialog with Refer-To (the new target) and Referred-By; the
far end answers 202 Accepted and then reports how its INVITE to the target goes in
NOTIFYs whose message/sipfrag bodies are status lines ("SIP/2.0 100 Trying" ...
"SIP/2.0 200 OK"). We answer every NOTIFY 200. A 2xx sipfrag means the far end is now
talking to the target: we hang up our leg with BYE. A final failure, a refused REFER, a
subscription that ends without a final status, or no final status in time raises
ReferError (a pipeline.leg.TransferError) with the status when there is one.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from media.clock import Clock
from pipeline.leg import TransferError
from pipeline.metrics import Metrics
from sip.dialog import Dialog
from sip.grammar import SipParseError
from sip.headers import Address
from sip.message import SipRequest, make_response
from sip.policy import TargetPolicy, target_uri
from sip.registration import DigestClient, uac_metrics, with_deadline
from sip.transaction import ServerTransaction, TransactionError, TransactionLayer
from sip.uri import Uri

if TYPE_CHECKING:
    from sip.call import SipCall

__all__ = ["ReferError", "SipFrag", "SipFragError", "Transfer", "TransferNotAllowed",
           "is_refer_event", "on_notify", "refer_to", "transfer_call"]

log = logging.getLogger(__name__)
_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9])(?: (.*))?")
_NUMBER = re.compile(r"\+?[0-9*#]{1,32}")


class ReferError(TransferError):
    """The transfer failed. `status`: the REFER's or the sipfrag's final status, if any."""

    def __init__(self, message: str, status: int | None = None, outcome: str = "failed") -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome  # transfers_total label


class TransferNotAllowed(ReferError):
    """The target is not one we may transfer to (sip.policy): no REFER was sent."""


class SipFragError(ValueError):
    """A NOTIFY body that is not a message/sipfrag status line."""


@dataclass(frozen=True, slots=True)
class SipFrag:
    """The status line of a message/sipfrag body (RFC 3420) in a refer NOTIFY."""

    status: int
    reason: str = ""

    @classmethod
    def parse(cls, body: bytes) -> SipFrag:
        line = body.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace").strip()
        match = _STATUS_LINE.fullmatch(line)
        if match is None:
            raise SipFragError(f"not a SIP status line: {line[:60]!r}")
        return cls(int(match.group(1)), (match.group(2) or "").strip())

    def __bytes__(self) -> bytes:
        return f"SIP/2.0 {self.status} {self.reason}".rstrip().encode() + b"\r\n"

    @property
    def final(self) -> bool:
        return self.status >= 200


def refer_to(target: str, dialog: Dialog) -> Address:
    """The Refer-To for `target`: a SIP URI as given, or a number at the far end's domain
    (it places the call, so its own routing applies)."""
    text = target.strip()
    if text.lower().startswith("tel:"):
        text = text[4:].split(";")[0].replace("-", "")
    if _NUMBER.fullmatch(text):
        host = dialog.remote_uri.uri.host_port or dialog.remote_target.host_port
        return Address(Uri.parse(f"sip:{text}@{host}"))
    try:
        uri = Uri.parse(text)
    except SipParseError as exc:
        raise ReferError(f"cannot transfer to {target[:80]!r}: {exc.reason}",
                         outcome="refused") from None
    if not uri.is_sip or not uri.host:
        raise ReferError(f"cannot transfer to {target[:80]!r}: not a sip: URI or a number",
                         outcome="refused")
    return Address(uri)


def _subscription_terminated(value: str | None) -> bool:
    return value is not None and value.split(";")[0].strip().lower() == "terminated"


class Transfer:
    """One REFER on one dialog, from the request to the final NOTIFY."""

    def __init__(self, dialog: Dialog, transactions: TransactionLayer, clock: Clock, *,
                 metrics: Metrics, auth: DigestClient | None = None, timeout: float = 32.0,
                 user_agent: str = "Switchboard") -> None:
        self.dialog = dialog
        self._tx = transactions
        self._clock = clock
        self._metrics = uac_metrics(metrics)
        self._auth = auth
        self.timeout = timeout
        self.user_agent = user_agent
        self.progress: list[int] = []  # sipfrag statuses in the order they came
        self.refer_status: int | None = None
        self._final: asyncio.Future[SipFrag] = asyncio.get_running_loop().create_future()

    async def run(self, target: str, referred_by: Address | None = None) -> SipFrag:
        """Send the REFER and wait for the outcome. Returns the final 2xx sipfrag."""
        try:
            frag = await self._run(target, referred_by)
        except ReferError as exc:
            self._metrics.transfers_total.labels(exc.outcome).inc()
            log.info("call %s: transfer to %s failed: %s", self.dialog.call_id, target, exc)
            raise
        self._metrics.transfers_total.labels("ok").inc()
        return frag

    async def _run(self, target: str, referred_by: Address | None) -> SipFrag:
        deadline = self._clock.now() + self.timeout
        dialog = self.dialog
        identity = referred_by or dialog.local_uri
        request = dialog.create_request("REFER", extra=[
            ("Refer-To", refer_to(target, dialog)), ("Referred-By", identity),
            ("User-Agent", self.user_agent)])
        for _ in range(3):  # the REFER, then a 401 and/or a 407 answered
            try:
                response = await with_deadline(
                    self._clock, deadline, self._tx.request(request, dialog.next_hop()).result())
            except TimeoutError:
                raise ReferError("no answer to the REFER", 408, "timeout") from None
            except TransactionError as exc:
                raise ReferError(f"REFER not answered: {exc}", 408, "timeout") from None
            status = self.refer_status = response.status
            if 200 <= status < 300:
                break
            retried = self._auth.answer(request, response) if self._auth is not None and \
                status in (401, 407) else None
            if retried is None:
                raise ReferError(f"REFER refused: {status} {response.reason}", status, "refused")
            dialog.local_cseq = max(dialog.local_cseq, retried.cseq.seq)
            request = retried
        else:
            raise ReferError("REFER challenged too often", self.refer_status, "refused")
        try:
            frag = await with_deadline(self._clock, deadline, asyncio.shield(self._final))
        except TimeoutError:
            last = self.progress[-1] if self.progress else None
            raise ReferError(f"no final NOTIFY within {self.timeout:g} s (last {last})", None,
                             "timeout") from None
        if 200 <= frag.status < 300:
            return frag
        raise ReferError(f"the transfer target answered {frag.status} {frag.reason}".rstrip(),
                         frag.status, "failed")

    def notify(self, request: SipRequest, tx: ServerTransaction) -> None:
        """A NOTIFY in our dialog with Event: refer. Always answered 200 (RFC 6665 4.1.3:
        we keep the subscription; a bad body is ignored, not refused)."""
        tx.respond(self.dialog.response(request, 200, extra=[("User-Agent", self.user_agent)]))
        frag: SipFrag | None = None
        ctype = request.content_type
        if ctype is not None and ctype.mime == "message/sipfrag" and request.body.strip():
            try:
                frag = SipFrag.parse(request.body)
            except SipFragError as exc:
                log.info("call %s: NOTIFY with a bad sipfrag: %s", self.dialog.call_id, exc)
        if frag is not None:
            self.progress.append(frag.status)
            if frag.final and not self._final.done():
                self._final.set_result(frag)
        if _subscription_terminated(request.header("Subscription-State")) \
                and not self._final.done():
            self._final.set_exception(ReferError(
                "the transfer subscription ended without a final status", None, "failed"))
            self._final.exception()  # retrieved here: run() may already have given up


def is_refer_event(value: str | None) -> bool:
    return value is not None and value.split(";")[0].strip().lower() == "refer"


def on_notify(call: SipCall | None, request: SipRequest, tx: ServerTransaction) -> None:
    """The endpoint's NOTIFY handler (endpoint.register_method("NOTIFY", on_notify))."""
    if call is None:
        tx.respond(make_response(request, 481))
    elif not is_refer_event(request.header("Event")):
        tx.respond(call.dialog.response(request, 489, "Bad Event"))
    elif call.refer is None:
        tx.respond(call.dialog.response(request, 481, "No Such Subscription"))
    else:
        call.refer.notify(request, tx)


async def transfer_call(call: SipCall, target: str, *, transactions: TransactionLayer,
                        clock: Clock, metrics: Metrics, timeout: float = 32.0,
                        auth: DigestClient | None = None,
                        policy: TargetPolicy | None = None) -> None:
    """SipCall.transfer: REFER, wait for the outcome, then BYE our leg ("transfer").
    While it runs `call.refer` is the Transfer, which on_notify feeds. With a policy, a
    target it does not allow raises TransferNotAllowed before anything is sent."""
    if not call.active:
        raise ReferError("the call has already ended", outcome="refused")
    if policy is not None:
        uri = target_uri(target)
        if uri is not None and not policy.allowed_target(uri):
            metrics.sip_targets_refused_total.labels("transfer").inc()
            uac_metrics(metrics).transfers_total.labels("refused").inc()
            log.warning("call %s: transfer to %s refused: not an allowed target",
                        call.info.call_id, str(uri)[:80])
            raise TransferNotAllowed(f"transfers to {target[:80]!r} are not allowed "
                                     "(sip.targets)", outcome="refused")
    if call.refer is not None:
        raise ReferError("a transfer is already in progress", outcome="refused")
    transfer = Transfer(call.dialog, transactions, clock, metrics=metrics, auth=auth,
                        timeout=timeout)
    call.refer = transfer
    try:
        await transfer.run(target)
    finally:
        call.refer = None
    log.info("call %s transferred to %s", call.info.call_id, target)
    await call.close("transfer", bye=True)
