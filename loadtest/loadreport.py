"""The report of `switchboard loadtest`: one dict (report.json), its Markdown summary
(report.md) and the PNG plots, written into one folder.

build_report() takes what a scenario measured (calls, per-call results, timelines,
the /metrics scrapes before and after) and computes the summary: response latency and
barge-in percentiles over the calls, and the server's side (loadtest.loadstats).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from loadtest import plots
from loadtest.loadstats import percentiles, server_summary

__all__ = ["build_report", "render_markdown", "write_report"]

MEASURED = {
    "answer": "end of the question -> first loud reply frame",
    "echo": "start of the question -> first loud echo frame",
}


def build_report(*, mode: str, target: str, agent: str | None, latency_mode: str,
                 settings: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    per_call = raw["per_call"]
    for c in per_call:  # when the latency sample was taken, for the over-time plot
        start = c.get("started_s")
        q_end = (c.get("question_s") or [None, None])[1]
        if c.get("reply_onset_s") is not None:
            c["reply_at_s"] = c["reply_onset_s"]
        elif start is not None and c.get("latency_ms") is not None:
            c["reply_at_s"] = round((q_end or start) + c["latency_ms"] / 1000, 3)
    barge = [c["bargein"] for c in per_call if c.get("bargein")]
    report = {
        "mode": mode,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "target": target, "agent": agent, "cpus": os.cpu_count(),
        "latency_measured": MEASURED[latency_mode],
        "settings": settings,
        "calls": raw["calls"],
        "response_latency_ms": percentiles(c.get("latency_ms") for c in per_call),
        "calls_with_reply": sum(c.get("latency_ms") is not None for c in per_call),
        "bargein": {
            "attempted": len(barge),
            "bot_talking_at_onset": sum(bool(b.get("talking_at_onset")) for b in barge),
            "clear_received": sum(b.get("clear_ms") is not None for b in barge),
            "clear_ms": percentiles(b.get("clear_ms") for b in barge),
            "audio_stop_ms": percentiles(b.get("stop_ms") for b in barge),
        },
        "server": server_summary(raw["metrics_before"], raw["metrics_after"],
                                 raw["timeline_server"], raw["wall_s"]),
        "wall_s": round(raw["wall_s"], 1),
        "metrics_scrapes_failed": raw.get("scrapes_failed", 0),
        "per_call": per_call,
        "timeline": {"client": raw["timeline_client"], "server": raw["timeline_server"]},
    }
    if "sipp" in raw:
        report["sipp"] = raw["sipp"]
    return report


def _pct_row(name: str, p: dict[str, Any]) -> str:
    cells = [str(p.get(k, "-")) if p.get(k) is not None else "-"
             for k in ("n", "p50", "p95", "p99", "max")]
    return f"| {name} | " + " | ".join(cells) + " |"


def render_markdown(r: dict[str, Any]) -> str:
    c, s, b = r["calls"], r["server"], r["bargein"]
    failures = ", ".join(f"{k}: {v}" for k, v in c.get("failures", {}).items()) or "none"
    if c.get("failure_responses"):
        failures += " (SIP responses instead of the expected one: " + ", ".join(
            f"{k}: {v}" for k, v in c["failure_responses"].items()) + ")"
    settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
    lines = [
        f"# Switchboard load test: {r['mode']}", "",
        f"{r['created']}, target {r['target']} (agent: {r['agent'] or 'unknown'}), "
        f"{r['cpus']} CPUs on the load generator's machine, {r['wall_s']} s.", "",
        f"Settings: {settings}.", "",
        "## Calls", "",
        "| attempted | completed | failed | peak concurrent | with a reply |",
        "|---:|---:|---:|---:|---:|",
        f"| {c['attempted']} | {c['completed']} | {c['failed']} | "
        f"{c.get('peak_concurrent', '-')} | {r['calls_with_reply']} |", "",
        f"Failures: {failures}.", "",
        "## Latency (ms)", "",
        "| measure | n | p50 | p95 | p99 | max |", "|---|---:|---:|---:|---:|---:|",
        _pct_row(f"caller: {r['latency_measured']}", r["response_latency_ms"]),
    ]
    if s.get("scraped"):
        lines.append(_pct_row("server: end of speech -> first answer audio sent",
                              s["response_latency_ms"]))
        lines += [_pct_row(f"server stage: {name}", p) for name, p in s["stages_ms"].items()]
    lines += ["", "## Barge-in (ms)", ""]
    server_barge = s.get("bargein_latency_ms", {"n": 0})
    if b["attempted"] or server_barge["n"]:
        lines += [
            f"Interruptions sent: {b['attempted']}; the bot was talking at "
            f"{b['bot_talking_at_onset']} of them, `clear` received for "
            f"{b['clear_received']}; the server counted {s.get('bargeins', 0)} barge-ins.", "",
            "| measure | n | p50 | p95 | p99 | max |", "|---|---:|---:|---:|---:|---:|",
            _pct_row("caller: onset -> clear received", b["clear_ms"]),
            _pct_row("caller: onset -> reply audio stopped", b["audio_stop_ms"]),
            _pct_row("server: confirmed onset -> last bot frame sent", server_barge),
        ]
    else:
        lines.append("No interruption was sent (use --bargein).")
    lines += ["", "## Server", ""]
    if s.get("scraped"):
        rss = s["rss_mb"]
        outcomes = ", ".join(f"{k}: {v}" for k, v in s["calls_by_outcome"].items()) or "none"
        lines += [
            "| CPU % of one core (run average) | RSS MB before | after | peak |",
            "|---:|---:|---:|---:|",
            f"| {s['cpu_pct_of_core']} | {rss['before']} | {rss['after']} | {rss['peak']} |",
            "", f"Calls ended on the server, by outcome: {outcomes}.",
        ]
    else:
        lines.append("The server's /metrics were not scraped (no URL, or it did not answer).")
    lines += ["", "## Plots", "", "![latency histogram](latency_histogram.png)", "",
              "![latency and active calls over time](timeline.png)", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """report.json, report.md, latency_histogram.png and timeline.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "json": out / "report.json", "md": out / "report.md",
        "histogram": plots.latency_histogram(report, out / "latency_histogram.png"),
        "timeline": plots.timeline(report, out / "timeline.png"),
    }
    files["json"].write_text(json.dumps(report, indent=1) + "\n")
    files["md"].write_text(render_markdown(report))
    return files
