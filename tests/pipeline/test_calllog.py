from __future__ import annotations

import json
import logging

import pytest

from media.clock import ManualClock
from pipeline.calllog import CallLog
from pipeline.leg import CallInfo

INFO = CallInfo("c-42", "twilio", caller="+15550001", callee="+15550002",
                params={"agent": "front-desk"})


def test_events_are_timed_from_call_start_and_logged_with_the_call_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(500.0)
    log = CallLog(INFO, clock)
    caplog.set_level(logging.INFO, logger="switchboard.call")
    log.call_start()
    clock.advance(1.25)
    entry = log.event("dtmf", digit="7")
    assert entry == {"t": 1.25, "event": "dtmf", "digit": "7"}
    assert log.events[0] == {"t": 0.0, "event": "call_start", "transport": "twilio",
                             "caller": "+15550001", "callee": "+15550002"}
    assert [r.call_id for r in caplog.records] == ["c-42", "c-42"]  # type: ignore[attr-defined]
    assert "digit='7'" in caplog.records[-1].getMessage()


def test_fields_may_use_any_name_even_kind() -> None:
    log = CallLog(INFO, ManualClock())
    assert log.event("error", kind="QueueFull", level="x")["kind"] == "QueueFull"


def test_debug_events_are_kept_but_not_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    log = CallLog(INFO, ManualClock())
    caplog.set_level(logging.INFO, logger="switchboard.call")
    log.event("mark", logging.DEBUG, mark="m1-answer", played=True)
    assert log.events[-1]["mark"] == "m1-answer"
    assert not caplog.records


def test_turns_errors_and_the_call_record_are_json() -> None:
    clock = ManualClock(10.0)
    log = CallLog(INFO, clock)
    log.call_start()
    clock.advance(3.0)
    turn = log.new_turn(speech_end=12.5)
    assert turn.index == 1 and turn.started == 2.5
    turn.transcript = "When do you open?"
    turn.answer = "We open at nine. On weekdays."
    turn.heard = "We open at nine."
    turn.timings.update(asr=0.21234567, response_latency=0.8)
    log.turn_done(turn, "interrupted")
    second = log.new_turn(speech_end=14.0)
    log.error("llm", TimeoutError("no answer"), second)
    log.turn_done(second, "error")
    clock.advance(2.0)
    log.call_end("caller hung up")
    log.call_end("twice")  # the first reason stays
    record = log.record()
    assert json.loads(json.dumps(record)) == record
    assert record["call_id"] == "c-42" and record["params"] == {"agent": "front-desk"}
    assert record["end_reason"] == "caller hung up" and record["duration_s"] == 5.0
    assert record["transcript"] == [
        {"role": "caller", "text": "When do you open?"},
        {"role": "bot", "text": "We open at nine."},
    ]
    t1, t2 = record["turns"]
    assert t1["outcome"] == "interrupted" and t1["timings"]["asr"] == 0.2123
    assert t2["outcome"] == "error" and t2["error"] == "llm: TimeoutError: no answer"
    kinds = [e["event"] for e in record["events"]]
    assert kinds == ["call_start", "turn", "error", "turn", "call_end"]
    assert record["events"][2]["turn"] == 2
    assert record["events"][-1]["turns"] == 2
