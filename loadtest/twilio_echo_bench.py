"""`python -m loadtest.twilio_echo_bench`: how many Twilio Media Streams one Switchboard
server holds against the echo agent.

For each level it starts a fresh `switchboard serve --agent echo` on loopback (with
`--workers N`, with SWITCHBOARD_STREAMS__WORKERS=N, i.e. N stream worker processes), opens
N Twilio streams (the documented connected/start/media frames, 20 ms of μ-law speech per
media message, each stream sending at real time with its own phase inside the 20 ms, as
calls that started at different moments do), runs them for the given time, sends stop,
and reports:

- dropped streams: closed by the server, failed, or missing more than 5 % of the echo;
- outbound frame-interval jitter: |gap between two consecutive media frames of a stream,
  as received, - 20 ms|, p50/p99/max over every stream after a one-second warm-up (the
  receive times are the kernel's (SO_TIMESTAMPNS), so this client's own scheduling delay
  is not in them; messages that arrive together share the later one's time);
- the server's pacer lateness (p99 from its /metrics histogram) and CPU (summed over its
  whole process tree), and this client's CPU (summed over its processes), each as % of
  one core and of the machine, and the client's CPU per stream per 20 ms.

The client is lean on purpose, as in production Twilio's side runs elsewhere while here
it shares the cores with the server: a bare asyncio.Protocol per stream (loadtest.ws_frames
frames and parses; no task or message object per frame), the media messages built from
precomputed pieces, the sockets read in one sweep per 2 ms sender tick rather than the
event loop waking for each message (BatchReader), and `--client-processes K` to spread the
streams over K processes.

It prints numbers and asserts nothing. Bounded: at most 1000 streams, 120 s per level,
loopback only. The target in the issue: zero dropped streams and p99 jitter <= 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
import numpy as np

from loadtest import ws_frames
from media.g711 import ulaw_encode
from media.resample import StreamResampler

HOST = "127.0.0.1"
MAX_STREAMS = 1000
MAX_SECONDS = 120.0
FRAME = 0.020
PHASES = 10  # sender wake-ups per 20 ms; streams are spread over them
STAGGER = 0.005  # seconds between two streams opening
PATH = "/twilio/stream"
CORES = os.cpu_count() or 1
SID = "MZ{:032x}"
CALL = "CA{:032x}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _speech_ulaw() -> list[bytes]:
    """A few seconds of speech as 160-byte μ-law frames (espeak-ng), or a warbling tone."""
    exe = shutil.which("espeak-ng")
    pcm: np.ndarray
    if exe is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "s.wav"
            subprocess.run([exe, "-w", str(path), "Thank you for calling. How can I help you "
                            "today? Please tell me in a few words."], check=True,
                           capture_output=True)
            with wave.open(str(path), "rb") as w:
                rate = w.getframerate()
                raw = w.readframes(w.getnframes())
        r = StreamResampler(rate, 8000)
        pcm = np.frombuffer(r.process(raw) + r.flush(), dtype="<i2")
    else:
        t = np.arange(8000 * 3) / 8000
        pcm = (6000 * np.sin(2 * np.pi * (300 + 100 * np.sin(3 * t)) * t)).astype("<i2")
    data = ulaw_encode(pcm.tobytes())
    data += b"\xff" * (-len(data) % 160)
    return [data[i : i + 160] for i in range(0, len(data), 160)]


MEDIA = b'{"event":"media"'
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0


@dataclass
class Stream:
    """What one stream got: the receive times of the echoed media messages."""
    index: int
    arrivals: list[float] = field(default_factory=list)
    sent: int = 0
    failed: str | None = None


class StreamProtocol(asyncio.Protocol):
    """One Twilio stream on a bare asyncio transport: the upgrade, masked text frames out,
    and a frame parser (`feed`, from data_received or from the BatchReader) that only
    notes when a media message arrives (and answers ping and close). No task per stream,
    no message objects: this client shares the machine with the server it measures, so
    it must cost little."""

    def __init__(self, stream: Stream, host: str, path: str) -> None:
        loop = asyncio.get_running_loop()
        self.stream = stream
        self.stopped = False
        self.transport: asyncio.Transport | None = None
        self.sock: socket.socket | None = None  # the transport's, when _open made it
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self._time = time.time  # the clock of the kernel's receive timestamps
        self._host, self._path = host, path
        self._key = ws_frames.new_key()
        self._upgraded = False
        self._buf = b""
        self._head: bytes | None = None  # the start of a fragmented text message
        self._close_code: int | None = None
        self._close_sent = False

    @property
    def live(self) -> bool:
        return (self.transport is not None and not self.transport.is_closing()
                and self.stream.failed is None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(ws_frames.handshake_request(self._host, self._path, self._key))

    def send_text(self, payload: bytes) -> None:
        """Straight to the socket while the transport has nothing queued (the transport
        would do the same, with more steps); what the socket does not take, and all
        while something is queued, through the transport, in order."""
        frame = ws_frames.client_frame(ws_frames.TEXT, payload)
        transport = self.transport
        assert transport is not None
        if self.sock is not None and not transport.get_write_buffer_size():
            try:
                sent = self.sock.send(frame)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fail(f"send: {exc}")
                return
            if sent == len(frame):
                return
            frame = frame[sent:]
        transport.write(frame)

    def close(self, code: int = 1000) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if not self._close_sent:
            self._close_sent = True
            self.transport.write(ws_frames.client_frame(ws_frames.CLOSE, struct.pack("!H", code)))

    def data_received(self, data: bytes) -> None:
        self.feed(data, None)

    def feed(self, data: bytes, now: float | None) -> None:
        """Bytes from the server, received at `now` (time.time(); None: just now)."""
        if self._buf:
            data = self._buf + data
            self._buf = b""
        pos = 0
        if not self._upgraded:
            try:
                n = ws_frames.check_handshake(data, self._key)
            except ws_frames.HandshakeError as exc:
                self._fail(f"connect: {exc}")
                return
            if n is None:
                self._buf = data
                return
            self._upgraded = True
            self.opened.set_result(None)
            pos = n
        parse = ws_frames.parse_frame
        while True:
            try:
                frame = parse(data, pos)
            except ValueError as exc:
                self._fail(f"receive: {exc}")
                return
            if frame is None:
                break
            fin, opcode, start, pos, key = frame
            if opcode == ws_frames.TEXT or (opcode == 0 and self._head is not None):
                head = data[start : min(pos, start + len(MEDIA))]
                if key is not None:
                    head = ws_frames.unmask(key, head)
                if opcode == 0:
                    assert self._head is not None
                    head = (self._head + head)[: len(MEDIA)]
                if fin:
                    self._head = None
                    if head == MEDIA:
                        if now is None:
                            now = self._time()
                        self.stream.arrivals.append(now)
                else:
                    self._head = head
            elif opcode & 0x8:
                payload = data[start:pos]
                if key is not None:
                    payload = ws_frames.unmask(key, payload)
                self._control(opcode, payload)
        if pos < len(data):
            self._buf = data[pos:]

    def _control(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        if opcode == ws_frames.PING:
            if not self.transport.is_closing():
                self.transport.write(ws_frames.client_frame(ws_frames.PONG, payload))
        elif opcode == ws_frames.CLOSE:
            self._close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self.close(self._close_code if self._close_code != 1005 else 1000)
            self.transport.close()

    def _fail(self, why: str) -> None:
        if self.stream.failed is None:
            self.stream.failed = why
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stopped and self.stream.failed is None:
            self.stream.failed = (f"closed by the server ({self._close_code})" if exc is None
                                  else f"receive: {exc}")
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(self.stream.failed or "closed"))
        if not self.lost.done():
            self.lost.set_result(None)


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not name it
_TIMESPEC = struct.Struct("@qq")
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


class BatchReader:
    """Reads every open stream's socket in one sweep per sender tick (2 ms) instead of
    the event loop waking for each arriving message: on this box those wake-ups were
    most of the client's CPU. Each read carries the kernel's receive time
    (SO_TIMESTAMPNS), so the arrival times lose nothing by waiting for the sweep (bytes
    of two messages that arrive in one sweep get the later one's time). A socket at its
    end or in error goes back to the event loop, which sees it and closes."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._open: dict[int, tuple[StreamProtocol, socket.socket]] = {}

    def add(self, proto: StreamProtocol, sock: socket.socket) -> None:
        assert proto.transport is not None
        if proto.transport.is_closing():
            return
        proto.transport.pause_reading()
        self._epoll.register(sock.fileno(), select.EPOLLIN)
        self._open[sock.fileno()] = (proto, sock)

    def sweep(self) -> None:
        for fd, _ in self._epoll.poll(0):
            proto, sock = self._open[fd]
            try:
                data, ancillary, _, _ = sock.recvmsg(1 << 16, _CMSG_SPACE)
            except BlockingIOError:
                continue
            except OSError as exc:
                if not proto.stopped and proto.stream.failed is None:
                    proto.stream.failed = f"receive: {exc}"
                self._release(fd)
                continue
            if not data:
                self._release(fd)
                continue
            now = None
            for level, kind, raw in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, ns = _TIMESPEC.unpack(raw)
                    now = sec + ns * 1e-9
            proto.feed(data, now)
            assert proto.transport is not None
            if proto.transport.is_closing():
                self._release(fd)

    def _release(self, fd: int) -> None:
        proto, _ = self._open.pop(fd)
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # the transport closed the socket already (a failed send), epoll forgot it
        if proto.transport is not None and not proto.transport.is_closing():
            proto.transport.resume_reading()

    def close(self) -> None:
        """Every socket back to the event loop."""
        for fd in list(self._open):
            self._release(fd)
        self._epoll.close()


async def _open(host: str, port: int, path: str, stream: Stream,
                reader: BatchReader | None = None) -> StreamProtocol | None:
    """Connect, upgrade and start one stream; then, with a `reader`, hand its socket to it."""
    loop = asyncio.get_running_loop()
    proto: StreamProtocol | None = None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), CONNECT_TIMEOUT)
        _, proto = await loop.create_connection(
            lambda: StreamProtocol(stream, f"{host}:{port}", path), sock=sock)
        proto.sock = sock
        await asyncio.wait_for(asyncio.shield(proto.opened), CONNECT_TIMEOUT)
        sid, call = SID.format(stream.index), CALL.format(stream.index)
        proto.send_text(b'{"event":"connected","protocol":"Call","version":"1.0.0"}')
        proto.send_text(json.dumps({
            "event": "start", "sequenceNumber": "1", "streamSid": sid,
            "start": {"accountSid": "AC" + "0" * 32, "streamSid": sid, "callSid": call,
                      "tracks": ["inbound"], "customParameters": {"bench": "1"},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                      "channels": 1}},
        }).encode())
        if reader is not None:
            reader.add(proto, sock)
        return proto
    except (TimeoutError, OSError) as exc:
        if stream.failed is None:
            stream.failed = f"connect: {exc or type(exc).__name__}"
        if proto is not None and proto.transport is not None:
            proto.transport.abort()
        else:
            sock.close()
        return None


