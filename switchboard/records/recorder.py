"""Following calls on the event loop and turning them into record writes.

The app's handler factory wraps every agent handler in a RecordedHandler, so every door
(SIP in and out, Twilio, FreeSWITCH, AudioSocket) is recorded the same way:

- the factory is called: the call row is written (start time, door, caller, callee,
  agent, the door's ids in params);
- on_start: the call was answered; from then on the door calls the agent's on_frame
  and on_mark straight, so recording costs nothing per frame;
- every `tick_s` the recorder reads what each conversation's CallLog has added: each
  completed turn is written as it completes (a crash keeps every turn up to the last),
  with the events around it (barge-ins, DTMF, errors, phrases);
- on_end, or the door's call_closed (which also covers calls that never got as far as
  on_start, e.g. no ACK): the end time, outcome (the door's reason), cause and summary.

A call whose handler was made but that never reached either (a CANCEL while ringing)
is closed as "not_answered" after `abandon_s`. Retention runs from the same tick: a
bounded purge every `purge_every_s`, again at once while a purge finds a full batch.
The same moments count the call metrics by agent (agentstats.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from media.clock import Clock
from pipeline.calllog import CallLog
from pipeline.leg import CallHandler, CallInfo, CallLeg
from pipeline.metrics import Metrics
from pipeline.record import redact_digits, redact_fields
from switchboard.config import RecordsConfig
from switchboard.records import check_backend, describe, open_store
from switchboard.records.agentstats import AgentCallStats, AgentLabels
from switchboard.records.store import (
    CallAnswered,
    CallEnded,
    CallQuery,
    CallStarted,
    EventsSaved,
    Purge,
    RecordStore,
    TurnSaved,
)
from switchboard.records.writer import RecordWriter

__all__ = ["CallRecording", "RecordedHandler", "Recorder"]

log = logging.getLogger("switchboard.records")

# Call-log events not kept: per-chunk and per-state noise (DEBUG level in the log), and
# "turn", which is stored as a turn of its own (with what caller_said and agent_said,
# the live console's events, told as it went).
_SKIPPED = frozenset({"mark", "state", "turn", "caller_said", "agent_said"})
_TURN_TEXT = ("transcript", "answer", "heard", "error")
_CALLER_ENDED = frozenset({"remote_bye", "remote_stop", "remote_hangup", "disconnect"})


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def hangup_cause(outcome: str, ending: str | None) -> str:
    """Why the call ended, finer than the door's outcome: the agent's reason when it
    ended the call (caller_goodbye, silence, max_duration), "caller" when the far end
    hung up, else the outcome itself (media_timeout, shutdown, handler_error, ...)."""
    if ending:
        return ending
    return "caller" if outcome in _CALLER_ENDED else outcome


class CallRecording:
    """One call's record in the making. Loop-owned; every write goes to the writer."""

    def __init__(self, recorder: Recorder, info: CallInfo, agent: str) -> None:
        self.recorder = recorder
        self.info = info
        self.uid = uuid.uuid4().hex
        self.created = recorder.clock.now()
        self.answered_at: float | None = None  # our clock
        self.ended = False
        self.calllog: CallLog | None = None
        self._cursor = 0  # call-log events already read
        self._own_seq = 0  # events we make ourselves (handlers without a call log)
        self._dtmf: list[str] = []
        self._barge_ins = self._errors = self._turns = 0
        self._ending: str | None = None
        self.stats = AgentCallStats(recorder.metrics, info.transport,
                                    recorder.agent_labels(agent))
        recorder.submit(CallStarted(
            uid=self.uid, call_id=info.call_id, transport=info.transport,
            direction=info.params.get("direction", "inbound"), caller=info.caller,
            callee=info.callee, agent=agent, node=recorder.node,
            started_at=recorder.wall(), params=_dumps(dict(info.params))))

    def answered(self) -> None:
        if self.answered_at is None and not self.ended:
            self.answered_at = self.recorder.clock.now()
            self.stats.answered()
            self.recorder.submit(CallAnswered(self.uid, self.recorder.wall()))

    def attach(self, calllog: CallLog | None) -> None:
        """The agent's call log (a conversation has one; the echo agent has none)."""
        self.calllog = calllog

    def dtmf(self, digit: str) -> None:
        if self.ended:
            return
        self._dtmf.append(digit)
        if self.calllog is None:  # a conversation logs its digits itself
            t = self.recorder.clock.now() - (self.answered_at or self.created)
            row = (self._own_seq, round(t, 4), "dtmf", _dumps({"digit": self._mask(digit)}))
            self._own_seq += 1
            self.recorder.submit(EventsSaved(self.uid, (row,)))

    def collect(self) -> None:
        """Write what the call log has added since the last look."""
        log_ = self.calllog
        if log_ is None or len(log_.events) <= self._cursor:
            return
        start, new = self._cursor, log_.events[self._cursor:]
        self._cursor += len(new)
        rows = []
        for seq, event in enumerate(new, start):
            kind = str(event.get("event", ""))
            if kind == "turn":
                self._save_turn(event)
            elif kind == "barge_in":
                self._barge_ins += 1
            elif kind == "error":
                self._errors += 1
            elif kind == "ending":
                self._ending = str(event.get("reason") or "") or None
            if kind in _SKIPPED:
                continue
            fields = {k: v for k, v in event.items() if k not in ("t", "event")}
            rows.append((seq, float(event.get("t", 0.0)), kind, _dumps(self._redact(kind,
                                                                                   fields))))
        if rows:
            self.recorder.submit(EventsSaved(self.uid, tuple(rows)))

    def _save_turn(self, event: dict[str, Any]) -> None:
        data = {k: v for k, v in event.items() if k != "event"}
        if self.recorder.config.redact_digits:
            data = redact_fields(data, _TURN_TEXT)
        index = int(data.get("index", self._turns + 1))
        self._turns = max(self._turns, index)
        self.recorder.submit(TurnSaved(self.uid, index, _dumps(data)))

    def _redact(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        if not self.recorder.config.redact_digits:
            return fields
        if kind == "dtmf":
            return {**fields, "digit": self._mask(str(fields.get("digit", "")))}
        return {k: redact_digits(v) if isinstance(v, str) else v for k, v in fields.items()}

    def _mask(self, digit: str) -> str:
        """Keypad digits are card numbers and PINs as often as menu choices."""
        return "x" if self.recorder.config.redact_digits and digit.isdigit() else digit

    def end(self, outcome: str) -> None:
        if self.ended:
            return
        self.collect()
        self.ended = True
        self.stats.ended(outcome, None if self.answered_at is None
                         else self.recorder.clock.now() - self.answered_at)
        summary = {"dtmf": "".join(self._mask(d) for d in self._dtmf),
                   "barge_ins": self._barge_ins, "errors": self._errors}
        self.recorder.submit(CallEnded(
            uid=self.uid, ended_at=self.recorder.wall(), outcome=outcome,
            cause=hangup_cause(outcome, self._ending), turns=self._turns,
            summary=_dumps(summary)))
        self.recorder.live.pop(self.uid, None)


class RecordedHandler:
    """The CallHandler a door gets: the agent's handler, with the recording beside it."""

    def __init__(self, inner: CallHandler, recording: CallRecording) -> None:
        self.inner = inner
        self.recording = recording

    def __getattr__(self, name: str) -> Any:  # the agent's own attributes (tests, dial)
        if name == "inner":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def on_start(self, leg: CallLeg) -> None:
        self.recording.answered()
        await self.inner.on_start(leg)
        # From now on the door calls the agent straight: nothing added per frame.
        self.on_frame = self.inner.on_frame  # type: ignore[method-assign]
        self.on_mark = self.inner.on_mark  # type: ignore[method-assign]
        self.recording.attach(getattr(self.inner, "calllog", None))

    def on_frame(self, pcm: bytes) -> None:
        self.inner.on_frame(pcm)

    def on_dtmf(self, digit: str) -> None:
        self.recording.dtmf(digit)
        self.inner.on_dtmf(digit)

    def on_mark(self, mark: str, played: bool) -> None:
        self.inner.on_mark(mark, played)

    async def on_end(self, reason: str) -> None:
        try:
            await self.inner.on_end(reason)
        finally:
            self.recording.end(reason)

    def call_closed(self, reason: str) -> None:
        """The door's last word on the call, answered or not (sip.call, streams.leg)."""
        self.recording.end(reason)


class Recorder:
    def __init__(
        self,
        config: RecordsConfig,
        *,
        agent: str,
        metrics: Metrics,
        clock: Clock,
        wall: Callable[[], float] = time.time,
        open_writer_store: Callable[[], RecordStore] | None = None,
        tick_s: float = 0.5,
        abandon_s: float = 300.0,
        purge_every_s: float = 600.0,
        purge_limit: int = 1000,
    ) -> None:
        check_backend(config)  # ConfigError now, not at the first call
        self.config = config
        self.agent = agent
        self.metrics = metrics  # the agent-labelled call metrics (agentstats)
        self.agent_labels = AgentLabels()
        self.clock = clock
        self.wall = wall
        self.node = f"{socket.gethostname()}:{os.getpid()}"
        spill = Path(config.path + ".unsaved.jsonl") if config.backend == "sqlite" else None
        self.writer = RecordWriter(open_writer_store or (lambda: open_store(config)),
                                   metrics=metrics, spill_path=spill)
        self.live: dict[str, CallRecording] = {}
        self.tick_s, self.abandon_s = tick_s, abandon_s
        self.purge_every_s, self.purge_limit = purge_every_s, purge_limit
        self._next_purge = 0.0
        self._task: asyncio.Task[None] | None = None

    # -- calls --------------------------------------------------------------------------

    def wrap(self, info: CallInfo, handler: CallHandler, agent: str | None = None
             ) -> RecordedHandler:
        recording = CallRecording(self, info, agent or self.agent)
        self.live[recording.uid] = recording
        return RecordedHandler(handler, recording)

    def submit(self, op: Any) -> None:
        self.writer.submit(op)

    def tick(self) -> None:
        """Collect new turns and events, close abandoned calls, purge when due."""
        now = self.clock.now()
        for rec in list(self.live.values()):
            rec.collect()
            if rec.answered_at is None and now - rec.created >= self.abandon_s:
                rec.end("not_answered")
        if now >= self._next_purge or self.writer.purged >= self.purge_limit:
            self.writer.purged = 0
            self._next_purge = now + self.purge_every_s
            before = self.wall() - self.config.retention_days * 86400
            self.submit(Purge(before, self.purge_limit))

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        # Create the file and its tables now, so readers find them before the first call.
        if await asyncio.to_thread(self.writer.open):
            log.info("call records: %s (%s)", describe(self.config), self.config.backend)
        else:  # the writer has logged why; calls are taken all the same
            log.error("call records: %s cannot be written now (%s); calls go on, their "
                      "records wait in memory and are written when it is back",
                      describe(self.config), self.writer.failing)
        self.writer.start()
        self._next_purge = self.clock.now() + min(60.0, self.purge_every_s)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="call-records")

    async def _run(self) -> None:
        while True:
            await self.clock.sleep_until(self.clock.now() + self.tick_s)
            try:
                self.tick()
            except Exception:  # a bug here must not stop the recording of later calls
                log.exception("call records: tick failed")

    async def stop(self, timeout: float = 5.0) -> None:
        """After the doors have closed their calls: end what is left, write it all."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for rec in list(self.live.values()):
            rec.end("shutdown" if rec.answered_at is not None else "not_answered")
        await asyncio.to_thread(self.writer.close, timeout)

    # -- reads (the HTTP API, in a worker thread) --------------------------------------

    async def list_calls(self, query: CallQuery) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._read, lambda s: s.list_calls(query))

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._read, lambda s: s.get_call(call_id))

    def _read(self, fn: Callable[[RecordStore], Any]) -> Any:
        store = open_store(self.config, readonly=True)
        try:
            return fn(store)
        finally:
            store.close()

    def readiness(self) -> dict[str, Any]:
        """Records are best effort: a database out of reach is reported, not a reason to
        refuse calls."""
        return {"records": {"backend": self.config.backend, "store": describe(self.config),
                            "pending": self.writer.pending, "failing": self.writer.failing,
                            "error": self.writer.last_error}}
