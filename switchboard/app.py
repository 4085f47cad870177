"""The running application: owns the event loop's long-lived parts and their shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from media.clock import Clock, MonotonicClock
from media.pacer import Pacer
from pipeline.echo import EchoHandler
from pipeline.leg import CallHandler, CallInfo
from pipeline.metrics import Metrics
from sip.endpoint import CallRefused, EndpointSettings
from sip.server import SipServer, SipServerConfig
from switchboard.config import Config, SipConfig
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
        self.pacer: Pacer | None = None
        self.sip: SipServer | None = None

    def handler_for(self, info: CallInfo) -> CallHandler:
        """The CallHandler that answers a call, by config.agent."""
        if self.config.agent == "echo":
            return EchoHandler()
        log.warning("call %s refused with 503: agent %r is not available in this build",
                    info.call_id, self.config.agent)
        raise CallRefused(503, "Service Unavailable", "unavailable", retry_after=60)

    def readiness(self) -> dict[str, object]:
        return {"ready": self._ready, "agent": self.config.agent}

    async def start(self) -> None:
        http = self.config.http
        self._runner = web.AppRunner(self.http_app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, http.listen, http.port)
        await site.start()
        log.info("HTTP listening on %s:%d (/metrics, /healthz, /readyz)", http.listen, http.port)
        self.pacer = Pacer(self.clock, on_lateness=self.metrics.pacer_lateness_seconds.observe)
        self.pacer.start()
        self.sip = SipServer(_sip_server_config(self.config.sip), handler_factory=self.handler_for,
                             clock=self.clock, metrics=self.metrics, pacer=self.pacer)
        await self.sip.start()
        if self.config.agent != "echo":
            log.warning("agent %r is not available yet: SIP calls will be refused with 503",
                        self.config.agent)
        self._ready = True
        self.metrics.ready.set(1)

    async def stop(self) -> None:
        self._ready = False
        self.metrics.ready.set(0)
        if self.sip is not None:
            await self.sip.stop()  # 503 to new calls, BYE to calls in progress
            self.sip = None
        if self.pacer is not None:
            await self.pacer.stop()
            self.pacer = None
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


def _sip_server_config(sip: SipConfig) -> SipServerConfig:
    return SipServerConfig(
        listen=sip.listen,
        port=sip.port,
        transports=tuple(sip.transports),
        rtp_port_min=sip.rtp_port_min,
        rtp_port_max=sip.rtp_port_max,
        media_timeout=sip.media_timeout,
        timer_t1=sip.timer_t1,
        timer_t2=sip.timer_t2,
        endpoint=EndpointSettings(
            codecs=tuple(sip.codecs),
            max_calls=sip.max_calls,
            trusted_networks=tuple(sip.trusted_networks),
            ring_seconds=sip.ring_seconds,
            advertised_address=sip.advertised_address,
            user_agent=sip.user_agent,
        ),
    )
