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

The client (loadtest.twilio_stream_client) is lean on purpose, as in production Twilio's
side runs elsewhere while here it shares the cores with the server; `--client-processes
K` spreads the streams over K processes. This module starts the server, runs the levels
and reports.

`--repeat R` runs each level R times, each against a fresh server, and adds a line: in
how many runs it held, and the median and range of p99 jitter and server CPU (on a
shared VM one run is not a verdict: p99 at 200 streams has ranged 6-20 ms).

It prints numbers and asserts nothing. Bounded: at most 1000 streams, 120 s per level,
loopback only. The target in the issue: zero dropped streams and p99 jitter <= 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
import numpy as np

from loadtest.stopping import end_on_sigterm
from loadtest.twilio_stream_client import FRAME, Stream, run_streams
from media.g711 import ulaw_encode
from media.resample import StreamResampler

HOST = "127.0.0.1"
MAX_STREAMS = 1000
MAX_SECONDS = 120.0
STAGGER = 0.005  # seconds between two streams opening
CORES = os.cpu_count() or 1


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

    streams = asyncio.run(run_streams(indices, seconds, host, port, frames, stagger,
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

        streams = await run_streams(list(range(n)), seconds, HOST, port, frames,
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


def histogram_p99_ms(metrics: str, name: str) -> float | str | None:
    """The bucket bound holding the 99th percentile of a seconds histogram, in ms;
    ">B" when it lies past the last finite bucket B (json has no infinity)."""
    buckets = [(float(le), float(v)) for le, v in re.findall(
        rf'^{name}_bucket{{le="([^"+]+)"}} (\S+)$', metrics, re.M)]
    count = re.search(rf"^{name}_count (\S+)$", metrics, re.M)
    if not buckets or count is None or float(count.group(1)) == 0:
        return None
    total = float(count.group(1))
    for le, v in buckets:
        if v >= 0.99 * total:
            return round(le * 1000, 1)
    return f">{buckets[-1][0] * 1000:g}"


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
    lateness = histogram_p99_ms(metrics, "switchboard_pacer_lateness_seconds")
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
        "pacer_lateness_p99_ms": lateness,
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


def held(r: dict[str, object], max_p99_ms: float = 10.0) -> bool:
    """The issue's bar for one run: no stream dropped and p99 jitter <= 10 ms."""
    return r["dropped"] == 0 and float(r["jitter_ms_p99"]) <= max_p99_ms  # type: ignore[arg-type]


def summarise_runs(runs: Sequence[dict[str, object]]) -> dict[str, object]:
    """Repeated runs of one level: on a shared VM one run is not a verdict, so say in how
    many it held, and the spread of p99 jitter and server CPU."""
    p99 = sorted(float(r["jitter_ms_p99"]) for r in runs)  # type: ignore[arg-type]
    cpu = sorted(float(r["server_cpu_pct"]) for r in runs)  # type: ignore[arg-type]
    return {
        "streams": runs[0]["streams"], "runs": len(runs),
        "held_runs": sum(1 for r in runs if held(r)),
        "dropped_max": max(int(r["dropped"]) for r in runs),  # type: ignore[call-overload]
        "jitter_ms_p99_median": float(np.median(p99)), "jitter_ms_p99_range": [p99[0], p99[-1]],
        "server_cpu_pct_median": float(np.median(cpu)), "server_cpu_pct_range": [cpu[0], cpu[-1]],
    }


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
    parser.add_argument("--repeat", type=int, default=1, metavar="R",
                        help="run each level R times (a fresh server each) and summarise")
    args = parser.parse_args(argv)
    end_on_sigterm()  # kill/pkill still stops the server this started
    if not 1 <= args.repeat <= 10:
        parser.error("--repeat must be 1..10")
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
        runs = []
        for _ in range(args.repeat):
            runs.append(asyncio.run(_level(n, args.seconds, frames, args.client_processes,
                                           args.workers)))
            _print_run(runs[-1], args.json)
        if args.repeat > 1:
            _print_summary(summarise_runs(runs), args.json)
    return 0


def _print_summary(s: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"summary": True, **s}), flush=True)
        return
    lo, hi = s["jitter_ms_p99_range"]  # type: ignore[misc]
    clo, chi = s["server_cpu_pct_range"]  # type: ignore[misc]
    print(f"{s['streams']:>7} streams: held in {s['held_runs']} of {s['runs']} runs; "
          f"p99 jitter median {s['jitter_ms_p99_median']:.1f} ms ({lo}-{hi}); server CPU "
          f"median {s['server_cpu_pct_median']:.1f}% of a core ({clo}-{chi}); "
          f"most dropped {s['dropped_max']}", flush=True)


def _print_run(r: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(r), flush=True)
        return
    n = r["streams"]
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


if __name__ == "__main__":
    sys.exit(main())