async def _run_streams(indices: list[int], seconds: float, host: str, port: int,
                       frames: list[bytes], stagger: float,
                       start_at: Callable[[], Awaitable[float]]) -> list[Stream]:
    """Open the streams `indices` (one every `stagger` seconds), wait for `start_at` (a
    loop.time(), i.e. time.monotonic(), shared by every client process), send media at
    real time for `seconds` (stream i in phase i % PHASES of the 20 ms), then stop."""
    streams = [Stream(i) for i in indices]
    protos: list[StreamProtocol | None] = []
    reader = BatchReader()
    try:
        for s in streams:  # calls arrive over a few seconds, not all in one instant
            protos.append(await _open(host, port, PATH, s, reader))
            await asyncio.sleep(stagger)
            reader.sweep()
        await _send_media(protos, seconds, frames, reader, start_at)
    finally:
        reader.close()
    live = [p for p in protos if p is not None]
    for p in live:
        if p.live:
            p.stopped = True
            p.send_text(json.dumps({"event": "stop", "sequenceNumber": "0",
                                    "streamSid": SID.format(p.stream.index),
                                    "stop": {}}).encode())
            p.close()
    pending = [p.lost for p in live if not p.lost.done()]
    if pending:
        await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)
    for p in live:
        if p.transport is not None and not p.lost.done():
            p.transport.abort()
    await asyncio.sleep(0)  # let connection_lost run
    return streams


