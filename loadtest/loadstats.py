"""The numbers of a `switchboard loadtest` report: percentiles of measured samples, and
p50/p95/p99 of the server's Prometheus histograms between two scrapes. Pure functions.

Snapshots are loadtest.capacity_report.parse_prometheus dicts ('name{k="v",...}' ->
value). A histogram quantile is Prometheus' histogram_quantile: find the bucket that
holds the rank q * count and interpolate linearly inside it (from 0 for the first
bucket); a rank in the +Inf bucket is reported as the largest finite bound.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from loadtest.capacity_report import delta, total

__all__ = [
    "bucket_quantile", "histogram_summary", "labelled_buckets", "percentiles",
    "server_summary",
]

QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
P = "switchboard_"


def percentiles(values: Iterable[float]) -> dict[str, Any]:
    """n, mean, p50/p95/p99 (linear between closest ranks, as numpy's default) and max."""
    xs = sorted(float(v) for v in values if v is not None and math.isfinite(v))
    if not xs:
        return {"n": 0}
    out: dict[str, Any] = {"n": len(xs), "mean": round(sum(xs) / len(xs), 1)}
    for key, q in QUANTILES:
        pos = q * (len(xs) - 1)
        low = math.floor(pos)
        high = min(low + 1, len(xs) - 1)
        out[key] = round(xs[low] + (xs[high] - xs[low]) * (pos - low), 1)
    out["max"] = round(xs[-1], 1)
    return out


def bucket_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """Quantile q of cumulative (upper bound, count) buckets, sorted by bound."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be 0..1, got {q}")
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    low_bound, low_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > 0:
            if math.isinf(bound):
                return low_bound
            share = (rank - low_count) / (count - low_count) if count > low_count else 1.0
            return low_bound + (bound - low_bound) * share
        low_bound, low_count = bound, count
    return low_bound


def labelled_buckets(snapshot: dict[str, float], name: str,
                     by: str | None = None) -> dict[str, list[tuple[float, float]]]:
    """The buckets of histogram `name`, summed over every label except `by` and grouped
    by its value ("" when `by` is None): {value: [(le, cumulative count), ...]}."""
    groups: dict[str, dict[float, float]] = {}
    prefix = name + "_bucket{"
    for key, count in snapshot.items():
        if not key.startswith(prefix):
            continue
        labels = dict(_LABEL.findall(key[len(prefix) - 1:]))
        if "le" not in labels:
            continue
        le = math.inf if labels["le"] == "+Inf" else float(labels["le"])
        group = groups.setdefault(labels.get(by, "") if by else "", {})
        group[le] = group.get(le, 0.0) + count
    return {k: sorted(v.items()) for k, v in groups.items()}


def histogram_summary(buckets: Sequence[tuple[float, float]], total_s: float | None = None,
                      scale: float = 1000.0) -> dict[str, Any]:
    """count, mean (from the _sum, when given) and p50/p95/p99, in ms (seconds * scale)."""
    count = buckets[-1][1] if buckets else 0.0
    out: dict[str, Any] = {"n": round(count)}
    if count <= 0:
        return out
    if total_s is not None:
        out["mean"] = round(total_s / count * scale, 1)
    for key, q in QUANTILES:
        value = bucket_quantile(buckets, q)
        out[key] = None if value is None else round(value * scale, 1)
    return out


def _histograms(window: dict[str, float], name: str, by: str | None) -> dict[str, Any]:
    out = {}
    for value, buckets in sorted(labelled_buckets(window, name, by).items()):
        sums = total(window, name + "_sum", **({by: value} if by else {}))
        summary = histogram_summary(buckets, sums)
        if summary["n"]:
            out[value or "all"] = summary
    return out


def server_summary(before: dict[str, float], after: dict[str, float],
                   samples: Sequence[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """What the server's /metrics say about the run: stage, response and barge-in
    latency over the run (after - before), calls by outcome, CPU (process_cpu_seconds
    over the wall time) and resident memory (before, after, peak of the samples)."""
    if not after:
        return {"scraped": False}
    window = delta(after, before) if before else after
    rss = [s["rss_mb"] for s in samples if s.get("rss_mb") is not None]
    cpu = total(window, "process_cpu_seconds_total")
    mb = 1 / (1 << 20)
    outcomes: dict[str, int] = {}
    for key, value in window.items():
        if key.startswith(P + "calls_total{") and value:
            outcome = dict(_LABEL.findall(key)).get("outcome", "?")
            outcomes[outcome] = outcomes.get(outcome, 0) + int(value)
    return {
        "scraped": True,
        "stages_ms": _histograms(window, P + "stage_duration_seconds", "stage"),
        "response_latency_ms": _histograms(window, P + "response_latency_seconds", None).get(
            "all", {"n": 0}),
        "bargein_latency_ms": _histograms(window, P + "bargein_latency_seconds", None).get(
            "all", {"n": 0}),
        "bargeins": int(total(window, P + "bargeins_total")),
        "calls_by_outcome": outcomes,
        "cpu_pct_of_core": round(100 * cpu / wall_s, 1) if wall_s > 0 and cpu else None,
        "rss_mb": {
            "before": _round(total(before, "process_resident_memory_bytes") * mb) if before
            else None,
            "after": _round(total(after, "process_resident_memory_bytes") * mb),
            "peak": _round(max(rss)) if rss else None,
        },
    }


def _round(x: float | None) -> float | None:
    return None if x is None or not x else round(x, 1)
