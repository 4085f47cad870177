"""The running application: owns the event loop's long-lived parts and their shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import signal
import socket
import threading

from aiohttp import web

from dialplan.loader import Dialplan, load_file
from dialplan.matcher import NoRoute
from media.clock import Clock, MonotonicClock
from media.pacer import Pacer
from pipeline.leg import CallHandler, CallInfo
from pipeline.metrics import Metrics
from sip.endpoint import CallRefused, EndpointSettings
from sip.flood import MALFORMED, FloodLimits, Rate
from sip.grammar import SipParseError
from sip.message import Limits
from sip.policy import TargetPolicy, listed_targets
from sip.server import SipServer, SipServerConfig
from sip.uri import parse_hostport
from streams import StreamDoors
from switchboard.agents import Agents
from switchboard.config import Config, FloodConfig, SipConfig
from switchboard.console import ActiveCalls, Console
from switchboard.dial import OutboundCalls
from switchboard.dialplans import DialplanReloader
from switchboard.handoff import Front, adopt
from switchboard.http import add_call_routes, build_http_app
from switchboard.metrics_merge import merge_expositions
from switchboard.records.api import RecordsHttp
from switchboard.records.recorder import Recorder
from switchboard.stream_worker import WorkerRole
from switchboard.workers import WORKER_CALLS_PATH, StreamWorkers, worker_paths

log = logging.getLogger("switchboard")


class Switchboard:
    """The main process; or, with `worker`, one stream worker of it (switchboard.workers):
    the same agents, records and stream doors, no SIP, connections handed to it."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None,
                 clock: Clock | None = None, worker: WorkerRole | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.clock = clock or MonotonicClock()
        self.worker = worker
        n = config.streams.workers if worker is None else 0
        self.workers = StreamWorkers(config, n) if n > 0 else None
        self.front: Front | None = None
        self._load_report: asyncio.Task[None] | None = None
        self.http_app = build_http_app(
            self.metrics, self.readiness,
            merge=self._merged_metrics if self.workers is not None else None)
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()  # a second SIGTERM: end calls without waiting
        self._ready = False
        self.pacer: Pacer | None = None
        self.sip: SipServer | None = None
        # The dialplan (dialplan/): read and checked here, so a bad file stops the start.
        plan: Dialplan | None = load_file(config.dialplan) if config.dialplan else None
        self.agents = Agents(config, metrics=self.metrics, clock=self.clock, plan=plan)
        self.reloader = (DialplanReloader(config.dialplan, self.agents, metrics=self.metrics,
                                          poll_s=config.dialplan_poll_seconds)
                         if config.dialplan else None)
        self._lag_probe: asyncio.Task[None] | None = None
        # Calling out: trunk registration and POST /calls (switchboard.dial).
        self.outbound = OutboundCalls(config.sip, handler_for=self.handler_for,
                                      default_agent=config.agent, clock=self.clock,
                                      metrics=self.metrics, agent_names=self.agent_names)
        # Call records (switchboard.records): handler_for wraps every call's handler;
        # GET /calls and GET /calls/{id} serve them.
        self.records = (Recorder(config.records, agent=config.agent, metrics=self.metrics,
                                 clock=self.clock) if config.records.enabled else None)
        add_call_routes(self.http_app, self.outbound,
                        RecordsHttp(self.records) if self.records is not None else None,
                        tokens=(config.http.api_token, config.console.token))
        # Media-stream doors (streams/): Twilio and FreeSWITCH routes on this HTTP app;
        # the AudioSocket server starts, and calls are taken, once the pacer runs.
        streams = config.streams
        if worker is not None:  # the limit is for all workers together
            share = math.ceil(streams.max_concurrent_streams / worker.count)
            streams = streams.model_copy(update={"max_concurrent_streams": share})
        self.streams = StreamDoors(streams, handler_factory=self.handler_for,
                                   metrics=self.metrics, clock=self.clock,
                                   route_check=self.route_check)
        self.streams.add_routes(self.http_app)
        # The browser console (switchboard.console): Talk and Watch pages, its WebSocket
        # door on the stream doors' shared limits, and the list of calls up now.
        self.live = ActiveCalls(self.clock)
        if config.console.enabled:
            Console(token=config.console.token, ctx=self.streams.ctx, agents=self.agent_names,
                    calls=self.live, max_lead_ms=config.console.max_lead_ms,
                    more_calls=self.workers.active_calls if self.workers is not None else None,
                    ).add_routes(self.http_app)
        if worker is not None:
            self.http_app.router.add_get(WORKER_CALLS_PATH, self._worker_calls)

    async def _worker_calls(self, _: web.Request) -> web.Response:
        return web.json_response(self.live.snapshot())

    def handler_for(self, info: CallInfo) -> CallHandler:
        """The CallHandler that answers a call: the agent the dialplan routes it to, or
        the one CallInfo.agent names (every door uses this). No route: 404 (streams:
        closed, reason no_route), with a log line saying why."""
        extra = {"call_id": info.call_id}
        try:
            choice = self.agents.route(info)
        except NoRoute as e:
            log.warning("call %s refused with 404: %s", info.call_id, e, extra=extra)
            raise CallRefused(404, "Not Found", "no_route") from e
        try:
            handler = self.agents.make_handler(info, choice.agent)
        except Exception as e:  # engines not loaded, or failed: refuse, don't crash the door
            log.warning("call %s refused with 503: %s", info.call_id, e, extra=extra)
            raise CallRefused(503, "Service Unavailable", "unavailable", retry_after=30) from e
        log.info("call %s -> agent %s (%s)", info.call_id, choice.agent, choice.why, extra=extra)
        if self.records is not None:
            handler = self.records.wrap(info, handler, agent=choice.agent)
        return self.live.wrap(info, handler, agent=choice.agent)

    def route_check(self, info: CallInfo) -> str | None:
        """Why no agent would answer this call (None: one would). The Twilio webhook
        asks before connecting a stream, and answers <Reject> when there is none."""
        try:
            self.agents.route(info)
        except NoRoute as e:
            log.warning("%s call %s rejected: %s", info.transport, info.call_id, e,
                        extra={"call_id": info.call_id})
            return str(e)
        return None

    def agent_names(self) -> list[str]:
        """The agents a caller may pick by name (the browser console lists them): the
        dialplan's agents, or config.agent without one."""
        return self.agents.names()

    def _transfer_targets(self) -> list[str]:
        """Where the current dialplan may transfer calls: agents' transfer_to and the
        targets of their transfer actions (sip.policy allows exactly these)."""
        targets = []
        for agent in self.agents.plan.agents.values():
            targets += [agent.transfer_to] if agent.transfer_to else []
            targets += [a.target for a in agent.actions() if a.do == "transfer" and a.target]
        return targets

    async def reload_dialplan(self, why: str = "request") -> bool:
        """Read the dialplan file again (SIGHUP does this). False: refused, old plan kept."""
        if self.reloader is None:
            log.warning("reload (%s) ignored: no dialplan file configured", why)
            return False
        return await self.reloader.reload(why)

    def readiness(self) -> dict[str, object]:
        state: dict[str, object] = {**self.agents.readiness(), "agent": self.config.agent,
                                    **self.outbound.readiness()}
        if self.records is not None:
            state.update(self.records.readiness())
        if self.reloader is not None and self.reloader.last_error is not None:
            state["dialplan_reload_error"] = self.reloader.last_error
        if self.workers is not None:
            state.update(self.workers.readiness())
        state["ready"] = self._ready and bool(state.get("ready", True))
        return state

    async def _merged_metrics(self, own: bytes) -> bytes:
        assert self.workers is not None
        return merge_expositions([own.decode(), *await self.workers.metrics_texts()])

    async def _listen(self) -> None:
        http = self.config.http
        self._runner = web.AppRunner(self.http_app, access_log=None)
        await self._runner.setup()
        if self.worker is not None:  # connections come from the main process
            await web.UnixSite(self._runner, self.worker.metrics_path).start()
            return
        if self.workers is not None:
            self.front = Front(self._runner, worker_paths(), self.workers.hand_off)
            await self.front.start(http.listen, http.port)
            await self.workers.start()  # they load their models while we load ours
        else:
            await web.TCPSite(self._runner, http.listen, http.port).start()
        log.info("HTTP listening on %s:%d (/metrics, /healthz, /readyz)", http.listen, http.port)

    async def start(self) -> None:
        await self._listen()
        # Models load once per process, before the first call can arrive (seconds).
        await self.agents.start()
        if self.records is not None:
            await self.records.start()  # before the doors: the first call gets its row
        # The models and libraries loaded above are permanent: move them out of the
        # collector's sight, so a full collection no longer stalls the 20 ms pacer for
        # 25-35 ms (measured by the SIP capacity benchmark).
        gc.collect()
        gc.freeze()
        self.pacer = Pacer(self.clock, on_lateness=self.metrics.pacer_lateness_seconds.observe,
                           on_skipped=self.metrics.pacer_skipped_ticks_total.inc)
        self.pacer.start()
        if self.worker is not None:
            await self.streams.start(self.pacer, reuse_port=True)  # AudioSocket's port shared
        else:
            await self._start_sip_and_doors()
        self._lag_probe = asyncio.create_task(self._probe_loop_lag(), name="loop-lag-probe")
        self._watch_resources(asyncio.get_running_loop())
        if self.reloader is not None:
            self.reloader.start()  # new calls follow the file when it changes
            log.info("dialplan %s: %d agents, %d routes (reload: SIGHUP or edit the file)",
                     self.config.dialplan, len(self.agents.plan.agents),
                     len(self.agents.plan.routes))
        self._ready = True
        self.metrics.ready.set(1)
        if self.worker is not None:
            self._take_connections(self.worker)

    async def _start_sip_and_doors(self) -> None:
        assert self.pacer is not None
        self.sip = SipServer(_sip_server_config(self.config.sip), handler_factory=self.handler_for,
                             clock=self.clock, metrics=self.metrics, pacer=self.pacer)
        if self.sip.endpoint.targets is not None:  # the dialplan's transfer targets are allowed
            self.sip.endpoint.targets.add_rule(listed_targets(self._transfer_targets))
        await self.sip.start()
        await self.outbound.start(self.sip)
        # Stream doors share the SIP side's pacer. With workers, AudioSocket is theirs.
        await self.streams.start(self.pacer, audiosocket_server=self.workers is None)

    def _take_connections(self, role: WorkerRole) -> None:
        """A worker, ready: take connections from the main process, report the load."""
        role.ctrl.setblocking(False)
        asyncio.get_running_loop().add_reader(role.ctrl.fileno(), self._on_handoff, role)
        self._load_report = asyncio.create_task(self._report_load(role), name="worker-load")
        role.ctrl.send(b"ready")

    def _on_handoff(self, role: WorkerRole) -> None:
        """Connections from the main process (switchboard.handoff): serve each here."""
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(role.ctrl, 1 << 18, 4)
            except BlockingIOError:
                return
            except OSError as e:
                data, fds = b"", []
                log.error("worker %d: control socket: %s", role.index, e)
            if not data and not fds:  # the main process is gone: so are we
                asyncio.get_running_loop().remove_reader(role.ctrl.fileno())
                log.warning("worker %d: the main process went away; stopping", role.index)
                self.request_stop()
                return
            for extra in fds[1:]:
                socket.close(extra)
            if fds and self._runner is not None:
                conn = socket.socket(fileno=fds[0])
                asyncio.get_running_loop().create_task(adopt(self._runner, conn, data))
            elif fds:
                socket.close(fds[0])

    async def _report_load(self, role: WorkerRole, period: float = 1.0) -> None:
        """Tell the main process how many streams are open here (it picks the least)."""
        while True:
            await asyncio.sleep(period)
            try:
                role.ctrl.send(f"load {self.streams.ctx.connections}".encode())
            except BlockingIOError:
                pass
            except OSError:
                return

    async def _probe_loop_lag(self, period: float = 0.25) -> None:
        """How late a periodic wake-up runs: anything blocking the loop shows up here."""
        next_at = self.clock.now() + period
        while True:
            await self.clock.sleep_until(next_at)
            now = self.clock.now()
            self.metrics.event_loop_lag_seconds.observe(max(0.0, now - next_at))
            next_at = max(next_at + period, now)

    def _watch_resources(self, loop: asyncio.AbstractEventLoop) -> None:
        """Gauges read at scrape time (on the loop): what a leak would make grow."""
        m = self.metrics
        m.asyncio_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
        m.python_threads.set_function(threading.active_count)
        m.rtp_ports_in_use.set_function(
            lambda: self.sip.ports.in_use if self.sip is not None else 0)

    async def stop(self) -> None:
        self._refuse_new_calls()  # first: the awaits below must not leave a window
        self.metrics.ready.set(0)
        if self._load_report is not None:
            self._load_report.cancel()
            await asyncio.gather(self._load_report, return_exceptions=True)
        if self.worker is not None:
            asyncio.get_running_loop().remove_reader(self.worker.ctrl.fileno())
        if self.workers is not None:  # they drain while we do
            self.workers.signal_stop()
        if self._lag_probe is not None:
            self._lag_probe.cancel()
            await asyncio.gather(self._lag_probe, return_exceptions=True)
            self._lag_probe = None
        if self.reloader is not None:
            await self.reloader.stop()
        await self._drain()
        if self.sip is not None:
            await self.outbound.stop()  # unregister and CANCEL while the socket is open
            await self.sip.stop()  # 503 to new calls, BYE to calls in progress
            self.sip = None
        await self.streams.stop()  # refuse new streams, close live ones, stop AudioSocket
        if self.records is not None:
            await self.records.stop()  # the calls have ended: write their last rows
        if self.pacer is not None:
            await self.pacer.stop()
            self.pacer = None
        await self.agents.aclose()
        if self.workers is not None:
            await self.workers.stop(self.config.shutdown_drain_seconds + 15)
        if self.front is not None:
            await self.front.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        log.info("stopped")

    async def _drain(self) -> None:
        """Graceful shutdown, first part (new calls are already refused: stop() began
        with that): let the calls in progress end by themselves for up to
        shutdown_drain_seconds, or until a second signal. stop() then ends whatever is
        left politely (BYE, stream close)."""
        seconds = self.config.shutdown_drain_seconds
        deadline = self.clock.now() + seconds
        if busy := self._calls_in_progress():
            log.info("draining: %d calls in progress, up to %.0f s", busy, seconds)
        while (busy := self._calls_in_progress()) and not self._hurry.is_set():
            now = self.clock.now()
            if now >= deadline:
                log.info("drain time over: ending %d calls", busy)
                return
            await self.clock.sleep_until(min(deadline, now + 0.1))

    def _refuse_new_calls(self) -> None:
        """INVITE and OPTIONS get 503, new streams are refused; calls in progress go on."""
        self._ready = False
        if self.sip is not None:
            self.sip.endpoint.stop_accepting()
        self.streams.ctx.accepting = False

    def _calls_in_progress(self) -> int:
        busy = len(self.streams.ctx.legs)
        if self.sip is not None:
            busy += self.sip.endpoint.load  # answered calls and INVITEs being answered
        return busy

    def request_stop(self) -> None:
        if self._stopping.is_set():
            self._hurry.set()  # asked twice: do not wait for the calls in progress
        if self.workers is not None:  # each worker counts its signals the same way
            self.workers.signal_stop(hurry=self._hurry.is_set())
        # /readyz, OPTIONS and INVITE say no at once, together: stop() first awaits the
        # load reporter, the lag probe and the dialplan watch before it drains.
        self._refuse_new_calls()
        self._stopping.set()

    def _on_sighup(self) -> None:
        """Reload the dialplan here and in every stream worker."""
        if self.reloader is not None:
            self.reloader.request("SIGHUP")
        if self.workers is not None:
            self.workers.send_signal(signal.SIGHUP)

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        if self.reloader is not None:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
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
            callers=dict(sip.callers),
            auth_realm=sip.auth_realm,
            auth_algorithms=tuple(sip.auth_algorithms),
            nonce_ttl=sip.nonce_ttl,
            auth_secret=sip.auth_secret.encode() if sip.auth_secret else None,
        ),
        flood=_flood_limits(sip.flood, sip.trusted_networks),
        targets=_target_policy(sip),
        limits=Limits(max_message=sip.max_message_bytes),
        rtp_follow_rebinding=sip.rtp_follow_rebinding,
        tls_port=sip.tls_port, tls_cert_file=sip.tls_cert_file, tls_key_file=sip.tls_key_file,
    )