async def _send_media(protos: list[StreamProtocol | None], seconds: float,
                      frames: list[bytes], reader: BatchReader,
                      start_at: Callable[[], Awaitable[float]]) -> None:
    live = [p for p in protos if p is not None]
    # what can be made once: the tail naming each stream, the payload of each audio frame
    tails = {id(p): f'{SID.format(p.stream.index)}"}}'.encode() for p in live}
    payloads = [base64.b64encode(f).decode() for f in frames]
    groups = [[(p, tails[id(p)]) for p in live if p.stream.index % PHASES == ph]
              for ph in range(PHASES)]
    loop = asyncio.get_running_loop()
    tick = FRAME / PHASES
    starting = asyncio.ensure_future(start_at())
    while not starting.done():  # bounded by start_at's own time limit
        await asyncio.wait({starting}, timeout=tick)
        reader.sweep()
    start = starting.result()
    total = round(seconds / FRAME)
    for k in range(total):
        head = (f'{{"event":"media","sequenceNumber":"{k + 2}","media":{{"track":"inbound",'
                f'"chunk":"{k + 1}","timestamp":"{k * 20}","payload":'
                f'"{payloads[k % len(payloads)]}"}},"streamSid":"').encode()
        for ph, group in enumerate(groups):
            due = start + k * FRAME + ph * tick
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for p, tail in group:
                if p.live:
                    p.send_text(head + tail)
                    p.stream.sent += 1
            reader.sweep()
    for _ in range(round(0.5 / tick)):  # the echo's tail
        await asyncio.sleep(tick)
        reader.sweep()


