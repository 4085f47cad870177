"""loadtest.soak: the readers and verdicts, and a short count-bounded soak (20 SIPp echo
calls against a real `switchboard serve`) after which tasks, fds, sockets, threads and
RTP ports must be back at their baseline. Counts only: no assertion on timing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import soak_report as sr
from loadtest.soak import Settings, run, server_config
from switchboard.config import load_config

STATUS = """Name:\tswitchboard
VmPeak:\t  912340 kB
VmRSS:\t   76544 kB
Threads:\t7
"""


def test_proc_status_and_socket_links() -> None:
    assert sr.parse_status(STATUS) == (76544 / 1024, 7)
    assert sr.parse_status("Name:\tx\n") == (None, None)
    links = ["/dev/null", "socket:[123]", "pipe:[4]", "socket:[9]", "/tmp/calls.db"]
    assert sr.count_sockets(links) == 2


def test_metric_counts_sum_labels_and_know_what_is_missing() -> None:
    snap = {'switchboard_calls_active{transport="sip"}': 2.0,
            'switchboard_calls_active{transport="twilio"}': 1.0,
            "switchboard_asyncio_tasks{}": 14.0, "switchboard_rtp_ports_in_use{}": 2.0}
    assert sr.metric_counts(snap) == {"tasks": 14, "python_threads": None, "rtp_ports": 2,
                                      "calls_active": 3}


def test_slope() -> None:
    assert sr.slope_per_minute([(0, 1.0), (30, 2.0)]) is None  # too few points
    assert sr.slope_per_minute([(0, 5.0), (60, 5.0), (120, 5.0)]) == 0
    assert sr.slope_per_minute([(0, 0.0), (30, 1.0), (60, 2.0)]) == pytest.approx(2.0)


def sample(t: float, phase: str = "run", **kw: float) -> sr.Sample:
    base = {"rss_mb": 100.0, "threads": 5, "fds": 12, "sockets": 4, "tasks": 8,
            "python_threads": 3, "rtp_ports": 0, "calls_active": 0}
    return sr.Sample(t, phase, **{**base, **kw})  # type: ignore[arg-type]


def test_a_count_that_stays_up_is_a_leak_and_growing_memory_is_not_flat() -> None:
    base = sample(0, "baseline")
    run_ = [sample(60 * i, rss_mb=100 + 3 * i, tasks=30, rtp_ports=8, calls_active=4)
            for i in range(1, 11)]
    end = sample(700, "end", rss_mb=130.0, tasks=9, sockets=5)
    report = sr.analyse(base, run_, end, {"attempted": 9, "completed": 9, "failed": 0})
    assert report["leaked"] == ["sockets", "tasks"]
    assert report["memory"]["flat"] is False and report["memory"]["second_half_drift_mb"] > 8
    assert report["peaks"]["tasks"] == 30 and not report["ok"]
    assert "NOT BACK" in sr.render({**report, "samples": []})


def test_counts_back_and_flat_memory_pass_but_a_failed_call_does_not() -> None:
    base = sample(0, "baseline")
    run_ = [sample(60 * i, rss_mb=100 + (i % 2) * 0.5, tasks=20) for i in range(1, 11)]
    end = sample(700, "end", tasks=6)  # fewer than at the baseline is fine
    calls = {"attempted": 9, "completed": 9, "failed": 0}
    report = sr.analyse(base, run_, end, calls)
    assert report["leaked"] == [] and report["memory"]["flat"] and report["ok"]
    assert not sr.analyse(base, run_, end, {**calls, "completed": 8, "failed": 1})["ok"]


def test_the_server_config_is_valid(tmp_path: Path) -> None:
    s = Settings(agent="conversation", concurrency=3, timer_t1=0.05)
    path = tmp_path / "switchboard.yaml"
    path.write_text(server_config(s, 5070, 8090, tmp_path))
    config = load_config(path, env={})
    assert (config.agent, config.sip.max_calls, config.sip.timer_t1) == ("conversation", 13, 0.05)
    assert config.sip.rtp_port_max - config.sip.rtp_port_min >= 4 * 13


def test_the_command_line_documents_its_options() -> None:
    out = subprocess.run([sys.executable, "-m", "loadtest.soak", "--help"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    for option in ("--minutes", "--agent", "--max-calls", "--concurrency", "--target"):
        assert option in out


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp (sip-tester) not installed")
def test_twenty_echo_calls_leak_nothing(tmp_path: Path) -> None:
    # A short T1 so the SIP transactions of ended calls (64 T1) are gone in 3 s, not 32.
    s = Settings(agent="echo", max_calls=20, concurrency=5, hold=1.0, warmup=3,
                 sample_s=1.0, timer_t1=0.05)
    report = run(s, tmp_path)
    (tmp_path / "report.json").write_text(json.dumps(report, indent=2))
    calls = report["calls"]
    assert (calls["attempted"], calls["completed"], calls["failed"]) == (20, 20, 0), calls
    assert report["server_outcomes"] == {"remote_bye": 23.0}  # 3 warm-up calls + 20
    back = report["returned"]
    assert set(back) == set(sr.COUNTS), back  # every count was read, from /proc and /metrics
    assert report["leaked"] == [], back
    # The samples saw the calls: the counts did rise, then came back.
    peaks = report["peaks"]
    assert peaks["rtp_ports"] >= 1 and peaks["calls_active"] >= 1
    assert peaks["sockets"] > back["sockets"]["baseline"]
    assert peaks["tasks"] > back["tasks"]["baseline"]
