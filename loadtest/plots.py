"""The report's PNG plots (matplotlib, Agg backend: no display needed).

latency_histogram.png: the calls' measured response latency (ms), one bar per bin.
timeline.png: response latency of each call at the time it was measured, above the
active calls over time (the load generator's count and the server's calls_active).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

__all__ = ["latency_histogram", "timeline"]


def latency_histogram(report: dict[str, Any], path: Path) -> Path:
    values = [c["latency_ms"] for c in report["per_call"] if c.get("latency_ms") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if values:
            ax.hist(values, bins=min(30, max(5, len(values))), color="#4477aa",
                    edgecolor="white")
            for key, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
                value = report["response_latency_ms"].get(key)
                if value is not None:
                    ax.axvline(value, color="#cc3311", linestyle=style, label=f"{key} {value:g}")
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no latency measured", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_xlabel(f"{report['latency_measured']} (ms)")
        ax.set_ylabel("calls")
        ax.set_title(f"Response latency, {report['mode']}, {len(values)} calls")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def timeline(report: dict[str, Any], path: Path) -> Path:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), dpi=100, sharex=True)
    try:
        points = [(c["reply_at_s"], c["latency_ms"]) for c in report["per_call"]
                  if c.get("latency_ms") is not None and c.get("reply_at_s") is not None]
        if points:
            top.plot(*zip(*points, strict=True), "o", color="#4477aa", markersize=4)
        top.set_ylabel("latency (ms)")
        top.set_title(f"Latency and active calls over time, {report['mode']}")
        client, server = report["timeline"]["client"], report["timeline"]["server"]
        if client:
            bottom.step([p["t"] for p in client], [p["active"] for p in client], where="post",
                        label="load generator", color="#228833")
        if server:
            bottom.plot([p["t"] for p in server], [p["active"] for p in server],
                        label="server calls_active", color="#cc3311", alpha=0.8)
        if client or server:
            bottom.legend()
        bottom.set_ylabel("active calls")
        bottom.set_xlabel("seconds since the run started")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