def _client_process(conn: Connection, indices: list[int], seconds: float, host: str,
                    port: int, frames: list[bytes], stagger: float) -> None:
    """A client process of `--client-processes`: its share of the streams; it says when
    they are open, is told when to start, and sends back what they got and its CPU."""
    cpu0 = time.process_time()

    async def start_at() -> float:
        def handshake() -> float:
            conn.send("open")
            if not conn.poll(MAX_SECONDS):
                raise RuntimeError("no start time from the bench")
            return float(conn.recv())
        return await asyncio.get_running_loop().run_in_executor(None, handshake)

    streams = asyncio.run(_run_streams(indices, seconds, host, port, frames, stagger,
                                       start_at))
    conn.send(([(s.index, s.arrivals, s.sent, s.failed) for s in streams],
               time.process_time() - cpu0))
    conn.close()


async def _run_level(n: int, seconds: float, port: int, frames: list[bytes],
                     processes: int) -> tuple[list[Stream], float]:
    """The streams of one level, and the CPU seconds the client (all its processes)
    spent on them."""
    cpu0 = time.process_time()
    if processes == 1:

        async def start_at() -> float:
            return asyncio.get_running_loop().time() + 0.1

        streams = await _run_streams(list(range(n)), seconds, HOST, port, frames,
                                     STAGGER, start_at)
        return streams, time.process_time() - cpu0
    streams, cpu = await asyncio.get_running_loop().run_in_executor(
        None, _run_processes, n, seconds, port, frames, processes)
    return streams, cpu + time.process_time() - cpu0


