"""loadtest.sip_capacity: the readers of SIPp, /proc, Prometheus and dumpcap output, the
run settings, and one tiny real run (5 calls for 3 s against a real `switchboard serve`)
whose report must have every field and no failed call. No assertion on timing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.capacity_report import (
    Sample,
    StatsError,
    bucket_counts,
    by_label,
    cpu_usage,
    delta,
    dumpcap_dropped,
    histogram_quantile,
    parse_machine_stat,
    parse_proc_stat,
    parse_prometheus,
    parse_sipp_stats,
    render,
    render_series,
    total,
    udp_socket_drops,
)
from loadtest.sip_capacity import (
    CapacityError,
    RunSettings,
    auto_rate,
    scenario_for,
    server_config,
)
from switchboard.config import load_config

ROOT = Path(__file__).resolve().parents[2]

# SIPp 3.6.1's -trace_stat columns, cut after the ones the report reads.
SIPP_HEAD = (
    "StartTime;LastResetTime;CurrentTime;ElapsedTime(P);ElapsedTime(C);TargetRate;"
    "CallRate(P);CallRate(C);IncomingCall(P);IncomingCall(C);OutgoingCall(P);OutgoingCall(C);"
    "TotalCallCreated;CurrentCall;SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);"
    "FailedCall(C);FailedMaxUDPRetrans(P);FailedMaxUDPRetrans(C);Retransmissions(P);"
    "Retransmissions(C);WatchdogMajor(P);WatchdogMajor(C);WatchdogMinor(P);WatchdogMinor(C);"
    "ResponseTime1(P);ResponseTime1(C)"
)
STAMP = "2026-11-21\t10:29:17.548996\t1795256957.548996"


def sipp_row(created: int, current: int, ok: int, failed: int, udp: int = 0) -> str:
    return ";".join([STAMP, STAMP, STAMP, "00:00:01", "00:00:03", "10", "4.9", "4.9", "0", "0",
                     "5", str(created), str(created), str(current), "0", str(ok), "0",
                     str(failed), "0", str(udp), "0", "2", "0", "0", "0", "1",
                     "00:00:00:000000", "00:00:01:002500"]) + ";"


PROMETHEUS = """\
# HELP switchboard_calls_total Calls ended, by outcome
# TYPE switchboard_calls_total counter
switchboard_calls_total{outcome="remote_bye",transport="sip"} 7.0
switchboard_calls_total{outcome="media_timeout",transport="sip"} 1.0
# HELP switchboard_rtp_packets_sent_total RTP packets sent
# TYPE switchboard_rtp_packets_sent_total counter
switchboard_rtp_packets_sent_total 1500.0
# HELP switchboard_pacer_lateness_seconds How late each 20 ms outbound tick ran
# TYPE switchboard_pacer_lateness_seconds histogram
switchboard_pacer_lateness_seconds_bucket{le="0.001"} 50.0
switchboard_pacer_lateness_seconds_bucket{le="0.002"} 90.0
switchboard_pacer_lateness_seconds_bucket{le="0.005"} 100.0
switchboard_pacer_lateness_seconds_bucket{le="+Inf"} 100.0
switchboard_pacer_lateness_seconds_count 100.0
switchboard_pacer_lateness_seconds_sum 0.1
"""


def test_sipp_stats_last_row_and_peak_concurrency() -> None:
    text = "\n".join([SIPP_HEAD, sipp_row(3, 3, 0, 0), sipp_row(5, 5, 2, 0),
                      sipp_row(5, 0, 4, 1, udp=1)]) + "\n"
    stats = parse_sipp_stats(text)
    assert (stats["attempted"], stats["completed"], stats["failed"]) == (5, 4, 1)
    assert stats["failure_kinds"] == {"MaxUDPRetrans": 1}
    assert stats["max_concurrent"] == 5
    assert stats["retransmissions"] == 2 and stats["watchdog_minor"] == 1
    assert stats["response_time_ms"] == pytest.approx(1002.5)


def test_sipp_stats_without_rows_raise() -> None:
    with pytest.raises(StatsError, match="no statistics rows"):
        parse_sipp_stats(SIPP_HEAD + "\n")


def test_prometheus_snapshot_totals_labels_and_deltas() -> None:
    snap = parse_prometheus(PROMETHEUS)
    assert total(snap, "switchboard_calls_total") == 8
    assert total(snap, "switchboard_calls_total", outcome="media_timeout") == 1
    assert by_label(snap, "switchboard_calls_total", "outcome") == {
        "remote_bye": 7, "media_timeout": 1}
    later = {**snap, 'switchboard_rtp_packets_sent_total{}': 2000.0}
    assert total(delta(later, snap), "switchboard_rtp_packets_sent_total") == 500


def test_histogram_quantile_interpolates_within_a_bucket() -> None:
    snap = parse_prometheus(PROMETHEUS)
    name = "switchboard_pacer_lateness_seconds"
    assert histogram_quantile(0.5, snap, name) == pytest.approx(0.001)
    assert histogram_quantile(0.7, snap, name) == pytest.approx(0.0015)
    assert histogram_quantile(0.99, snap, name) == pytest.approx(0.002 + 0.003 * 0.9)
    assert histogram_quantile(0.99, {}, name) is None
    assert bucket_counts(snap, name) == {"<=0.001": 50, "<=0.002": 40, "<=0.005": 10,
                                         ">0.005": 0}
    overflow = {f'{name}_bucket{{le="0.001"}}': 1.0, f'{name}_bucket{{le="+Inf"}}': 10.0}
    assert histogram_quantile(0.99, overflow, name) == 0.001  # the largest finite bound


def test_proc_stat_readers() -> None:
    line = "4242 (a (weird) name) S 1 2 3 0 -1 4194304 10 0 0 0 250 50 0 0 20 0 3 0\n"
    assert parse_proc_stat(line, 100) == pytest.approx(3.0)
    assert parse_machine_stat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1\n", 100) == (1.5, 10.0)
    with pytest.raises(StatsError):
        parse_proc_stat("garbage", 100)
    with pytest.raises(StatsError):
        parse_machine_stat("intr 1 2 3", 100)


def test_cpu_usage_per_role_and_machine() -> None:
    first = Sample(0.0, {"server": 10.0, "sipp": 1.0, "gone": 3.0}, (100.0, 400.0), {})
    last = Sample(10.0, {"server": 15.0, "sipp": 2.0, "gone": None}, (116.0, 420.0), {})
    usage = cpu_usage(first, last, cores=2)
    assert usage["server_core_pct"] == pytest.approx(50.0)
    assert usage["server_machine_pct"] == pytest.approx(25.0)
    assert usage["sipp_core_pct"] == pytest.approx(10.0)
    assert usage["gone_core_pct"] is None
    assert usage["machine_busy_pct"] == pytest.approx(80.0)
    assert usage["other_machine_pct"] == pytest.approx(80.0 - 25.0 - 5.0)


def test_cpu_usage_of_a_remote_server_comes_from_its_metrics() -> None:
    first = Sample(0.0, {}, (0.0, 1.0), {"process_cpu_seconds_total{}": 4.0})
    last = Sample(2.0, {}, (1.0, 2.0), {"process_cpu_seconds_total{}": 5.0})
    assert cpu_usage(first, last, cores=2)["server_core_pct"] == pytest.approx(50.0)


def test_udp_socket_drops_in_the_port_range() -> None:
    text = (
        "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode ref pointer drops\n"
        "  10: 0100007F:4E20 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0"
        "        0 5001 2 0000000000000000 7\n"
        "  11: 0100007F:4E21 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 5002 2 0000000000000000 0\n"
        "  12: 0100007F:13C4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
        "        0 5003 2 0000000000000000 99\n"
    )
    assert udp_socket_drops(text, (20000, 20100)) == {5001: 7, 5002: 0}  # not port 5060
    with pytest.raises(StatsError):
        udp_socket_drops(text.replace("5001", "x"), (20000, 20100))


def test_dumpcap_drop_count() -> None:
    text = ("Capturing on 'Loopback: lo'\nPackets captured: 751\nPackets received/dropped on "
            "interface 'Loopback: lo': 751/3 (pcap:0/dumpcap:3/flushed:0/ps_ifdrop:0) (99.6%)\n")
    assert dumpcap_dropped(text) == 3
    assert dumpcap_dropped("Capturing on 'lo'\n") is None


def test_settings_window_rate_and_ports() -> None:
    s = RunSettings(calls=200, hold=60, rate=auto_rate(200, 60))
    assert s.rate == 12 and s.ramp == pytest.approx(200 / 12)
    start, end = s.window()
    assert s.ramp < start < end < 60
    low, high = s.port_range()
    assert high - low >= 4 * 200
    assert auto_rate(5, 3) == 10
    with pytest.raises(CapacityError, match="raise --rate or --hold"):
        RunSettings(calls=1000, hold=10, rate=10).window()


def test_server_config_is_valid_switchboard_config(tmp_path: Path) -> None:
    s = RunSettings(calls=300, hold=60, rate=20, codec="PCMA")
    path = tmp_path / "c.yaml"
    path.write_text(server_config(s, 5070, 8081, tmp_path / "a b"))
    config = load_config(path, env={})
    assert config.records.path == str(tmp_path / "a b" / "calls.db")
    assert config.agent == "echo" and config.log.level == "WARNING"
    assert config.shutdown_drain_seconds == 0
    assert config.sip.max_calls >= 300 and config.sip.codecs == ["PCMA"]
    assert (config.sip.rtp_port_min, config.sip.rtp_port_max) == s.port_range()


def test_pcma_scenario_offers_pcma(tmp_path: Path) -> None:
    text = scenario_for("PCMA", tmp_path).read_text()
    assert "m=audio [media_port] RTP/AVP 8 101" in text and "rtpmap:8 PCMA/8000" in text
    assert "PCMU/8000" not in text and "RTP/AVP 0" not in text
    assert scenario_for("PCMU", tmp_path).read_text() == (
        ROOT / "loadtest" / "sipp" / "uac_pcmu.xml").read_text()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("sipp") is None or shutil.which("dumpcap") is None,
                    reason="needs SIPp (sip-tester) and dumpcap (tshark)")
def test_smoke_run_reports_every_field(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.sip_capacity", "--calls", "5", "--hold", "3",
         "--json", str(out), "--keep", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 1: p99 over target
    report = json.loads(out.read_text())
    calls = report["calls"]
    assert (calls["attempted"], calls["completed"], calls["failed"]) == (5, 5, 0), calls
    assert calls["exit_code"] == 0 and not calls["timed_out"]
    assert report["server_calls"]["outcomes"] == {"remote_bye": 5}
    for key in ("server_core_pct", "server_machine_pct", "sipp_core_pct", "capture_core_pct",
                "machine_busy_pct"):
        assert report["cpu"][key] is not None, key
    rtp = report["rtp"]
    assert rtp["server_in"] > 0 and rtp["server_out"] > 0 and rtp["captured_out"] > 0
    assert rtp["capture_dropped"] == 0
    assert rtp["server_socket_drops"] is not None
    for key in ("jitter_p50_ms", "jitter_p95_ms", "jitter_p99_ms", "jitter_max_ms"):
        assert report["jitter"][key] is not None, key
    assert report["jitter"]["streams"] == 5
    assert report["pacer"]["lateness_p99_ms"] is not None
    assert isinstance(report["held"], bool)
    assert "held (none failed" in proc.stdout
    assert render(report).splitlines()[0].startswith("5 calls x 3 s")
    assert render_series([report, report]).count("\n") == 2


@pytest.mark.slow
async def test_echo_profile_measures_sessions_and_lists_functions() -> None:
    from loadtest.echo_profile import measure
    from loadtest.echo_profile import render as render_profile

    report = await measure(calls=3, seconds=0.5, warmup=0.3, codec="PCMU", rtp_base=27000)
    for window in (report["plain"], report["profiled"]):
        assert window["ticks"] > 0 and window["us_per_call_tick"] > 0
        assert {"p50", "p99", "max"} <= set(window["pacer_lateness_ms"])
    names = " ".join(row["function"] for row in report["top"])
    assert "rtp_session.py" in names  # the sessions' own work shows in the profile
    assert "µs CPU per call per 20 ms tick" in render_profile(report, 5)
