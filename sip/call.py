"""SipCall: one answered SIP dialog as a pipeline.leg.CallLeg over its RtpSession.

It owns the handler's life: on_start once the ACK has come, frames/DTMF/marks from the
media after that, on_end exactly once. Every way a call ends (BYE either way, CANCEL,
no ACK, media timeout, a handler error, shutdown) goes through one idempotent
close(reason), bounded by a timeout: stop the 2xx retransmission, send BYE if asked,
detach and close the media, call on_end, count it, and tell the endpoint.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from media.clock import Clock
from pipeline.leg import CallHandler, CallInfo
from pipeline.metrics import Metrics
from sip.dialog import Dialog, DialogError, DialogState
from sip.policy import TargetPolicy
from sip.refer import Transfer, transfer_call
from sip.registration import DigestClient
from sip.rtp_session import MediaParams
from sip.sdp import SdpSession
from sip.transaction import AnswerRetransmitter, TransactionError, TransactionLayer

__all__ = ["OUTCOMES", "Media", "SipCall"]

log = logging.getLogger(__name__)

# calls_total{outcome}: a bounded set; anything else is counted as "error".
OUTCOMES = frozenset({
    "remote_bye", "hangup", "ack_timeout", "media_timeout", "shutdown", "handler_error",
    "transfer", "sdp_error",
})


class Media(Protocol):
    """What a call needs of its media (sip.rtp_session.RtpSession, or a test fake)."""

    on_frame: Callable[[bytes], None] | None
    on_dtmf: Callable[[str], None] | None
    on_mark: Callable[[str, bool], None] | None
    on_failure: Callable[[str], None] | None
    local_port: int

    @property
    def params(self) -> MediaParams: ...

    def update(self, params: MediaParams) -> None: ...

    def send_audio(self, pcm: bytes, rate: int, mark: str | None = None) -> None: ...

    def clear_audio(self) -> None: ...

    def queued_seconds(self) -> float: ...

    def send_dtmf(self, digits: str) -> None: ...

    def close(self) -> None: ...


class SipCall:
    """CallLeg for one dialog. Created by the endpoint when it sends the 200 OK."""

    def __init__(
        self,
        *,
        info: CallInfo,
        dialog: Dialog,
        media: Media,
        handler: CallHandler,
        transactions: TransactionLayer,
        clock: Clock,
        metrics: Metrics,
        on_closed: Callable[[SipCall], None] | None = None,
        close_timeout: float = 5.0,
    ) -> None:
        self.info = info
        self.dialog = dialog
        self.media = media
        self.handler = handler
        self._tx = transactions
        self._clock = clock
        self._metrics = metrics
        self._on_closed = on_closed
        self.close_timeout = close_timeout
        self.answer: AnswerRetransmitter | None = None
        self.sdp: SdpSession | None = None  # our side of offer/answer, set by the endpoint
        self.invite_cseq = dialog.remote_cseq
        self.reanswer: tuple[int, AnswerRetransmitter] | None = None  # re-INVITE 2xx
        self.reinvite_busy = False  # a re-INVITE has not had its final response yet
        self.tasks: set[asyncio.Task[None]] = set()  # helpers to cancel at close
        self.refer: Transfer | None = None  # a blind transfer in progress (sip.refer)
        self.auth: DigestClient | None = None  # credentials for challenged in-dialog requests
        self.targets: TargetPolicy | None = None  # who transfer() may REFER to (sip.policy)
        self.reason: str | None = None  # why it ended, once close() began
        self.started_at: float | None = None
        self._started = False
        self._start_task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        media.on_failure = self._media_failed

    # -- CallLeg ---------------------------------------------------------------------------

    def send_audio(self, pcm: bytes, rate: int, mark: str | None = None) -> None:
        if self.reason is None:
            self.media.send_audio(pcm, rate, mark)

    def clear_audio(self) -> None:
        self.media.clear_audio()

    def queued_seconds(self) -> float:
        return self.media.queued_seconds()

    def send_dtmf(self, digits: str) -> None:
        if self.reason is None:
            self.media.send_dtmf(digits)

    async def transfer(self, target: str) -> None:
        """Blind transfer with REFER; once the target has answered, our leg hangs up
        ("transfer"). Raises sip.refer.ReferError (a TransferError) with the status."""
        await transfer_call(self, target, transactions=self._tx, clock=self._clock,
                            metrics=self._metrics, auth=self.auth, policy=self.targets)

    async def hangup(self, reason: str = "hangup") -> None:
        """End the call from our side with a BYE. Idempotent."""
        await self.close(reason if reason in OUTCOMES else "hangup", bye=True)

    # -- life cycle ------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.reason is None

    @property
    def confirmed(self) -> bool:
        return self.dialog.state is DialogState.CONFIRMED

    def answered(self, answer: AnswerRetransmitter) -> None:
        """The 200 OK went out; retransmit it until the ACK (or give up: BYE)."""
        self.answer = answer
        self.started_at = self._clock.now()

    def reanswered(self, cseq: int, answer: AnswerRetransmitter) -> None:
        """The 200 to a re-INVITE went out; it too is retransmitted until its ACK."""
        if self.reanswer is not None:
            self.reanswer[1].stop()
        self.reanswer = (cseq, answer)

    @property
    def awaiting_ack(self) -> bool:
        """A 2xx of ours (initial or re-INVITE) has not been ACKed yet."""
        return any(rt is not None and rt.waiting
                   for rt in (self.answer, self.reanswer[1] if self.reanswer else None))

    def acked(self, cseq: int | None = None) -> bool:
        """The ACK of our 2xx arrived. Starts the handler the first time; False if the
        ACK was a retransmission, came too late, or acknowledged a re-INVITE."""
        if self.reanswer is not None and cseq == self.reanswer[0]:
            self.reanswer[1].ack()
            return False
        if self.answer is not None:
            self.answer.ack()
        if self.reason is not None or self.dialog.state is DialogState.CONFIRMED:
            return False
        self.dialog.state = DialogState.CONFIRMED
        self._start_task = asyncio.get_running_loop().create_task(
            self._start(), name=f"call-start-{self.info.call_id}")
        return True

    def ack_timed_out(self) -> None:
        """RFC 3261 13.3.1.4: no ACK within 64*T1; the session is over, end it with BYE."""
        self.close_soon("ack_timeout", bye=True)

    async def _start(self) -> None:
        try:
            await self.handler.on_start(self)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call %s: handler on_start failed", self.info.call_id)
            self.close_soon("handler_error", bye=True)
            return
        self._started = True
        if self.reason is None:
            self.media.on_frame = self.handler.on_frame
            self.media.on_dtmf = self._dtmf
            self.media.on_mark = self.handler.on_mark

    def _dtmf(self, digit: str) -> None:
        if self.reason is None and self._started:
            log.info("call %s: DTMF %s (RFC 4733)", self.info.call_id, digit,
                     extra={"call_id": self.info.call_id})
            self.handler.on_dtmf(digit)

    def dtmf_from_info(self, digit: str) -> None:
        """A digit from SIP INFO (application/dtmf-relay)."""
        self._metrics.dtmf_digits_total.labels("sip", "info").inc()
        self._dtmf(digit)

    def _media_failed(self, reason: str) -> None:
        outcome = reason if reason in OUTCOMES else "handler_error"
        self.close_soon(outcome, bye=True)

    def close_soon(self, reason: str, *, bye: bool) -> None:
        """close() from a callback that cannot await."""
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(
                self._close(reason, bye), name=f"call-close-{self.info.call_id}")

    async def close(self, reason: str, *, bye: bool = False) -> None:
        """End the call. Idempotent: later calls wait for the first one to finish."""
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(
                self._close(reason, bye), name=f"call-close-{self.info.call_id}")
        await asyncio.shield(self._close_task)

    async def _close(self, reason: str, bye: bool) -> None:
        self.reason = reason
        log.info("call %s ending: %s", self.info.call_id, reason)
        try:
            async with asyncio.timeout(self.close_timeout):
                await self._teardown(reason, bye)
        except TimeoutError:
            log.warning("call %s: teardown took over %.1f s; abandoned", self.info.call_id,
                        self.close_timeout)
        finally:
            self._finish(reason)

    async def _teardown(self, reason: str, bye: bool) -> None:
        for rt in (self.answer, self.reanswer[1] if self.reanswer else None):
            if rt is not None:
                rt.stop()
        for task in self.tasks:
            task.cancel()
        for name in ("on_frame", "on_dtmf", "on_mark", "on_failure"):
            setattr(self.media, name, None)
        self.media.close()
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
        bye_tx = None
        if bye and self.dialog.state is not DialogState.TERMINATED:
            try:
                bye_tx = self._tx.request(self.dialog.create_request("BYE"),
                                          self.dialog.next_hop())
            except (DialogError, ValueError) as exc:
                log.warning("call %s: cannot send BYE: %s", self.info.call_id, exc)
        self.dialog.terminate()
        if self._started:
            try:
                await self.handler.on_end(reason)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("call %s: handler on_end failed", self.info.call_id)
        if bye_tx is not None:
            try:
                response = await bye_tx.result()
                log.debug("call %s: BYE answered %d", self.info.call_id, response.status)
            except TransactionError as exc:
                log.info("call %s: BYE got no answer: %s", self.info.call_id, exc)

    def _finish(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        m = self._metrics
        m.calls_active.labels("sip").dec()
        m.calls_total.labels("sip", reason if reason in OUTCOMES else "error").inc()
        if self.started_at is not None and self._started:
            m.call_duration_seconds.labels("sip").observe(self._clock.now() - self.started_at)
        if self._on_closed is not None:
            self._on_closed(self)
        # The app's call recorder (switchboard.records) wraps the handler; it hears of every
        # end here, also of calls whose handler never started (no ACK, on_start failed).
        closed = getattr(self.handler, "call_closed", None)
        if closed is not None:
            closed(reason)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def __repr__(self) -> str:
        state = self.reason or self.dialog.state.value
        return f"<SipCall {self.info.call_id} {state}>"