def _run_processes(n: int, seconds: float, port: int, frames: list[bytes],
                   processes: int) -> tuple[list[Stream], float]:
    ctx = multiprocessing.get_context("spawn")
    conns, procs = [], []
    try:
        for j in range(processes):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_client_process, daemon=True, args=(
                theirs, list(range(j, n, processes)), seconds, HOST, port, frames,
                STAGGER * processes))
            proc.start()
            theirs.close()
            conns.append(mine)
            procs.append(proc)
        for conn in conns:  # every process has opened its streams
            if not conn.poll(60 + n * STAGGER * 2) or conn.recv() != "open":
                raise RuntimeError("a client process did not open its streams")
        start = time.monotonic() + 0.2
        for conn in conns:
            conn.send(start)
        streams: list[Stream] = []
        cpu = 0.0
        for conn in conns:
            if not conn.poll(seconds + 60):
                raise RuntimeError("a client process did not report")
            got, used = conn.recv()
            streams.extend(Stream(i, arrivals, sent, failed) for i, arrivals, sent, failed in got)
            cpu += used
        streams.sort(key=lambda s: s.index)
        return streams, cpu
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)


def _histogram_p99(metrics: str, name: str) -> float | None:
    buckets = [(float(le), float(v)) for le, v in re.findall(
        rf'^{name}_bucket{{le="([^"+]+)"}} (\S+)$', metrics, re.M)]
    count = re.search(rf"^{name}_count (\S+)$", metrics, re.M)
    if not buckets or count is None or float(count.group(1)) == 0:
        return None
    total = float(count.group(1))
    for le, v in buckets:
        if v >= 0.99 * total:
            return le
    return float("inf")


