import json
import logging

from media.clock import ManualClock
from pipeline.calllog import CallLog
from pipeline.leg import CallInfo
from switchboard.logs import JsonFormatter


def test_json_lines_carry_call_id_and_the_event_fields(caplog):
    log = CallLog(CallInfo("c-42", "sip", caller="alice", callee="bot"), ManualClock())
    with caplog.at_level(logging.INFO):
        log.event("turn", transcript="hello", latency=0.8)
    record = next(r for r in caplog.records if getattr(r, "event", None) == "turn")
    line = json.loads(JsonFormatter().format(record))
    assert line["call_id"] == "c-42"
    assert line["event"] == "turn"
    assert line["fields"] == {"transcript": "hello", "latency": 0.8}
