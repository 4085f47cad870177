"""Numbers for loadtest.sip_capacity: what SIPp, /proc, Prometheus and dumpcap said, read
into values, and the report tables. Pure: text and numbers in, values and text out.

A Prometheus snapshot is a dict of every sample of a scrape keyed 'name{k="v",...}'
(labels sorted), so two scrapes subtract key by key (`delta`) and a histogram's
quantile is computed from its cumulative buckets as Prometheus' histogram_quantile does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Sample", "StatsError", "bucket_counts", "by_label", "cpu_usage", "delta",
    "dumpcap_dropped", "histogram_buckets", "histogram_quantile", "parse_machine_stat",
    "parse_proc_stat", "parse_prometheus", "parse_sipp_stats", "render", "render_series",
    "total",
]


_DUMPCAP_COUNTS = re.compile(r"received/dropped on interface .*: (\d+)/(\d+) \(")


class StatsError(ValueError):
    """Output of a tool that cannot be read."""


# -- /proc --------------------------------------------------------------------------------


def parse_proc_stat(text: str, clk_tck: int) -> float:
    """utime + stime, in seconds, from a /proc/<pid>/stat line (all threads)."""
    try:
        fields = text.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / clk_tck
    except (IndexError, ValueError):
        raise StatsError(f"not a /proc/<pid>/stat line: {text[:80]!r}") from None


def parse_machine_stat(text: str, clk_tck: int) -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores from /proc/stat's first ("cpu") line."""
    first = text.split("\n", 1)[0].split()
    if not first or first[0] != "cpu" or len(first) < 9:
        raise StatsError(f"not a /proc/stat cpu line: {text[:80]!r}")
    values = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(values) - values[3] - values[4]) / clk_tck, sum(values) / clk_tck


def udp_socket_drops(text: str, ports: tuple[int, int]) -> dict[int, int]:
    """Datagrams the kernel dropped per UDP socket (by inode) whose local port is in
    `ports`, from /proc/net/udp: a full receive buffer, i.e. a reader that fell behind."""
    out: dict[int, int] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 13 or ":" not in fields[1]:
            continue
        try:
            port = int(fields[1].rsplit(":", 1)[1], 16)
            inode, drops = int(fields[9]), int(fields[12])
        except ValueError:
            raise StatsError(f"not a /proc/net/udp line: {line[:80]!r}") from None
        if ports[0] <= port <= ports[1]:
            out[inode] = drops
    return out


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # monotonic seconds
    cpu: dict[str, float | None]  # CPU seconds by role (None: the process was gone)
    machine: tuple[float, float]  # busy, total
    metrics: dict[str, float]  # a Prometheus snapshot
    udp_drops: dict[int, int] = field(default_factory=dict)  # per socket, udp_socket_drops


def cpu_usage(first: Sample, last: Sample, cores: int) -> dict[str, float | None]:
    """Percent of one core and of the machine, per role, between two samples; a role
    without /proc numbers (a remote server) falls back to process_cpu_seconds_total."""
    wall = last.at - first.at
    out: dict[str, float | None] = {}
    for role, a in first.cpu.items():
        b = last.cpu.get(role)
        core = None if a is None or b is None or wall <= 0 else 100 * (b - a) / wall
        out[f"{role}_core_pct"] = core
        out[f"{role}_machine_pct"] = None if core is None else core / cores
    if out.get("server_core_pct") is None and last.metrics and wall > 0:
        used = total(delta(last.metrics, first.metrics), "process_cpu_seconds_total")
        out["server_core_pct"] = 100 * used / wall
        out["server_machine_pct"] = None  # its core count is unknown here
    span = last.machine[1] - first.machine[1]
    busy = 100 * (last.machine[0] - first.machine[0]) / span if span > 0 else None
    out["machine_busy_pct"] = busy
    ours = sum(v for k, v in out.items() if k.endswith("_machine_pct") and v is not None
               and k != "machine_busy_pct")
    out["other_machine_pct"] = None if busy is None else busy - ours
    return out


# -- Prometheus ---------------------------------------------------------------------------