def _target_policy(sip: SipConfig) -> TargetPolicy:
    hosts: list[str] = []
    if sip.trunk is not None:
        for name in (sip.trunk.registrar, sip.trunk.domain):
            if name:
                try:
                    hosts.append(parse_hostport(name.strip())[0])
                except SipParseError:
                    pass  # the registrar is checked where the trunk is set up
    t = sip.targets
    return TargetPolicy(numbers=t.numbers, allowed=t.allowed, denied=t.denied, trunk_hosts=hosts)


def _flood_limits(flood: FloodConfig, trusted: list[str]) -> FloodLimits:
    exempt = [*flood.exempt_networks, *(trusted if flood.exempt_trusted else [])]
    return FloodLimits(
        enabled=flood.enabled,
        rates={"INVITE": Rate(flood.invite_per_second, flood.invite_burst),
               "REGISTER": Rate(flood.register_per_second, flood.register_burst),
               "OPTIONS": Rate(flood.options_per_second, flood.options_burst),
               "other": Rate(flood.other_per_second, flood.other_burst),
               MALFORMED: Rate(flood.malformed_per_second, flood.malformed_burst)},
        block_seconds=flood.block_seconds, max_sources=flood.max_sources,
        exempt_networks=tuple(dict.fromkeys(exempt)),
    )
