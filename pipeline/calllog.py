"""The structured log of one call: what was said, what was heard, and how long each step took.

Every event is a flat JSON-able dict ``{"t": seconds since call start, "event": kind, ...}``,
kept in memory for the call record (a later issue stores it) and logged as it happens
with ``extra={"call_id": ...}`` so a log collector can follow one call. Times come from
the injected clock, like every other timing in the pipeline.

A turn is one caller utterance and what the bot did about it; its `TurnRecord` holds the
transcript, the whole answer generated, the part the caller actually heard (only chunks
whose marks came back played), and every stage timing in seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from media.clock import Clock
from pipeline.leg import CallInfo

log = logging.getLogger("switchboard.call")

# Keys of TurnRecord.timings, in pipeline order. The first five are the stage names of
# stage_duration_seconds; the others are measured by the conversation.
TIMINGS = (
    "speech",  # caller speech: onset to last speech frame
    "asr",
    "llm_first_token",
    "llm_total",
    "tts_first_audio",
    "tts_total",
    "response_latency",  # last caller speech frame -> first answer audio queued to the leg
)


@dataclass(slots=True)
class TurnRecord:
    index: int
    started: float  # call-relative time of the caller's last speech frame
    transcript: str = ""
    answer: str = ""  # everything the LLM said that was sent to TTS
    heard: str = ""  # the chunks the caller heard in full
    outcome: str = "pending"  # answered | interrupted | empty | goodbye | error | cancelled
    speculative_asr: bool = False  # the transcript came from the ASR started at SilenceStart
    filler: str | None = None  # key of the filler phrase played while waiting
    error: str | None = None  # "stage: Kind: message"
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        return d


class CallLog:
    """Events and turns of one call. Cheap enough for the event loop: an append and a
    log call per event."""

    def __init__(self, info: CallInfo, clock: Clock, logger: logging.Logger | None = None) -> None:
        self.info = info
        self.clock = clock
        self.started_at = clock.now()
        self.ended_at: float | None = None
        self.end_reason: str | None = None
        self.events: list[dict[str, Any]] = []
        self.turns: list[TurnRecord] = []
        self._log = logger or log
        self._extra = {"call_id": info.call_id}
        # Live followers of this call (the browser console, the active-call list); each
        # gets every event as it is recorded, on the event loop.
        self._listeners: list[Callable[[dict[str, Any]], None]] = []

    def now(self) -> float:
        """Seconds since the call started."""
        return self.clock.now() - self.started_at

    def event(self, kind: str, level: int = logging.INFO, /, **fields: Any) -> dict[str, Any]:
        """Record one event; fields must be JSON-able scalars, lists or dicts."""
        entry: dict[str, Any] = {"t": round(self.now(), 4), "event": kind, **fields}
        self.events.append(entry)
        if self._log.isEnabledFor(level):
            detail = " ".join(f"{k}={v!r}" for k, v in fields.items())
            # JSON logs carry the fields themselves as "event"/"fields" (switchboard.logs).
            self._log.log(level, "%s %s", kind, detail,
                          extra={**self._extra, "event": kind, "fields": fields})
        for listener in self._listeners:
            try:
                listener(entry)
            except Exception:  # a follower's bug must not break the call
                self._log.exception("call-log listener failed", extra=self._extra)
        return entry

    def subscribe(self, listener: Callable[[dict[str, Any]], None], *,
                  replay: bool = True) -> Callable[[], None]:
        """Call `listener(entry)` for every event from now on; with `replay`, first for
        those already recorded. Returns the function that unsubscribes."""
        if replay:
            for entry in list(self.events):
                listener(entry)
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def call_start(self) -> None:
        i = self.info
        self.event("call_start", transport=i.transport, caller=i.caller, callee=i.callee)

    def call_end(self, reason: str) -> None:
        if self.ended_at is not None:
            return
        self.ended_at = self.clock.now()
        self.end_reason = reason
        self.event("call_end", reason=reason, duration_s=round(self.duration, 3),
                   turns=len(self.turns))

    @property
    def duration(self) -> float:
        end = self.ended_at if self.ended_at is not None else self.clock.now()
        return end - self.started_at

    def new_turn(self, speech_end: float) -> TurnRecord:
        """A turn whose caller speech ended at absolute clock time `speech_end`."""
        turn = TurnRecord(index=len(self.turns) + 1, started=round(speech_end - self.started_at, 4))
        self.turns.append(turn)
        return turn

    def turn_done(self, turn: TurnRecord, outcome: str) -> None:
        turn.outcome = outcome
        self.event("turn", **turn.to_dict())

    def error(self, stage: str, exc: BaseException, turn: TurnRecord | None = None) -> None:
        text = f"{stage}: {type(exc).__name__}: {exc}"
        if turn is not None:
            turn.error = text
        self.event("error", logging.WARNING, stage=stage, kind=type(exc).__name__,
                   message=str(exc), turn=turn.index if turn else None)

    def transcript(self) -> list[dict[str, str]]:
        """The conversation as the caller lived it: caller words and heard answers."""
        lines: list[dict[str, str]] = []
        for t in self.turns:
            if t.transcript:
                lines.append({"role": "caller", "text": t.transcript})
            if t.heard:
                lines.append({"role": "bot", "text": t.heard})
        return lines

    def record(self) -> dict[str, Any]:
        """The whole call as one JSON-able dict, for the call record."""
        i = self.info
        return {
            "call_id": i.call_id,
            "transport": i.transport,
            "caller": i.caller,
            "callee": i.callee,
            "params": dict(i.params),
            "duration_s": round(self.duration, 3),
            "end_reason": self.end_reason,
            "transcript": self.transcript(),
            "turns": [t.to_dict() for t in self.turns],
            "events": list(self.events),
        }
