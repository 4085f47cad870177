"""`switchboard loadtest sip|twilio`: small bounded runs against a real local
`switchboard serve` (started by the command), checking that the report folder holds
report.json, report.md and two PNGs, that they parse, and that their counts are what
happened (calls made, refused, echoed). Nothing about timing is asserted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from switchboard.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def _report(out: Path) -> dict:
    for name in ("report.json", "report.md", "latency_histogram.png", "timeline.png"):
        assert (out / name).is_file(), name
    for name in ("latency_histogram.png", "timeline.png"):
        assert (out / name).read_bytes()[:8] == PNG
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    c = report["calls"]
    assert f"| {c['attempted']} | {c['completed']} | {c['failed']} |" in md
    assert "![latency histogram](latency_histogram.png)" in md
    return report


@pytest.mark.skipif(shutil.which("sipp") is None or shutil.which("dumpcap") is None,
                    reason="needs SIPp and dumpcap")
def test_sip_echo_run_and_a_refused_call(tmp_path, capsys):
    out = tmp_path / "sip"
    code = main(["loadtest", "sip", "--calls", "3", "--concurrency", "3", "--rate", "5",
                 "--hold", "4", "--out", str(out),
                 "--server-env", "SWITCHBOARD_SIP__MAX_CALLS=2"])
    assert code == 1  # one call was refused
    assert "2/3 calls completed" in capsys.readouterr().out
    r = _report(out)
    assert r["mode"] == "sip" and r["agent"] == "echo"
    assert r["calls"]["attempted"] == 3 and r["calls"]["completed"] == 2
    assert r["calls"]["failed"] == 1 and sum(r["calls"]["failures"].values()) == 1
    assert r["calls"]["failure_responses"] == {"503 Service Unavailable": 1}  # the limit
    assert "503 Service Unavailable: 1" in (out / "report.md").read_text()
    # The two answered calls were captured and their echo found in the audio.
    answered = [c for c in r["per_call"] if c["frames_out"] > 0]
    assert len(answered) == 2 and all(c["latency_ms"] > 0 for c in answered)
    assert r["response_latency_ms"]["n"] == 2
    assert all(c["reply_onset_s"] > c["question_s"][0] for c in answered)
    server = r["server"]
    assert server["scraped"] and server["calls_by_outcome"] == {"remote_bye": 2}
    assert server["rss_mb"]["after"] > 0 and server["cpu_pct_of_core"] is not None
    assert max(p["active"] for p in r["timeline"]["client"]) == 2
    assert r["sipp"]["exit_code"] == 1 and (out / "sipp_stats.csv").is_file()
    assert (out / "sipp_screen.log").is_file()


def test_twilio_echo_run(tmp_path, capsys):
    out = tmp_path / "twilio"
    assert main(["loadtest", "twilio", "--calls", "3", "--concurrency", "2", "--rate", "4",
                 "--listen", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "3/3 calls completed" in captured.out
    assert "3/3 done" in captured.err  # the progress bar
    r = _report(out)
    assert r["mode"] == "twilio" and r["calls"] == {
        "attempted": 3, "completed": 3, "failed": 0, "failures": {}, "peak_concurrent": 2}
    assert r["response_latency_ms"]["n"] == 3  # every stream heard its echo
    assert all(c["frames_received"] > 0 and c["latency_ms"] > 0 for c in r["per_call"])
    assert r["server"]["calls_by_outcome"] == {"remote_stop": 3}
    assert r["bargein"]["attempted"] == 0


def test_twilio_streams_over_the_servers_limit_are_failed_with_the_reason(tmp_path):
    out = tmp_path / "busy"
    assert main(["loadtest", "twilio", "--calls", "2", "--concurrency", "2", "--rate", "20",
                 "--listen", "1", "--out", str(out),
                 "--server-env", "SWITCHBOARD_STREAMS__MAX_CONCURRENT_STREAMS=1"]) == 1
    r = _report(out)
    assert r["calls"]["completed"] == 1 and r["calls"]["failed"] == 1
    (reason,) = r["calls"]["failures"]
    assert reason.startswith("closed by the server")
    assert [c["status"] for c in r["per_call"]].count("failed") == 1


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["loadtest", "twilio", "--calls", "0", "--out", str(tmp_path / "x")]) == 2
    assert main(["loadtest", "twilio", "--agent", "echo", "--bargein", "--calls", "1",
                 "--out", str(tmp_path / "y")]) == 2
    assert "--bargein needs the conversation agent" in capsys.readouterr().err


@pytest.mark.slow
def test_twilio_conversation_with_bargein_on_the_real_models(tmp_path):
    out = tmp_path / "conversation"
    main(["loadtest", "twilio", "--agent", "conversation", "--calls", "1", "--bargein",
          "--listen", "15", "--out", str(out)])
    r = _report(out)
    assert r["agent"] == "conversation" and r["calls"]["completed"] == 1
    (call,) = r["per_call"]
    assert call["latency_ms"] is not None and call["latency_ms"] > 0
    assert r["server"]["stages_ms"]["asr"]["n"] >= 1
    assert r["server"]["response_latency_ms"]["n"] >= 1
    # Talked over while the bot was speaking: the server cleared the audio.
    assert call["bargein"]["talking_at_onset"] is True
    assert call["clears"] >= 1 and call["bargein"]["clear_ms"] is not None
    assert r["server"]["bargeins"] >= 1


def test_a_running_server_as_the_target(tmp_path):
    """--target: the command starts nothing; it loads the server it is pointed at."""
    from tests.helpers import switchboard

    env = {"SWITCHBOARD_SIP__RTP_PORT_MIN": "14600", "SWITCHBOARD_SIP__RTP_PORT_MAX": "14800"}
    with switchboard(tmp_path, "--agent", "echo", env=env) as server:
        out = tmp_path / "remote-twilio"
        assert main(["loadtest", "twilio", "--target", f"127.0.0.1:{server.http_port}",
                     "--agent", "echo", "--calls", "2", "--rate", "4", "--listen", "1",
                     "--out", str(out)]) == 0
        r = _report(out)
        assert r["target"] == f"127.0.0.1:{server.http_port}"
        assert r["calls"]["completed"] == 2 and r["response_latency_ms"]["n"] == 2
        assert r["server"]["calls_by_outcome"] == {"remote_stop": 2}
        assert not (out / "server.log").exists()  # no server of its own
        if shutil.which("sipp") and shutil.which("dumpcap"):
            out = tmp_path / "remote-sip"
            assert main(["loadtest", "sip", "--target", f"127.0.0.1:{server.sip_port}",
                         "--metrics-url", f"http://127.0.0.1:{server.http_port}/metrics",
                         "--rtp-ports", "14600-14800", "--agent", "echo", "--calls", "2",
                         "--rate", "4", "--hold", "3", "--out", str(out)]) == 0
            r = _report(out)
            assert r["calls"]["completed"] == 2 and r["response_latency_ms"]["n"] == 2
            assert r["server"]["calls_by_outcome"] == {"remote_bye": 2}
