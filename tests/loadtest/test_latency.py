"""loadtest.latency: the call log read back, percentiles, the barge-in stop in a recording,
and one real call to a real `switchboard serve` (fields only; nothing about time)."""

from __future__ import annotations

import json
import logging
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest import latency
from loadtest.latency import (
    LogFormatError,
    Plan,
    heard_stop,
    metric_value,
    parse_fields,
    percentiles,
    read_server_log,
    turn_summary,
)
from media.clock import ManualClock
from pipeline.calllog import CallLog
from pipeline.leg import CallInfo
from switchboard.logs import JsonFormatter

WALL = 1_700_000_000.0


class _Lines(logging.Handler):
    """The server's JSON lines, with `created` taken from the manual clock."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock, self.lines = clock, []
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        record.created = WALL + self.clock.now()
        self.lines.append(self.format(record))


def _call_log(clock: ManualClock) -> tuple[CallLog, _Lines]:
    logger = logging.getLogger("switchboard.call")
    handler = _Lines(clock)
    calllog = CallLog(CallInfo(call_id="c1", transport="sip", caller="a", callee="b"), clock,
                      logger=logger)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return calllog, handler


def test_a_turn_logged_by_calllog_reads_back_with_its_timings():
    clock = ManualClock(100.0)
    calllog, handler = _call_log(clock)
    try:
        calllog.call_start()
        calllog.event("say", phrase="greeting")
        clock.advance(6.0)  # the caller's last speech frame
        speech_end = clock.now()
        clock.advance(0.4)  # the hangover
        calllog.event("speech_end", speech_s=1.8)
        turn = calllog.new_turn(speech_end)
        turn.transcript = "Is it 'open' x=3 {today}?"
        turn.speculative_asr = True
        turn.filler = "filler_hmm"
        turn.timings.update(speech=1.8, asr=0.5, llm_first_token=0.3, tts_first_audio=0.2,
                            response_latency=1.6)
        clock.advance(1.1)
        calllog.event("say", phrase="filler_hmm")
        calllog.event("barge_in", turn=1, vad_barge_in=True, detect_ms=240, bot_audio=["answer"])
        calllog.turn_done(turn, "interrupted")
        calllog.call_end("remote_bye")
    finally:
        logging.getLogger("switchboard.call").removeHandler(handler)
    lines = ["llama.cpp prints this", *handler.lines, "{not json"]
    calls = read_server_log(lines)
    assert list(calls) == ["c1"]
    s = turn_summary(calls["c1"])
    assert s["transcript"] == "Is it 'open' x=3 {today}?"
    assert s["speculative_asr"] is True and s["outcome"] == "interrupted"
    assert s["phrases"] == ["greeting", "filler_hmm"]
    assert s["bargeins"] == [{"turn": 1, "vad_barge_in": True, "detect_ms": 240,
                              "bot_audio": ["answer"]}]
    assert s["end_reason"] == "remote_bye" and s["unreadable_lines"] == 0
    t = s["timings"]
    assert t["asr"] == 0.5 and t["response_latency"] == 1.6
    assert t["endpointing"] == pytest.approx(0.4, abs=0.002)
    assert t["filler"] == pytest.approx(1.5, abs=0.002)


# What CallLog logs: JSON-able scalars, lists and dicts (repr of inf is no literal).
_floats = st.floats(allow_nan=False, allow_infinity=False)
_values = st.one_of(
    st.none(), st.booleans(), st.integers(), _floats, st.text(max_size=30),
    st.lists(st.text(max_size=8), max_size=3),
    st.dictionaries(st.text(max_size=5), _floats, max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), _values,
                       max_size=6))
def test_parse_fields_inverts_calllogs_message_format(fields):
    detail = " ".join(f"{k}={v!r}" for k, v in fields.items())
    assert parse_fields(detail) == fields


def test_parse_fields_says_what_it_cannot_read():
    with pytest.raises(LogFormatError, match="cannot read x="):
        parse_fields("x='unterminated")
    with pytest.raises(LogFormatError, match="no key=value"):
        parse_fields("just words")


def test_percentiles_in_milliseconds():
    p = percentiles([0.1 * i for i in range(1, 11)])
    assert p["n"] == 10 and p["mean"] == 550.0 and p["p50"] == 550.0 and p["max"] == 1000.0
    assert p["p95"] == 955.0 and p["p99"] == 991.0
    assert percentiles([]) == {"n": 0}


def test_metric_value_picks_the_labelled_sample():
    text = ('switchboard_bargein_latency_seconds_count{transport="sip"} 3.0\n'
            'switchboard_bargein_latency_seconds_count{transport="twilio"} 9.0\n'
            'switchboard_bargein_latency_seconds_sum{transport="sip"} 0.0012\n')
    name = "switchboard_bargein_latency_seconds_"
    assert metric_value(text, name + "count", transport="sip") == 3.0
    assert metric_value(text, name + "sum", transport="sip") == 0.0012
    assert metric_value(text, name + "count", transport="browser") == 0.0


def _wav16k(path: Path, frames: list[float]) -> None:
    """A 16 kHz WAV of 20 ms frames, each a tone at the given dBFS (-100: silence)."""
    t = np.arange(320) / 16000
    pcm = [np.zeros(320) if db <= -100 else
           np.sin(2 * np.pi * 440 * t) * 32768 * 10 ** (db / 20) * np.sqrt(2) for db in frames]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.concatenate(pcm).astype("<i2").tobytes())


def test_heard_stop_measures_from_the_onset_sent_to_the_bots_first_silent_frame(tmp_path):
    plan = Plan(0, "bargein_greeting", "", "en-us", tmp_path / "sent.wav", tmp_path / "heard.wav")
    _wav16k(plan.wav, [-100] * 40 + [-20] * 50 + [-100] * 10)  # the caller speaks at frame 40
    # Greeting heard from frame 10 (0.8 s before the speech_start mark), cut at frame 66.
    _wav16k(plan.record, [-100] * 10 + [-20] * 56 + [-100] * 60)
    stop = heard_stop(plan, {"first_reply_s": -0.8})
    # The onset frame goes out one tick after the mark: 0.02 s; frame 66 is heard at
    # -0.8 + 56 * 0.02 = 0.32 s after the mark.
    assert stop == pytest.approx(0.30)
    _wav16k(plan.record, [-100] * 10 + [-20] * 20 + [-100] * 96)  # over before the onset
    assert heard_stop(plan, {"first_reply_s": -0.8}) is None
    assert heard_stop(plan, {"first_reply_s": None}) is None


@pytest.mark.slow
def test_one_real_call_reports_every_field(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert latency.main(["--calls", "1", "--tail", "6", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "caller: end of speech -> first bot audio heard" in printed
    report = json.loads(out.read_text())
    assert report["run"]["calls"] == 1 and report["run"]["engines"]["llm"]
    (call,) = report["calls"]
    assert call["kind"] == "question" and call["text"]
    dial = call["dial"]
    assert dial["status"] == "completed" and dial["codec"] == "PCMU"
    assert {"reply_latency_s", "first_reply_s", "speech_s"} <= set(dial)
    server = call["server"]
    assert server["transcript"] and server["turns"] >= 1 and server["errors"] == []
    assert {"speech", "asr", "endpointing"} <= set(server["timings"])
    summary = report["summary"]
    assert summary["counts"]["calls"] == 1 and summary["counts"]["with_server_log"] == 1
    assert {"endpointing", "asr"} <= set(summary["rows"])
    assert set(summary["rows"]["asr"]) == {"n", "mean", "p50", "p95", "p99", "max"}
