"""Smoke tests of the media-path benchmark: it runs a handful of frames end to end and
prints its table or its JSON. Nothing here looks at how long anything took."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from media import bench

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--frames", "20", "--warmup", "10", "--repeat", "2"]


def test_table_has_both_directions_and_every_codec(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main([*SMALL, "--codec", "all"]) == 0
    out = capsys.readouterr().out
    for heading in ("INBOUND", "OUTBOUND", "CALLS PER CORE"):
        assert heading in out
    for stage in ("rtp parse", "jb push", "pull", "vad", "push+resample", "encode", "rtp build"):
        assert stage in out
    rows = [line.split()[0] for line in out.splitlines() if line[:4] in ("PCMU", "PCMA", "opus")]
    # inbound + two outbound source rates + calls per core, for each codec
    assert rows.count("PCMU") == rows.count("PCMA") == rows.count("opus") == 4


def test_json_describes_every_case(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main([*SMALL, "--codec", "opus", "--audio", "synthetic", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["audio"] == "synthetic voiced signal"
    results = report["results"]
    assert [(r["direction"], r.get("source_rate")) for r in results] == [
        ("in", None),
        ("out", 16000),
        ("out", 22050),
    ]
    for r in results:
        assert r["codec"] == "opus" and r["target_us"] == 150.0
        assert set(r["whole_us"]) == {"mean", "p50", "p95", "p99", "max", "cpu"}
        assert len(r["runs_cpu_us"]) == 2
        assert all(v >= 0 for v in r["stages_us"].values())
    inbound = results[0]
    assert inbound["extra"]["stats"]["frames"] == 30  # one pull per tick, warm-up included
    assert inbound["extra"]["stats"]["decoded"] > 0
    assert all(r["extra"]["frames_out"] > 0 for r in results[1:])
    assert set(report["calls_per_core"]["opus"]) == {"out_16000", "out_22050"}


def test_network_pattern_is_fixed_by_the_seed() -> None:
    spec = bench.CODECS["PCMU"]
    pcm, _ = bench.speech(spec.sender_rate, 12.0, "synthetic")
    first = bench.inbound_traffic(spec, pcm, 500, seed=3)
    again = bench.inbound_traffic(spec, pcm, 500, seed=3)
    assert first.arrivals == again.arrivals
    assert first.sent == 500 and first.lost == 500 - len(first.arrivals)


def test_runs_as_a_module() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "media.bench",
            "--frames",
            "5",
            "--warmup",
            "5",
            "--repeat",
            "1",
            "--codec",
            "PCMA",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "PCMA" in proc.stdout and "CALLS PER CORE" in proc.stdout
