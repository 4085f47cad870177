"""Stream worker processes (streams.workers > 0): the main process's side.

One Python process runs its 20 ms media path on one core; Twilio, FreeSWITCH and
chan_websocket streams are independent calls, so N worker processes carry N times as
many. Each worker is `python -m switchboard.stream_worker`: the same Switchboard with its
agents, records and stream doors, but no SIP. The main process keeps SIP, the HTTP port
and the APIs, and hands each stream connection to a worker (switchboard.handoff).

Here: spawning the workers (each with a SOCK_SEQPACKET pair: the config goes down as the
first message, "ready" comes back, then connections go down with their descriptor),
choosing a worker for a connection (the one with the fewest handed off and not yet
closed, as far as the worker last said), restarting one that dies (its calls are lost;
new ones go to the others, or to the main process while none runs), reading every
worker's /metrics for the merged exposition, and stopping them with the main process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from switchboard.config import Config

log = logging.getLogger(__name__)

__all__ = ["StreamWorkers"]

_READY_TIMEOUT = 300.0  # models load in each worker: minutes on a slow disk
_RESTART_MIN, _RESTART_MAX = 1.0, 30.0


@dataclass
class _Worker:
    index: int
    metrics_path: str
    ctrl: socket.socket | None = None
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # ready, or its start failed
    handed: int = 0  # connections handed off since the worker last reported its load
    load: int = 0  # streams the worker last reported open
    restarts: int = 0

    @property
    def alive(self) -> bool:
        return self.ready.is_set() and self.proc is not None and self.proc.returncode is None


class StreamWorkers:
    def __init__(self, config: Config, count: int) -> None:
        if count < 1:
            raise ValueError(f"stream workers: need at least 1, got {count}")
        self._config_json = config.model_dump_json().encode()
        self._dir = tempfile.mkdtemp(prefix="switchboard-workers-")
        self._workers = [_Worker(i, str(Path(self._dir) / f"worker-{i}.sock"))
                         for i in range(count)]
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- lifetime ------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn every worker; returns once each is ready or has failed its first start
        (a bad config fails at once: it is logged and retried, not waited for)."""
        for w in self._workers:
            self._tasks.append(asyncio.create_task(self._supervise(w),
                                                   name=f"stream-worker-{w.index}"))
        waits = [asyncio.create_task(w.settled.wait()) for w in self._workers]
        _, pending = await asyncio.wait(waits, timeout=_READY_TIMEOUT)
        for t in pending:
            t.cancel()
        log.info("stream workers: %d of %d ready", self.running, len(self._workers))

    async def _supervise(self, w: _Worker) -> None:
        delay = _RESTART_MIN
        while not self._stopping:
            try:
                await self._run_one(w)
            except OSError as e:
                log.error("stream worker %d: could not start: %s", w.index, e)
            w.settled.set()
            if self._stopping:
                return
            w.restarts += 1
            log.error("stream worker %d exited (code %s); its streams are gone; restarting "
                      "in %.0f s", w.index, w.proc.returncode if w.proc else None, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESTART_MAX)

    async def _run_one(self, w: _Worker) -> None:
        w.ready.clear()
        w.handed = w.load = 0
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with contextlib.closing(child):
            w.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "switchboard.stream_worker", str(child.fileno()),
                str(w.index), str(len(self._workers)), w.metrics_path,
                pass_fds=(child.fileno(),), start_new_session=True,  # Ctrl-C is ours to pass on
                stdin=asyncio.subprocess.DEVNULL)
        parent.setblocking(False)
        w.ctrl = parent
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(parent, self._config_json)
            loop.add_reader(parent.fileno(), self._on_message, w)
            await w.proc.wait()
        finally:
            w.ready.clear()
            loop.remove_reader(parent.fileno())
            w.ctrl = None
            parent.close()

    def _on_message(self, w: _Worker) -> None:
        """The worker says it is ready, or how many streams it has open."""
        assert w.ctrl is not None
        while True:
            try:
                msg = w.ctrl.recv(256)
            except BlockingIOError:
                return
            except OSError:
                msg = b""
            if not msg:  # it closed its end: it is going; _run_one sees the exit
                asyncio.get_running_loop().remove_reader(w.ctrl.fileno())
                return
            if msg == b"ready":
                log.info("stream worker %d ready (pid %d)", w.index, w.proc.pid if w.proc else 0)
                w.ready.set()
                w.settled.set()
            elif msg.startswith(b"load "):
                with contextlib.suppress(ValueError):
                    w.load, w.handed = int(msg[5:]), 0

    def signal_stop(self, hurry: bool = False) -> None:
        """Pass a stop request on as SIGTERM (once; again with `hurry`: a worker, like
        the main process, ends its calls without waiting when asked twice)."""
        if self._stopping and not hurry:
            return
        self._stopping = True
        self.send_signal(signal.SIGTERM)

    def send_signal(self, sig: int) -> None:
        """To every running worker (SIGHUP: reload the dialplan)."""
        for w in self._workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    async def stop(self, timeout: float) -> None:
        """Stop the workers (they drain their streams), kill any left after `timeout`."""
        self.signal_stop()
        procs = [w.proc for w in self._workers if w.proc is not None]
        waits = [asyncio.create_task(p.wait()) for p in procs if p.returncode is None]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            if pending:
                log.warning("stream workers: %d still running after %.0f s; killed",
                            len(pending), timeout)
                for p in procs:
                    if p.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            p.kill()
                await asyncio.wait(pending, timeout=5)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- connections ---------------------------------------------------------------------

    def hand_off(self, sock: socket.socket, initial: bytes) -> bool:
        """Send this connection to the least loaded worker; False if none could take it."""
        for w in sorted((w for w in self._workers if w.alive), key=lambda w: w.load + w.handed):
            assert w.ctrl is not None
            try:
                socket.send_fds(w.ctrl, [initial], [sock.fileno()])
            except OSError as e:  # full or gone: try the next
                log.warning("stream worker %d: handing a connection failed: %s", w.index, e)
                continue
            w.handed += 1
            return True
        return False

    # -- state ---------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return sum(1 for w in self._workers if w.alive)

    def readiness(self) -> dict[str, object]:
        return {"stream_workers": {
            "configured": len(self._workers), "running": self.running,
            "restarts": sum(w.restarts for w in self._workers),
            "streams": {str(w.index): w.load + w.handed for w in self._workers if w.alive},
        }}

    async def fetch_all(self, path: str, timeout: float = 2.0) -> list[str]:
        """GET `path` from every running worker over its private Unix socket; a worker
        that does not answer in time is left out (and logged)."""
        async def one(w: _Worker) -> str | None:
            connector = aiohttp.UnixConnector(path=w.metrics_path)
            try:
                async with aiohttp.ClientSession(connector=connector) as session, \
                        session.get(f"http://worker{path}",
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                    return await r.text() if r.status == 200 else None
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                log.warning("stream worker %d: %s: %s", w.index, path, e)
                return None

        texts = await asyncio.gather(*(one(w) for w in self._workers if w.alive))
        return [t for t in texts if t is not None]

    async def metrics_texts(self) -> list[str]:
        """Each running worker's /metrics exposition."""
        return await self.fetch_all("/metrics")

    async def active_calls(self) -> list[dict[str, object]]:
        """The calls up in every running worker (for the console's Watch page)."""
        calls: list[dict[str, object]] = []
        for text in await self.fetch_all(WORKER_CALLS_PATH):
            calls += json.loads(text)
        return calls


# A worker's own list of its calls; served on its private Unix socket only (the main
# process hands workers the stream doors' paths, nothing else).
WORKER_CALLS_PATH = "/_worker/calls"


def worker_paths() -> frozenset[str]:
    """The WebSocket stream doors' paths: connections to these go to a worker."""
    from streams import asterisk_ws, freeswitch, twilio

    return frozenset({twilio.STREAM_PATH, freeswitch.PATH, asterisk_ws.PATH})