def parse_prometheus(text: str) -> dict[str, float]:
    """Every sample of a Prometheus text page as a snapshot."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def total(snapshot: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in snapshot.items()
               if k.startswith(name + "{") and all(w in k for w in want))


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def histogram_buckets(snapshot: dict[str, float], name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram without other labels, in order."""
    buckets = []
    for key, count in snapshot.items():
        if key.startswith(name + "_bucket{"):
            le = key.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((math.inf if le == "+Inf" else float(le), count))
    return sorted(buckets)


def bucket_counts(snapshot: dict[str, float], name: str) -> dict[str, float]:
    """A histogram as counts per bucket ("<=0.005": n, ..., ">1.0": n), for the JSON."""
    out, below, bound = {}, 0.0, 0.0
    for bound_, count in histogram_buckets(snapshot, name):
        label = f">{bound:g}" if math.isinf(bound_) else f"<={bound_:g}"
        out[label] = count - below
        below, bound = count, bound_
    return out


def histogram_quantile(q: float, snapshot: dict[str, float], name: str) -> float | None:
    """Prometheus-style quantile of a histogram (linear within a bucket); a quantile in
    the +Inf bucket is reported as the largest finite bound."""
    buckets = histogram_buckets(snapshot, name)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    low_bound, low_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return low_bound
            share = (rank - low_count) / (count - low_count) if count > low_count else 1.0
            return low_bound + (bound - low_bound) * share
        low_bound, low_count = bound, count
    return low_bound


def by_label(snapshot: dict[str, float], name: str, label: str) -> dict[str, float]:
    """Samples of `name` summed by one label's value (non-zero only)."""
    out: dict[str, float] = {}
    for key, value in snapshot.items():
        if key.startswith(name + "{") and f'{label}="' in key and value:
            which = key.split(f'{label}="', 1)[1].split('"', 1)[0]
            out[which] = out.get(which, 0.0) + value
    return out


# -- SIPp and dumpcap --------------------------------------------------------------------


