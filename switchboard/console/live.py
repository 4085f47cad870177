"""The calls up right now, for the console's Watch page (GET /console/api/calls).

Switchboard.handler_for wraps every call's handler in a LiveHandler, whatever the door,
the same way the call recorder does: the call is listed from the moment its handler is
made ("ringing"), follows the conversation's state (listening / thinking / speaking /
ending) from its call log once answered, and leaves the list when the door closes it.
Nothing is added per audio frame: after on_start the door calls the agent straight.

A handler that was made but whose call neither started nor ended (a CANCEL while
ringing) is dropped after `abandon_s`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from media.clock import Clock
from pipeline.leg import CallHandler, CallInfo, CallLeg

__all__ = ["ActiveCalls", "LiveCall", "LiveHandler"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LiveCall:
    info: CallInfo
    agent: str
    created: float  # our clock
    started_at: float  # wall clock, for people
    answered: float | None = None  # our clock
    state: str = "ringing"
    turns: int = 0
    last_caller: str = ""
    last_agent: str = ""
    unsubscribe: Callable[[], None] | None = field(default=None, repr=False)

    def on_event(self, entry: dict[str, Any]) -> None:
        kind = entry.get("event")
        if kind == "state":
            state = entry.get("state")
            if isinstance(state, str):
                self.state = state
        elif kind == "caller_said":
            self.last_caller = str(entry.get("text") or "")
        elif kind == "turn":
            self.turns += 1
            self.last_agent = str(entry.get("heard") or entry.get("answer") or "")
        elif kind == "ending":
            self.state = "ending"

    def summary(self, now: float) -> dict[str, Any]:
        i = self.info
        since = self.answered if self.answered is not None else self.created
        return {
            "call_id": i.call_id, "transport": i.transport, "caller": i.caller,
            "callee": i.callee, "agent": self.agent, "state": self.state,
            "started_at": self.started_at, "duration_s": round(max(0.0, now - since), 1),
            "answered": self.answered is not None, "turns": self.turns,
            "last_caller": self.last_caller, "last_agent": self.last_agent,
        }


class LiveHandler:
    """The CallHandler a door gets: the agent's handler, listed while the call is up."""

    def __init__(self, inner: CallHandler, calls: ActiveCalls, call: LiveCall) -> None:
        self.inner = inner
        self._calls = calls
        self._call = call

    def __getattr__(self, name: str) -> Any:  # the agent's own attributes (calllog, state)
        if name == "inner":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def on_start(self, leg: CallLeg) -> None:
        call = self._call
        call.answered = self._calls.clock.now()
        call.state = "listening"
        await self.inner.on_start(leg)
        # From now on the door calls the agent straight: nothing added per frame.
        self.on_frame = self.inner.on_frame  # type: ignore[method-assign]
        self.on_mark = self.inner.on_mark  # type: ignore[method-assign]
        calllog = getattr(self.inner, "calllog", None)
        subscribe = getattr(calllog, "subscribe", None)
        if subscribe is not None:
            call.unsubscribe = subscribe(call.on_event, replay=True)
        state = getattr(getattr(self.inner, "state", None), "value", None)
        if isinstance(state, str):
            call.state = state

    def on_frame(self, pcm: bytes) -> None:
        self.inner.on_frame(pcm)

    def on_dtmf(self, digit: str) -> None:
        self.inner.on_dtmf(digit)

    def on_mark(self, mark: str, played: bool) -> None:
        self.inner.on_mark(mark, played)

    async def on_end(self, reason: str) -> None:
        try:
            await self.inner.on_end(reason)
        finally:
            self._calls.remove(self._call)

    def call_closed(self, reason: str) -> None:
        """The door's last word on the call, answered or not (sip.call, streams.leg)."""
        self._calls.remove(self._call)
        closed = getattr(self.inner, "call_closed", None)
        if closed is not None:
            closed(reason)


class ActiveCalls:
    def __init__(self, clock: Clock, *, wall: Callable[[], float] = time.time,
                 abandon_s: float = 300.0) -> None:
        self.clock = clock
        self.wall = wall
        self.abandon_s = abandon_s
        self._calls: dict[int, LiveCall] = {}  # by id(): a SIP Call-ID may come back

    def wrap(self, info: CallInfo, handler: CallHandler, agent: str) -> LiveHandler:
        call = LiveCall(info, agent, created=self.clock.now(), started_at=self.wall())
        self._calls[id(call)] = call
        return LiveHandler(handler, self, call)

    def remove(self, call: LiveCall) -> None:
        if self._calls.pop(id(call), None) is not None and call.unsubscribe is not None:
            call.unsubscribe()
            call.unsubscribe = None

    def __len__(self) -> int:
        return len(self._calls)

    def snapshot(self) -> list[dict[str, Any]]:
        """The calls up, oldest first (dropping those abandoned while ringing)."""
        now = self.clock.now()
        for call in list(self._calls.values()):
            if call.answered is None and now - call.created >= self.abandon_s:
                log.debug("call %s never started; no longer listed", call.info.call_id)
                self.remove(call)
        calls = sorted(self._calls.values(), key=lambda c: c.created)
        return [c.summary(now) for c in calls]
