"""What the browser console is told about its call, from the call's log events.

A conversation records every step in its CallLog (pipeline.calllog); the browser door
follows that log and turns the events the page shows into small JSON messages:

    {"type": "state", "state": "listening" | "thinking" | "speaking" | "ending" | "ended"}
    {"type": "transcript", "role": "caller", "turn": 1, "text": "..."}  (ASR result)
    {"type": "transcript", "role": "agent", "turn": 1, "text": "..."}  (each chunk spoken)
    {"type": "turn", "turn": 1, "caller": "...", "agent": "...", "outcome": "answered",
     "speculative_asr": false, "timings": {"endpointing": 312, "asr": 240, ...}}  (ms)
    {"type": "barge_in", "turn": 1}
    {"type": "phrase", "phrase": "greeting", "text": "Hello, ..."}  (a cached phrase)

The turn message carries the latency waterfall: endpointing (the caller's last speech
frame -> the end of their turn was decided), ASR, LLM first token, TTS first audio and
the response latency (last speech frame -> first answer audio), plus the totals. Pure:
no I/O, one ConsoleEvents per call (it remembers when the last utterance ended).
"""

from __future__ import annotations

from typing import Any

__all__ = ["STAGES", "ConsoleEvents", "state_message"]

# Waterfall order, as the page draws it; TurnRecord.timings keys, plus endpointing.
STAGES = ("endpointing", "asr", "llm_first_token", "tts_first_audio", "response_latency")
_TOTALS = ("speech", "llm_total", "tts_total")


def state_message(state: str) -> dict[str, Any]:
    return {"type": "state", "state": state}


def _ms(seconds: object) -> int | None:
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
        return round(seconds * 1000)
    return None


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


class ConsoleEvents:
    """Call-log event -> console message (or None for events the page does not show)."""

    def __init__(self) -> None:
        self._speech_end_t: float | None = None  # call time the last utterance was cut

    def message(self, entry: dict[str, Any]) -> dict[str, Any] | None:
        kind = entry.get("event")
        if kind == "state":
            return state_message(_text(entry.get("state")))
        if kind == "speech_end":
            t = entry.get("t")
            self._speech_end_t = float(t) if isinstance(t, int | float) else None
            return None
        if kind in ("caller_said", "agent_said"):
            return {"type": "transcript", "role": "caller" if kind == "caller_said" else "agent",
                    "turn": entry.get("turn"), "text": _text(entry.get("text"))}
        if kind == "turn":
            return self._turn(entry)
        if kind == "barge_in":
            return {"type": "barge_in", "turn": entry.get("turn")}
        if kind == "say":
            return {"type": "phrase", "phrase": _text(entry.get("phrase")),
                    "text": _text(entry.get("text"))}
        return None

    def _turn(self, entry: dict[str, Any]) -> dict[str, Any]:
        raw = entry.get("timings")
        timings: dict[str, int] = {}
        if isinstance(raw, dict):
            for key in STAGES[1:] + _TOTALS:
                ms = _ms(raw.get(key))
                if ms is not None:
                    timings[key] = ms
            started = entry.get("started")
            if ("speech" in raw and self._speech_end_t is not None
                    and isinstance(started, int | float)):
                ms = _ms(self._speech_end_t - started)
                if ms is not None:
                    timings["endpointing"] = ms
        heard, answer = _text(entry.get("heard")), _text(entry.get("answer"))
        return {
            "type": "turn",
            "turn": entry.get("index"),
            "caller": _text(entry.get("transcript")),
            "agent": heard or answer,
            "outcome": _text(entry.get("outcome")),
            "speculative_asr": bool(entry.get("speculative_asr")),
            "timings": timings,
        }
