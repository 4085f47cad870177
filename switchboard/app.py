"""The running application: owns the event loop's long-lived parts and their shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from media.clock import Clock, MonotonicClock
from pipeline.metrics import Metrics
from switchboard.config import Config
from switchboard.http import build_http_app

log = logging.getLogger("switchboard")


class Switchboard:
    def __init__(self, config: Config, *, metrics: Metrics | None = None,
                 clock: Clock | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.clock = clock or MonotonicClock()
        self.http_app = build_http_app(self.metrics, self.readiness)
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._ready = False

    def readiness(self) -> dict[str, object]:
        return {"ready": self._ready, "agent": self.config.agent}

    async def start(self) -> None:
        http = self.config.http
        self._runner = web.AppRunner(self.http_app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, http.listen, http.port)
        await site.start()
        log.info("HTTP listening on %s:%d (/metrics, /healthz, /readyz)", http.listen, http.port)
        self._ready = True
        self.metrics.ready.set(1)

    async def stop(self) -> None:
        self._ready = False
        self.metrics.ready.set(0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        log.info("stopped")

    def request_stop(self) -> None:
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            await self.stop()
