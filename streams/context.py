"""StreamContext: what every stream door shares in one process.

The pacer, clock and metrics; the factory that gives each new call its handler; the
limits (concurrent streams, message size, idle timeout); and the table of live legs,
for admission and for a bounded shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from media.clock import Clock
from media.pacer import Pacer
from pipeline.leg import CallHandler, CallInfo
from pipeline.metrics import Metrics

if TYPE_CHECKING:
    from streams.leg import StreamLeg

__all__ = ["REFUSALS", "HandlerFactory", "StreamContext"]

log = logging.getLogger(__name__)

# calls_rejected_total{reason}: a bounded set.
REFUSALS = frozenset({
    "busy", "forbidden", "unavailable", "bad_request", "timeout", "shutdown", "protocol_error",
    "no_route",  # the dialplan has no agent for the call
})
HandlerFactory = Callable[[CallInfo], CallHandler]
T = TypeVar("T")


class StreamContext:
    """The process-wide side of the stream doors. `pacer` may be set later (at start)."""

    def __init__(
        self,
        *,
        handler_factory: HandlerFactory,
        metrics: Metrics,
        clock: Clock,
        pacer: Pacer | None = None,
        max_streams: int = 200,
        idle_timeout: float = 10.0,
        max_message_bytes: int = 65536,
        close_timeout: float = 5.0,
    ) -> None:
        self.handler_factory = handler_factory
        self.metrics = metrics
        self.clock = clock
        self.pacer = pacer
        self.max_streams = max_streams
        self.idle_timeout = idle_timeout
        self.max_message_bytes = max_message_bytes
        self.close_timeout = close_timeout
        self.accepting = True
        self.connections = 0  # admitted sockets, with or without a leg yet
        self.legs: set[StreamLeg] = set()

    @property
    def ready(self) -> bool:
        return self.accepting and self.pacer is not None

    def enter(self, transport: str) -> str | None:
        """Admit one more stream, or say why not (and count the refusal)."""
        reason = None
        if not self.ready:
            reason = "shutdown"
        elif self.connections >= self.max_streams:
            reason = "busy"
        if reason is not None:
            self.refused(transport, reason)
            return reason
        self.connections += 1
        return None

    def leave(self) -> None:
        self.connections -= 1

    def refused(self, transport: str, reason: str) -> None:
        label = reason if reason in REFUSALS else "unavailable"
        self.metrics.calls_rejected_total.labels(transport, label).inc()

    def invalid(self, transport: str, reason: str) -> None:
        self.metrics.stream_messages_invalid_total.labels(transport, reason).inc()

    def handler_for(self, info: CallInfo) -> CallHandler | str:
        """The factory's handler, or the refusal reason when it refuses (e.g. the app's
        CallRefused: its `metric` names the reason)."""
        try:
            return self.handler_factory(info)
        except Exception as exc:
            reason = getattr(exc, "metric", "unavailable")
            reason = reason if reason in REFUSALS else "unavailable"
            log.warning("%s stream %s refused: %s", info.transport, info.call_id, exc)
            self.refused(info.transport, reason)
            return reason

    async def within_idle(self, awaitable: Awaitable[T]) -> T:
        """`awaitable`, or TimeoutError once idle_timeout has passed on our clock (so tests
        drive it with a ManualClock)."""
        work = asyncio.ensure_future(awaitable)
        timer = asyncio.ensure_future(self.clock.sleep_until(self.clock.now() + self.idle_timeout))
        try:
            await asyncio.wait((work, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not work.done():
                work.cancel()
        if work.cancelled() or not work.done():
            raise TimeoutError(f"nothing within {self.idle_timeout:.1f} s")
        return work.result()

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Refuse new streams and close the live ones (bounded)."""
        self.accepting = False
        legs = list(self.legs)
        if not legs:
            return
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(leg.close("shutdown") for leg in legs))
        except TimeoutError:
            log.warning("%d streams still closing after %.1f s", len(self.legs), timeout)
