"""The soak run's measurements: samples of the server over time and the verdicts on them.

Pure functions over text and numbers (the runner, loadtest.soak, does the I/O): what
/proc/PID says of the process (RSS, threads, open fds and how many are sockets), what
/metrics says (asyncio tasks, Python threads, RTP ports in use, active calls), whether
each count came back to its baseline once the calls ended, and whether memory stayed
flat after the warm-up.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from loadtest.capacity_report import total

__all__ = ["COUNTS", "Sample", "analyse", "parse_status", "render", "slope_per_minute"]

# Counts that must come back to the baseline once every call has ended.
COUNTS = ("tasks", "python_threads", "rtp_ports", "calls_active", "threads", "fds", "sockets")
MEMORY_TOLERANCE_MB = 8.0  # RSS drift allowed over the second half of the run...
MEMORY_TOLERANCE_SHARE = 0.03  # ...or this share of the baseline RSS, whichever is larger


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds since the run started
    phase: str  # baseline | run | end
    rss_mb: float | None = None  # /proc (a local server only)
    threads: int | None = None  # every thread of the process, native pools included
    fds: int | None = None
    sockets: int | None = None
    tasks: int | None = None  # /metrics
    python_threads: int | None = None
    rtp_ports: int | None = None
    calls_active: int | None = None

    def get(self, name: str) -> float | None:
        value = getattr(self, name)
        return None if value is None else float(value)


def parse_status(text: str) -> tuple[float | None, int | None]:
    """(VmRSS in MB, Threads) from /proc/PID/status."""
    rss = threads = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            rss = int(value.split()[0]) / 1024  # kB
        elif key == "Threads":
            threads = int(value.strip())
    return rss, threads


def count_sockets(links: Sequence[str]) -> int:
    """How many of a process's fd links (os.readlink of /proc/PID/fd/N) are sockets."""
    return sum(1 for link in links if link.startswith("socket:"))


def metric_counts(snapshot: dict[str, float]) -> dict[str, int | None]:
    """The soak's gauges from a parsed /metrics snapshot (None: not exported)."""
    def gauge(name: str) -> int | None:
        if not any(k.startswith(name + "{") for k in snapshot):  # parse_prometheus keys
            return None
        return int(total(snapshot, name))

    return {
        "tasks": gauge("switchboard_asyncio_tasks"),
        "python_threads": gauge("switchboard_python_threads"),
        "rtp_ports": gauge("switchboard_rtp_ports_in_use"),
        "calls_active": gauge("switchboard_calls_active"),
    }


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute; None under 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var == 0:
        return None
    return 60 * sum((t - mx) * (v - my) for t, v in points) / var


def returned(baseline: Sample, end: Sample) -> dict[str, dict[str, Any]]:
    """Each count at the baseline, at its peak during the run, at the end, and whether
    it came back (end <= baseline; calls and RTP ports must be back to zero)."""
    out = {}
    for name in COUNTS:
        base, last = baseline.get(name), end.get(name)
        if base is None or last is None:
            continue
        want = 0.0 if name in ("calls_active", "rtp_ports") else base
        out[name] = {"baseline": base, "end": last, "back": last <= want}
    return out


def memory(baseline: Sample, run: Sequence[Sample], end: Sample) -> dict[str, Any]:
    """RSS after the warm-up: its drift over the second half of the run (the first half
    may still be filling caches and pools) decides whether it is flat."""
    rss = [(s.t, s.rss_mb) for s in run if s.rss_mb is not None]
    if baseline.rss_mb is None or end.rss_mb is None or not rss:
        return {}
    half = rss[len(rss) // 2:]
    slope = slope_per_minute(half)
    span_min = (half[-1][0] - half[0][0]) / 60 if len(half) > 1 else 0.0
    drift = None if slope is None else slope * span_min
    allowed = max(MEMORY_TOLERANCE_MB, MEMORY_TOLERANCE_SHARE * baseline.rss_mb)
    return {
        "baseline_mb": round(baseline.rss_mb, 1),
        "peak_mb": round(max(v for _, v in rss), 1),
        "end_mb": round(end.rss_mb, 1),
        "second_half_slope_mb_per_min": None if slope is None else round(slope, 3),
        "second_half_drift_mb": None if drift is None else round(drift, 2),
        "allowed_drift_mb": round(allowed, 1),
        "flat": None if drift is None else drift <= allowed,
    }


def peaks(run: Sequence[Sample]) -> dict[str, float]:
    out = {}
    for name in (*COUNTS, "rss_mb"):
        values = [v for s in run if (v := s.get(name)) is not None]
        if values:
            out[name] = max(values)
    return out


def analyse(baseline: Sample, run: Sequence[Sample], end: Sample,
            calls: dict[str, Any]) -> dict[str, Any]:
    back = returned(baseline, end)
    mem = memory(baseline, run, end)
    leaked = sorted(name for name, v in back.items() if not v["back"])
    ok = (not leaked and calls.get("failed", 1) == 0 and calls.get("completed", 0) > 0
          and mem.get("flat") is not False)
    return {"calls": calls, "returned": back, "leaked": leaked, "memory": mem,
            "peaks": peaks(run), "ok": ok}


def series(samples: Sequence[Sample], rows: int = 12) -> list[Sample]:
    """At most `rows` samples, evenly spread, the first and last always in."""
    if len(samples) <= rows:
        return list(samples)
    step = (len(samples) - 1) / (rows - 1)
    return [samples[round(i * step)] for i in range(rows)]


def render(report: dict[str, Any]) -> str:
    """The human summary: the series, then calls, counts and memory."""
    names = [f.name for f in fields(Sample)]
    lines = ["  ".join(f"{n:>14}" for n in names)]
    for s in series([Sample(**d) for d in report["samples"]]):
        cells = [f"{v:.1f}" if isinstance(v, float) else "-" if v is None else str(v)
                 for v in asdict(s).values()]
        lines.append("  ".join(f"{c:>14}" for c in cells))
    c = report["calls"]
    lines.append(f"calls: attempted {c.get('attempted')}, completed {c.get('completed')}, "
                 f"failed {c.get('failed')}" + (f" {c['failure_kinds']}"
                                                if c.get("failure_kinds") else "")
                 + (f"; a reply heard in {c['answered']}" if "answered" in c else ""))
    if report.get("server_outcomes"):
        lines.append(f"server outcomes: {json.dumps(report['server_outcomes'])}")
    for name, v in report["returned"].items():
        peak = report["peaks"].get(name)
        lines.append(f"{name:>15}: baseline {v['baseline']:g}, peak {peak:g}, end "
                     f"{v['end']:g} -> {'back' if v['back'] else 'NOT BACK (leak?)'}")
    m = report["memory"]
    if m:
        lines.append(f"memory: baseline {m['baseline_mb']} MB, peak {m['peak_mb']} MB, end "
                     f"{m['end_mb']} MB; second half drift {m['second_half_drift_mb']} MB "
                     f"({m['second_half_slope_mb_per_min']} MB/min, allowed "
                     f"{m['allowed_drift_mb']}) -> {'flat' if m['flat'] else 'GROWING'}")
    lines.append("verdict: " + ("OK" if report["ok"] else "FAILED"))
    return "\n".join(lines)
