"""Watching a Switchboard while a load runs: one /metrics scrape now (`scrape`), and a
background thread (`Monitor`) that scrapes every `interval` seconds until stopped or
its time limit passes, keeping calls active, CPU and resident memory per sample (for
the report's over-time plot and its peak memory). Scrapes that fail are counted.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from typing import Any

from loadtest.capacity_report import parse_prometheus, total

__all__ = ["Monitor", "scrape"]


def scrape(url: str | None, timeout: float = 10.0) -> dict[str, float]:
    """A Prometheus snapshot of `url`; {} when there is none or it does not answer."""
    if url is None:
        return {}
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return parse_prometheus(r.read().decode())
    except (OSError, ValueError):
        return {}


class Monitor:
    """Samples /metrics on a thread: {"t", "active", "cpu_s", "rss_mb"} per scrape, t
    in seconds after `start` (time.monotonic)."""

    def __init__(self, url: str | None, start: float, *, interval: float = 1.0,
                 limit_s: float = 3600.0) -> None:
        self.url, self.start, self.interval = url, start, interval
        self.limit_s = limit_s
        self.samples: list[dict[str, Any]] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loadtest-monitor", daemon=True)

    def __enter__(self) -> Monitor:
        if self.url is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    def _run(self) -> None:
        deadline = self.start + self.limit_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            at = time.monotonic()
            snap = scrape(self.url, timeout=max(0.5, self.interval * 2))
            if snap:
                self.samples.append({
                    "t": round(at - self.start, 2),
                    "active": total(snap, "switchboard_calls_active"),
                    "cpu_s": total(snap, "process_cpu_seconds_total"),
                    "rss_mb": round(total(snap, "process_resident_memory_bytes") / (1 << 20), 1),
                })
            else:
                self.failed += 1
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - at)))
