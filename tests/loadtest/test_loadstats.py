"""loadtest.loadstats and loadtest.audio_marks: percentiles of samples, quantiles of
Prometheus histograms, the server summary between two scrapes, and the reply / barge-in
trackers fed frame by frame. Pure; no server."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.audio_marks import BargeinTracker, ReplyTracker, frame_dbfs, loud_frames
from loadtest.capacity_report import parse_prometheus
from loadtest.loadstats import (
    bucket_quantile,
    histogram_summary,
    labelled_buckets,
    percentiles,
    server_summary,
)


@given(st.lists(st.floats(0, 1e5, allow_nan=False), min_size=1, max_size=200))
def test_percentiles_match_numpys_linear_interpolation(values):
    p = percentiles(values)
    assert p["n"] == len(values)
    for key, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        assert p[key] == pytest.approx(float(np.percentile(values, q)), abs=0.051)
    assert p["max"] == pytest.approx(max(values), abs=0.051)


def test_percentiles_of_nothing_and_of_missing_values():
    assert percentiles([]) == {"n": 0}
    assert percentiles([None, math.nan]) == {"n": 0}  # type: ignore[list-item]
    assert percentiles([10, None, 30]) == {  # type: ignore[list-item]
        "n": 2, "mean": 20.0, "p50": 20.0, "p95": 29.0, "p99": 29.8, "max": 30.0}


BUCKETS = [(0.1, 10.0), (0.2, 30.0), (0.5, 40.0), (math.inf, 40.0)]


def test_bucket_quantile_interpolates_inside_the_bucket_like_prometheus():
    assert bucket_quantile(BUCKETS, 0.5) == pytest.approx(0.15)  # rank 20: 0.1 + 0.1 * 10/20
    assert bucket_quantile(BUCKETS, 0.99) == pytest.approx(0.488)  # rank 39.6: 0.2 + .3*.96
    assert bucket_quantile(BUCKETS, 0.1) == pytest.approx(0.04)  # rank 4, from 0 in the first
    over = [(0.1, 1.0), (math.inf, 10.0)]
    assert bucket_quantile(over, 0.99) == 0.1  # in +Inf: the largest finite bound
    assert bucket_quantile([], 0.5) is None
    assert bucket_quantile([(0.1, 0.0), (math.inf, 0.0)], 0.5) is None
    with pytest.raises(ValueError):
        bucket_quantile(BUCKETS, 1.5)


def test_histogram_summary_in_ms():
    s = histogram_summary(BUCKETS, total_s=6.0)
    assert s == {"n": 40, "mean": 150.0, "p50": 150.0, "p95": 440.0, "p99": 488.0}
    assert histogram_summary([]) == {"n": 0}


METRICS = """\
# TYPE switchboard_stage_duration_seconds histogram
switchboard_stage_duration_seconds_bucket{le="0.1",stage="asr"} %(asr1)s
switchboard_stage_duration_seconds_bucket{le="1.0",stage="asr"} %(asr2)s
switchboard_stage_duration_seconds_bucket{le="+Inf",stage="asr"} %(asr2)s
switchboard_stage_duration_seconds_count{stage="asr"} %(asr2)s
switchboard_stage_duration_seconds_sum{stage="asr"} %(asrsum)s
switchboard_stage_duration_seconds_bucket{le="0.1",stage="llm_first_token"} 0.0
switchboard_stage_duration_seconds_bucket{le="1.0",stage="llm_first_token"} 0.0
switchboard_stage_duration_seconds_bucket{le="+Inf",stage="llm_first_token"} 0.0
switchboard_stage_duration_seconds_count{stage="llm_first_token"} 0.0
switchboard_stage_duration_seconds_sum{stage="llm_first_token"} 0.0
# TYPE switchboard_response_latency_seconds histogram
switchboard_response_latency_seconds_bucket{le="1.0",transport="sip"} %(sip)s
switchboard_response_latency_seconds_bucket{le="2.0",transport="sip"} %(sip)s
switchboard_response_latency_seconds_bucket{le="+Inf",transport="sip"} %(sip)s
switchboard_response_latency_seconds_count{transport="sip"} %(sip)s
switchboard_response_latency_seconds_sum{transport="sip"} %(sipsum)s
switchboard_response_latency_seconds_bucket{le="1.0",transport="twilio"} 0.0
switchboard_response_latency_seconds_bucket{le="2.0",transport="twilio"} 4.0
switchboard_response_latency_seconds_bucket{le="+Inf",transport="twilio"} 4.0
switchboard_response_latency_seconds_count{transport="twilio"} 4.0
switchboard_response_latency_seconds_sum{transport="twilio"} 6.0
# TYPE switchboard_calls_total counter
switchboard_calls_total{outcome="remote_bye",transport="sip"} %(bye)s
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total %(cpu)s
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes %(rss)s
"""


def _snapshot(**values: float) -> dict[str, float]:
    return parse_prometheus(METRICS % {k: str(v) for k, v in values.items()})


BEFORE = _snapshot(asr1=5, asr2=5, asrsum=0.25, sip=0, sipsum=0, bye=3, cpu=10, rss=100 << 20)
AFTER = _snapshot(asr1=5, asr2=15, asrsum=5.25, sip=2, sipsum=1.0, bye=5, cpu=15, rss=120 << 20)


def test_labelled_buckets_group_by_one_label_and_sum_the_others():
    by_stage = labelled_buckets(AFTER, "switchboard_stage_duration_seconds", "stage")
    assert by_stage["asr"] == [(0.1, 5.0), (1.0, 15.0), (math.inf, 15.0)]
    summed = labelled_buckets(AFTER, "switchboard_response_latency_seconds")
    assert summed == {"": [(1.0, 2.0), (2.0, 6.0), (math.inf, 6.0)]}


def test_server_summary_covers_only_the_run():
    s = server_summary(BEFORE, AFTER, [{"rss_mb": 110.0}, {"rss_mb": 130.0}], wall_s=10.0)
    # asr over the run: 10 observations, all in (0.1, 1.0], 5.0 s in all.
    assert s["stages_ms"] == {"asr": {"n": 10, "mean": 500.0, "p50": 550.0, "p95": 955.0,
                                      "p99": 991.0}}
    assert s["response_latency_ms"]["n"] == 2  # twilio's 4 were there before and after
    assert s["calls_by_outcome"] == {"remote_bye": 2}
    assert s["cpu_pct_of_core"] == 50.0
    assert s["rss_mb"] == {"before": 100.0, "after": 120.0, "peak": 130.0}
    assert server_summary({}, {}, [], 1.0) == {"scraped": False}


def _run(tracker, frames, start=0.0):
    for i, loud in enumerate(frames):
        tracker.frame(start + 0.02 * i, loud)


def test_reply_latency_is_counted_from_the_end_of_the_question():
    r = ReplyTracker("answer")
    r.question_started(0.0)
    _run(r, [True] * 10)  # the greeting, heard while the caller talks: not the reply
    r.question_ended(0.2)
    _run(r, [True] * 5 + [False] * 20 + [True] * 3, start=0.2)  # greeting ends, reply starts
    assert r.onset == pytest.approx(0.2 + 0.02 * 25)
    assert r.latency == pytest.approx(0.5)
    echo = ReplyTracker("echo")
    echo.question_started(1.0)
    _run(echo, [False] * 60 + [True] * 5)
    assert echo.latency == pytest.approx(0.2)
    silent = ReplyTracker()
    silent.question_started(0.0)
    silent.question_ended(0.1)
    _run(silent, [False] * 50)
    assert silent.latency is None
    with pytest.raises(ValueError):
        ReplyTracker("both")


def test_bargein_stop_is_the_end_of_the_run_it_cut():
    b = BargeinTracker()
    _run(b, [True] * 50)  # the bot talks for 1 s (frames at 0.00 .. 0.98)
    b.interruption_sent(0.99)
    assert b.talking_at_onset
    b.clear(1.1)
    _run(b, [True] * 10 + [False] * 40 + [True] * 5, start=1.0)  # stops at 1.2, answers at 2.0
    assert b.stopped_at == pytest.approx(1.2)
    assert b.stop_latency == pytest.approx(0.21)
    assert b.clear_latency == pytest.approx(0.11)


def test_bargein_when_the_bot_was_quiet_or_frames_stop_coming():
    quiet = BargeinTracker()
    _run(quiet, [True] * 10 + [False] * 40)
    quiet.interruption_sent(1.0)
    quiet.finish()
    assert quiet.talking_at_onset is False and quiet.stop_latency is None
    cut = BargeinTracker()  # Twilio sends no silence: the audio just stops arriving
    _run(cut, [True] * 50)
    cut.interruption_sent(1.0)
    _run(cut, [True] * 5, start=1.0)
    cut.finish()
    assert cut.stop_latency == pytest.approx(0.1)


def test_frame_levels():
    assert frame_dbfs(np.zeros(160, np.int16)) == -math.inf
    full = (np.ones(160) * 32767).astype(np.int16)
    assert frame_dbfs(full) == pytest.approx(0.0, abs=0.01)
    assert frame_dbfs(full.tobytes()) == pytest.approx(0.0, abs=0.01)
    quiet = (full / 1000).astype(np.int16)  # -60 dBFS: below the loud threshold
    assert loud_frames(np.concatenate([full, quiet, full[:80]])) == [True, False]


def _rtp(seq: int, loud: bool) -> bytes:
    from loadtest.pcap import pcm_to_rtp

    t = np.arange(160) / 8000
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000 * loud).astype("<i2")
    return bytes(pcm_to_rtp(pcm.tobytes(), first_sequence=seq)[0])


def _capture(calls: list[tuple[float, int, list[bool], list[bool]]]) -> bytes:
    """A capture of calls (start, server port, loud per caller frame, loud per server frame)."""
    import io

    from loadtest.pcap import PcapRecord, udp_frame, write_pcap

    records = []
    for start, port, sent, heard in calls:
        caller, server = ("127.0.0.1", 6000), ("127.0.0.1", port)
        records += [PcapRecord(start + 0.02 * i, udp_frame(_rtp(i, loud), caller, server))
                    for i, loud in enumerate(sent)]
        records += [PcapRecord(start + 0.005 + 0.02 * i, udp_frame(_rtp(i, loud), server, caller))
                    for i, loud in enumerate(heard)]
    out = io.BytesIO()
    write_pcap(out, sorted(records, key=lambda r: r.time))
    return out.getvalue()


def test_sip_capture_gives_each_calls_latency_and_bargein_stop_on_the_wire():
    from loadtest.sip_load import analyse_capture

    question = [False] * 20 + [True] * 40 + [False] * 90  # the question: 0.40 .. 1.18 s
    answer = [False] * 90 + [True] * 30 + [False] * 30  # the reply from 1.805 s
    barge = question[:150] + [True] * 25 + [False] * 25  # and an interruption at 3.0 s
    cut = [False] * 90 + [True] * 70 + [False] * 40  # the reply, cut at 3.2 s
    data = _capture([(100.0, 30000, question, answer), (100.5, 30002, question, answer),
                     (110.0, 30000, question, [False] * 150)])  # the port again, later
    calls = analyse_capture(data, (30000, 30010), {"question_end_s": 1.2})
    assert [c["start"] for c in calls] == [100.0, 100.5, 110.0]
    assert [c["latency_ms"] for c in calls] == [pytest.approx(625.0), pytest.approx(625.0),
                                                None]
    assert all(c["frames_in"] == 150 and "bargein" not in c for c in calls)
    assert calls[0]["question"] == [100.4, pytest.approx(101.18)]
    assert calls[0]["reply_onset"] == pytest.approx(101.805)
    (call,) = analyse_capture(_capture([(5.0, 30004, barge, cut)]), (30000, 30010),
                              {"interruption_s": 3.0})
    assert call["bargein"]["talking_at_onset"] is True
    assert call["bargein"]["stop_ms"] == pytest.approx(205.0)  # last loud frame 3.185 + 20 ms
    assert analyse_capture(data, (40000, 40010), {}) == []  # other ports: not ours


def test_sipp_outputs_read_back():
    from loadtest.sip_load import sipp_error_responses, sipp_timeline

    head = "StartTime;ElapsedTime(C);CurrentCall;SuccessfulCall(C);FailedCall(C)"
    rows = ["x;00:00:01:000000;2;0;0", "x;00:00:02:500000;1;1;0", "bad", "x;00:01:00:0;0;2;1"]
    assert sipp_timeline("\n".join([head, *rows])) == [
        {"t": 1.0, "active": 2, "completed": 0, "failed": 0},
        {"t": 2.5, "active": 1, "completed": 1, "failed": 0},
        {"t": 60.0, "active": 0, "completed": 2, "failed": 1}]
    assert sipp_timeline("") == []
    log = ("Aborting call on unexpected message for Call-Id '3-1@127.0.0.1': while expecting "
           "'180' (index 2), received 'SIP/2.0 503 Service Unavailable\nVia: x\n"
           "... received 'SIP/2.0 486 Busy Here\n... received 'SIP/2.0 503 Service Unavailable\n")
    assert sipp_error_responses(log) == {"503 Service Unavailable": 2, "486 Busy Here": 1}


def test_a_report_without_calls_or_metrics_still_renders(tmp_path):
    from loadtest.loadreport import build_report, write_report

    raw = {"calls": {"attempted": 0, "completed": 0, "failed": 0, "failures": {}},
           "per_call": [], "timeline_client": [], "timeline_server": [],
           "metrics_before": {}, "metrics_after": {}, "wall_s": 1.0}
    report = build_report(mode="twilio", target="ws://x", agent=None, latency_mode="answer",
                          settings={"calls": 0}, raw=raw)
    files = write_report(report, tmp_path / "r")
    assert all(path.stat().st_size > 0 for path in files.values())
    md = files["md"].read_text()
    assert "| 0 | 0 | 0 |" in md and "were not scraped" in md
    assert report["response_latency_ms"] == {"n": 0} and report["server"] == {"scraped": False}
