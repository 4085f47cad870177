"""Keeping the dialplan current: reload on SIGHUP or when the file changes.

    reloader = DialplanReloader(path, agents, metrics=metrics)
    reloader.start()                 # polls the file's mtime/size/inode every `poll_s`
    await reloader.reload("SIGHUP")  # True: the new plan answers new calls from now on

A reload reads and checks the file, loads what the new plan needs (engines, phrases,
WAVs), then switches at once: new calls use the new plan, calls in progress keep the
handlers they started with. An invalid file, or one whose engines fail to load, is
refused with its errors logged, and the current plan stays. Counted in
switchboard_dialplan_reloads_total{outcome="ok"|"invalid"|"error"}.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from dialplan.loader import DialplanError, load_file
from pipeline.metrics import Metrics
from switchboard.agents import Agents

__all__ = ["DialplanReloader"]

log = logging.getLogger("switchboard.dialplan")


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class DialplanReloader:
    def __init__(self, path: str | Path, agents: Agents, *, metrics: Metrics,
                 poll_s: float = 2.0) -> None:
        self.path = Path(path)
        self.agents = agents
        self.metrics = metrics
        self.poll_s = poll_s
        self._seen = _signature(self.path)  # the file as the current plan was read
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[bool]] = set()
        self.last_error: str | None = None

    def start(self) -> None:
        if self.poll_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll(),
                                                                name="dialplan-watch")

    def request(self, why: str) -> None:
        """From a signal handler: reload soon, on its own task."""
        task = asyncio.get_running_loop().create_task(self.reload(why), name="dialplan-reload")
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._requests) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            sig = _signature(self.path)
            if sig is not None and sig != self._seen:
                await self.reload("file changed")

    async def reload(self, why: str) -> bool:
        async with self._lock:  # one reload at a time; a second waits for the first
            self._seen = _signature(self.path)
            try:
                plan = await asyncio.to_thread(load_file, self.path)
            except DialplanError as e:
                self.last_error = str(e)
                self.metrics.dialplan_reloads_total.labels(outcome="invalid").inc()
                log.error("dialplan reload (%s) refused, the current plan stays: %s", why, e)
                return False
            try:
                await self.agents.apply(plan)
            except Exception as e:
                self.last_error = f"{type(e).__name__}: {e}"
                self.metrics.dialplan_reloads_total.labels(outcome="error").inc()
                log.error("dialplan reload (%s) failed loading its agents, the current plan "
                          "stays: %s", why, self.last_error)
                return False
            self.last_error = None
            self.metrics.dialplan_reloads_total.labels(outcome="ok").inc()
            log.info("dialplan reloaded (%s): %d agents, %d routes, default %s", why,
                     len(plan.agents), len(plan.routes), plan.default or "none")
            return True
