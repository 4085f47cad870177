"""`python -m loadtest.twilio_echo_bench`: how many Twilio Media Streams one Switchboard
process holds against the echo agent.

For each level it starts a fresh `switchboard serve --agent echo` on loopback, opens N
Twilio streams (the documented connected/start/media frames, 20 ms of μ-law speech per
media message, each stream sending at real time with its own phase inside the 20 ms, as
calls that started at different moments do), runs them for the given time, sends stop,
and reports:

- dropped streams: closed by the server, failed, or missing more than 5 % of the echo;
- outbound frame-interval jitter: |gap between two consecutive media frames of a stream,
  as received, - 20 ms|, p50/p99/max over every stream after a one-second warm-up (the
  receive times include this client's own scheduling delay, so they overstate it);
- the server's pacer lateness (p99 from its histogram) and CPU, and this client's CPU.

It prints numbers and asserts nothing. Bounded: at most 1000 streams, 120 s per level,
loopback only. The target in the issue: zero dropped streams and p99 jitter <= 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from media.g711 import ulaw_encode
from media.resample import StreamResampler

HOST = "127.0.0.1"
MAX_STREAMS = 1000
MAX_SECONDS = 120.0
FRAME = 0.020
PHASES = 10  # sender wake-ups per 20 ms; streams are spread over them
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


@dataclass
class Stream:
    index: int
    ws: aiohttp.ClientWebSocketResponse | None = None
    arrivals: list[float] = field(default_factory=list)
    sent: int = 0
    failed: str | None = None
    stopped: bool = False


async def _receive(stream: Stream) -> None:
    ws = stream.ws
    assert ws is not None
    loop = asyncio.get_running_loop()
    try:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT and msg.data.startswith('{"event":"media"'):
                stream.arrivals.append(loop.time())
    except aiohttp.ClientError as exc:
        stream.failed = f"receive: {exc}"
    if not stream.stopped and stream.failed is None:
        stream.failed = f"closed by the server ({ws.close_code})"


async def _open(session: aiohttp.ClientSession, url: str, stream: Stream) -> None:
    try:
        stream.ws = await session.ws_connect(url, max_msg_size=1 << 16, autoping=True)
        sid, call = SID.format(stream.index), CALL.format(stream.index)
        await stream.ws.send_str('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        await stream.ws.send_str(json.dumps({
            "event": "start", "sequenceNumber": "1", "streamSid": sid,
            "start": {"accountSid": "AC" + "0" * 32, "streamSid": sid, "callSid": call,
                      "tracks": ["inbound"], "customParameters": {"bench": "1"},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                      "channels": 1}},
        }))
    except (aiohttp.ClientError, OSError) as exc:
        stream.failed = f"connect: {exc}"


async def _run_level(n: int, seconds: float, url: str, frames: list[bytes]) -> list[Stream]:
    streams = [Stream(i) for i in range(n)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for s in streams:  # calls arrive over a few seconds, not all in one instant
            await _open(session, url, s)
            await asyncio.sleep(0.005)
        readers = [asyncio.create_task(_receive(s)) for s in streams if s.ws is not None]
        payloads = [base64.b64encode(f).decode() for f in frames]
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.1
        total = round(seconds / FRAME)
        groups = [streams[p::PHASES] for p in range(PHASES)]
        for k in range(total):
            for p, group in enumerate(groups):
                due = start + k * FRAME + p * FRAME / PHASES
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                payload = payloads[k % len(payloads)]
                for s in group:
                    if s.ws is None or s.failed is not None or s.ws.closed:
                        continue
                    sid = SID.format(s.index)
                    try:
                        await s.ws.send_str(
                            f'{{"event":"media","sequenceNumber":"{k + 2}","media":{{"track":'
                            f'"inbound","chunk":"{k + 1}","timestamp":"{k * 20}","payload":'
                            f'"{payload}"}},"streamSid":"{sid}"}}')
                        s.sent += 1
                    except (aiohttp.ClientError, ConnectionError) as exc:
                        s.failed = f"send: {exc}"
        await asyncio.sleep(0.5)  # the echo's tail
        for s in streams:
            if s.ws is not None and not s.ws.closed:
                s.stopped = True
                try:
                    await s.ws.send_str(json.dumps({"event": "stop", "sequenceNumber": "0",
                                                    "streamSid": SID.format(s.index),
                                                    "stop": {}}))
                except (aiohttp.ClientError, ConnectionError):
                    pass  # it is ending anyway; the report counts streams by what they got
        for s in streams:
            if s.ws is not None:
                await s.ws.close()
        await asyncio.gather(*readers, return_exceptions=True)
    return streams


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


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _report(n: int, seconds: float, streams: list[Stream], server_cpu: float,
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
    }
    if dropped:
        result["first_failure"] = dropped[0].failed or f"{len(dropped[0].arrivals)} frames"
    return result


async def _level(n: int, seconds: float, frames: list[bytes]) -> dict[str, object]:
    http_port, sip_port = _free_port(), _free_port()
    env = {**os.environ, "SWITCHBOARD_HTTP__LISTEN": HOST, "SWITCHBOARD_HTTP__PORT": str(http_port),
           "SWITCHBOARD_SIP__LISTEN": HOST, "SWITCHBOARD_SIP__PORT": str(sip_port),
           "SWITCHBOARD_STREAMS__MAX_CONCURRENT_STREAMS": str(MAX_STREAMS),
           "SWITCHBOARD_LOG__LEVEL": "WARNING"}
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
            cpu0, client0 = _cpu_seconds(proc.pid), time.process_time()
            streams = await _run_level(n, seconds, f"ws://{HOST}:{http_port}/twilio/stream",
                                       frames)
            cpu1, client1 = _cpu_seconds(proc.pid), time.process_time()
            async with session.get(base + "/metrics") as r:
                metrics = await r.text()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return _report(n, seconds, streams, cpu1 - cpu0, client1 - client0, metrics)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[50, 100, 200, 300])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--json", action="store_true", help="one JSON object per level")
    args = parser.parse_args(argv)
    if any(not 1 <= n <= MAX_STREAMS for n in args.streams):
        parser.error(f"--streams must be 1..{MAX_STREAMS}")
    if not 2 <= args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be 2..{MAX_SECONDS:.0f}")
    frames = _speech_ulaw()
    if not args.json:
        print(f"{'streams':>7} {'dropped':>7} {'rx/expected':>13} {'jitter p50':>10} "
              f"{'p99':>6} {'max':>7} {'pacer p99':>9} {'concealed':>9} {'server cpu':>10} "
              f"{'client cpu':>10}")
    for n in args.streams:
        r = asyncio.run(_level(n, args.seconds, frames))
        if args.json:
            print(json.dumps(r), flush=True)
            continue
        rx = f"{r['frames_received']}/{r['frames_expected']}"
        print(f"{n:>7} {r['dropped']:>7} {rx:>13} {r['jitter_ms_p50']:>8}ms "
              f"{r['jitter_ms_p99']:>4}ms {r['jitter_ms_max']:>5}ms "
              f"{r['pacer_lateness_p99_ms']!s:>7}ms {r['concealed_pct']!s:>8}% "
              f"{r['server_cpu_pct']:>9}% "
              f"{r['client_cpu_pct']:>9}%", flush=True)
        if "first_failure" in r:
            print(f"        first failure: {r['first_failure']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