def parse_sipp_stats(text: str) -> dict[str, Any]:
    """The last row of SIPp's -trace_stat CSV (';'-separated), plus the peak CurrentCall."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise StatsError("SIPp wrote no statistics rows")
    head = lines[0].split(";")
    rows = [dict(zip(head, line.split(";"), strict=False)) for line in lines[1:]]
    last = rows[-1]

    def count(field: str) -> int:
        try:
            return int(last.get(field, "0") or 0)
        except ValueError:
            return 0

    failures = {f[6:-3]: count(f) for f in head if f.startswith("Failed") and f.endswith("(C)")
                and f != "FailedCall(C)" and count(f)}
    return {
        "attempted": count("TotalCallCreated"),
        "completed": count("SuccessfulCall(C)"),
        "failed": count("FailedCall(C)"),
        "failure_kinds": failures,
        "retransmissions": count("Retransmissions(C)"),
        "max_concurrent": max(int(r.get("CurrentCall", "0") or 0) for r in rows),
        "watchdog_major": count("WatchdogMajor(C)"),
        "watchdog_minor": count("WatchdogMinor(C)"),
        "response_time_ms": _sipp_duration_ms(last.get("ResponseTime1(C)", "")),
    }


def _sipp_duration_ms(text: str) -> float | None:
    parts = text.strip().split(":")  # HH:MM:SS:microseconds
    if len(parts) != 4:
        return None
    h, m, s, us = (int(p) for p in parts)
    return (h * 3600 + m * 60 + s) * 1e3 + us / 1e3


def dumpcap_dropped(text: str) -> int | None:
    """Packets dumpcap says it dropped, from its closing lines on stderr."""
    # "Packets received/dropped on interface 'Loopback: lo': 751/0 (pcap:0/dumpcap:0/...)"
    found = _DUMPCAP_COUNTS.search(text)
    return int(found.group(2)) if found else None


# -- tables ------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() else f"{value:.{digits}f}"
    return str(value)


def _slash(*values: Any, digits: int = 1) -> str:
    return " / ".join(_fmt(v, digits) for v in values)


def render(report: dict[str, Any]) -> str:
    """One run as a two-column table."""
    s, c, cpu, rtp, p = (report[k] for k in ("settings", "calls", "cpu", "rtp", "pacer"))
    j, whole = report["jitter"], report["jitter_whole_run"]
    failed = f"{c['failed']} {c['failure_kinds']}" if c["failure_kinds"] else c["failed"]
    rows = [
        ("calls attempted / completed / failed", _slash(c["attempted"], c["completed"], failed)),
        ("peak concurrent calls (SIPp)", c["max_concurrent"]),
        ("SIPp exit code / retransmissions", _slash(c["exit_code"], c["retransmissions"])),
        ("steady window: from / to / seconds", _slash(*report["window_s"])),
        *((f"{who} CPU % of one core / of machine",
           _slash(cpu.get(f"{role}_core_pct"), cpu.get(f"{role}_machine_pct")))
          for who, role in (("server", "server"), ("SIPp", "sipp"), ("dumpcap", "capture"))),
        ("machine busy % / of it others %",
         _slash(cpu.get("machine_busy_pct"), cpu.get("other_machine_pct"))),
        ("server RTP in / out", _slash(rtp["server_in"], rtp["server_out"])),
        ("server RTP in: lost / late / concealed",
         _slash(rtp["server_in_lost"], rtp["server_late"], rtp["server_concealed"])),
        ("server RTP sockets: datagrams dropped (window)", rtp.get("server_socket_drops")),
        ("RTP out captured / lost / capture drops",
         _slash(rtp["captured_out"], rtp["captured_out_lost"], rtp["capture_dropped"])),
        ("out interval jitter ms p50 / p95 / p99 / max",
         _slash(j["jitter_p50_ms"], j["jitter_p95_ms"], j["jitter_p99_ms"], j["jitter_max_ms"],
                digits=2)),
        ("intervals > 10 ms / worst stream p99 ms",
         _slash(j["over_10ms"], j["worst_stream_p99_ms"], digits=2)),
        ("whole run jitter ms p99 / max",
         _slash(whole["jitter_p99_ms"], whole["jitter_max_ms"], digits=2)),
        ("pacer lateness ms p50 / p99",
         _slash(p["lateness_p50_ms"], p["lateness_p99_ms"], digits=2)),
        ("pacer skipped ticks / loop lag p99 ms",
         _slash(p["skipped_ticks"], p["loop_lag_p99_ms"], digits=2)),
        ("/metrics scrapes that failed", report.get("metrics_scrapes_failed", 0)),
        ("held (none failed, p99 within target)", "yes" if report["held"] else "NO"),
    ]
    width = max(len(name) for name, _ in rows)
    head = f"{s['calls']} calls x {s['hold_s']:g} s, {s['rate_cps']:g} calls/s, {s['codec']}"
    return "\n".join([head, *(f"  {name:<{width}}  {_fmt(value)}" for name, value in rows)])


# Columns of the series table: header, value, digits.
SUMMARY: tuple[tuple[str, Any, int], ...] = (
    ("calls", lambda r: r["settings"]["calls"], 0),
    ("ok", lambda r: r["calls"]["completed"], 0),
    ("failed", lambda r: r["calls"]["failed"], 0),
    ("srv%core", lambda r: r["cpu"].get("server_core_pct"), 1),
    ("sipp%core", lambda r: r["cpu"].get("sipp_core_pct"), 1),
    ("cap%core", lambda r: r["cpu"].get("capture_core_pct"), 1),
    ("machine%", lambda r: r["cpu"].get("machine_busy_pct"), 1),
    ("in_lost", lambda r: r["rtp"]["server_in_lost"], 0),
    ("out_lost", lambda r: r["rtp"]["captured_out_lost"], 0),
    ("p50ms", lambda r: r["jitter"]["jitter_p50_ms"], 2),
    ("p95ms", lambda r: r["jitter"]["jitter_p95_ms"], 2),
    ("p99ms", lambda r: r["jitter"]["jitter_p99_ms"], 2),
    ("maxms", lambda r: r["jitter"]["jitter_max_ms"], 2),
    ("pacer99ms", lambda r: r["pacer"]["lateness_p99_ms"], 2),
    ("lag99ms", lambda r: r["pacer"]["loop_lag_p99_ms"], 2),
    ("held", lambda r: "yes" if r["held"] else "NO", 0),
)


def render_series(reports: Sequence[dict[str, Any]]) -> str:
    """Several runs, one row each."""
    rows = [[name for name, _, _ in SUMMARY]]
    rows += [[_fmt(get(r), digits) for _, get, digits in SUMMARY] for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True))
                     for row in rows)