def _counter(metrics: str, name: str, labels: str = "") -> float:
    found = re.search(rf"^{name}{re.escape(labels)} (\S+)$", metrics, re.M)
    return float(found.group(1)) if found else 0.0


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds (user + system) of `root` and every process below it, by pid (the
    server's stream workers, with `--workers`). Found from each process's parent in
    /proc, as /proc/PID/task/TID/children is not in every kernel."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    tick = os.sysconf("SC_CLK_TCK")
    cpu: dict[int, float] = {}
    todo = [root]
    while todo and len(cpu) < 10_000:
        pid = todo.pop()
        try:
            fields = _stat(pid)
        except OSError:
            continue
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
        todo.extend(parents.get(pid, []))
    return cpu


def _cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def _report(n: int, seconds: float, streams: Sequence[Stream], server_cpu: float,
            client_cpu: float, metrics: str) -> dict[str, object]:
    expected = round(seconds / FRAME) - 25  # the echo starts after its delay
    jitters: list[float] = []
    dropped = []
    for s in streams:
        if s.failed is not None or len(s.arrivals) < 0.95 * expected:
            dropped.append(s)
        arr = np.asarray(s.arrivals)
        if len(arr) > 60:
            gaps = np.diff(arr[50:])  # after a one-second warm-up
            jitters.extend(np.abs(gaps - FRAME).tolist())
    j = np.asarray(jitters) * 1000 if jitters else np.zeros(1)
    lateness = _histogram_p99(metrics, "switchboard_pacer_lateness_seconds")
    frames_in = _counter(metrics, "switchboard_stream_frames_total",
                         '{direction="in",transport="twilio"}')
    concealed = _counter(metrics, "switchboard_jitter_concealed_frames_total")
    result = {
        "streams": n, "seconds": seconds, "dropped": len(dropped),
        "frames_received": int(sum(len(s.arrivals) for s in streams)),
        "frames_expected": expected * n,
        "jitter_ms_p50": round(float(np.percentile(j, 50)), 2),
        "jitter_ms_p99": round(float(np.percentile(j, 99)), 2),
        "jitter_ms_max": round(float(j.max()), 1),
        "pacer_lateness_p99_ms": None if lateness is None else round(lateness * 1000, 1),
        "concealed_pct": round(100 * concealed / frames_in, 2) if frames_in else None,
        "server_cpu_pct": round(100 * server_cpu / seconds, 1),
        "client_cpu_pct": round(100 * client_cpu / seconds, 1),
        "cores": CORES,
        "server_cpu_machine_pct": round(100 * server_cpu / seconds / CORES, 1),
        "client_cpu_machine_pct": round(100 * client_cpu / seconds / CORES, 1),
        "client_us_per_stream_tick": round(1e6 * client_cpu / (n * seconds / FRAME), 1),
    }
    if dropped:
        result["first_failure"] = dropped[0].failed or f"{len(dropped[0].arrivals)} frames"
    return result


async def _level(n: int, seconds: float, frames: list[bytes], processes: int = 1,
                 workers: int | None = None) -> dict[str, object]:
    http_port, sip_port = _free_port(), _free_port()
    env = {**os.environ, "SWITCHBOARD_HTTP__LISTEN": HOST, "SWITCHBOARD_HTTP__PORT": str(http_port),
           "SWITCHBOARD_SIP__LISTEN": HOST, "SWITCHBOARD_SIP__PORT": str(sip_port),
           "SWITCHBOARD_STREAMS__MAX_CONCURRENT_STREAMS": str(MAX_STREAMS),
           "SWITCHBOARD_LOG__LEVEL": "WARNING"}
    if workers is not None:
        env["SWITCHBOARD_STREAMS__WORKERS"] = str(workers)
    exe = str(Path(sys.executable).with_name("switchboard"))
    proc = subprocess.Popen([exe, "serve", "--agent", "echo"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://{HOST}:{http_port}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            while True:
                try:
                    async with session.get(base + "/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("switchboard did not start")
                await asyncio.sleep(0.2)
            cpu0 = _tree_cpu(proc.pid)
            streams, client_cpu = await _run_level(n, seconds, http_port, frames, processes)
            cpu1 = _tree_cpu(proc.pid)
            async with session.get(base + "/metrics") as r:
                metrics = await r.text()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    result = _report(n, seconds, streams, _cpu_used(cpu0, cpu1), client_cpu, metrics)
    result["client_processes"] = processes
    result["workers"] = workers
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[50, 100, 200, 300])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--json", action="store_true", help="one JSON object per level")
    parser.add_argument("--client-processes", type=int, default=1, metavar="K",
                        help="split the streams over K client processes (default 1)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="start the server with streams.workers = N "
                             "(SWITCHBOARD_STREAMS__WORKERS)")
    args = parser.parse_args(argv)
    if not 1 <= args.client_processes <= 16:
        parser.error("--client-processes must be 1..16")
    if args.workers is not None and not 0 <= args.workers <= 64:
        parser.error("--workers must be 0..64")
    if any(not 1 <= n <= MAX_STREAMS for n in args.streams):
        parser.error(f"--streams must be 1..{MAX_STREAMS}")
    if not 2 <= args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be 2..{MAX_SECONDS:.0f}")
    frames = _speech_ulaw()
    if not args.json:
        print(f"{'streams':>7} {'dropped':>7} {'rx/expected':>13} {'jitter p50':>10} "
              f"{'p99':>6} {'max':>7} {'pacer p99':>9} {'concealed':>9} {'server cpu':>10} "
              f"{'client cpu':>10} {f'server/{CORES} cores':>15} {f'client/{CORES} cores':>15} "
              f"{'client us/stream/20ms':>21}")
    for n in args.streams:
        r = asyncio.run(_level(n, args.seconds, frames, args.client_processes, args.workers))
        if args.json:
            print(json.dumps(r), flush=True)
            continue
        rx = f"{r['frames_received']}/{r['frames_expected']}"
        print(f"{n:>7} {r['dropped']:>7} {rx:>13} {r['jitter_ms_p50']:>8}ms "
              f"{r['jitter_ms_p99']:>4}ms {r['jitter_ms_max']:>5}ms "
              f"{r['pacer_lateness_p99_ms']!s:>7}ms {r['concealed_pct']!s:>8}% "
              f"{r['server_cpu_pct']:>9}% "
              f"{r['client_cpu_pct']:>9}% {r['server_cpu_machine_pct']:>14}% "
              f"{r['client_cpu_machine_pct']:>14}% {r['client_us_per_stream_tick']:>19}us",
              flush=True)
        if "first_failure" in r:
            print(f"        first failure: {r['first_failure']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
