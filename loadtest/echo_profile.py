"""`python -m loadtest.echo_profile`: what one echo call costs the server per 20 ms tick,
and where that time goes.

    python -m loadtest.echo_profile --calls 300 --seconds 15 [--codec PCMU] [--json out.json]

N RtpSessions with the echo agent run in this process as `switchboard serve` runs them:
real loopback sockets, one Pacer on the monotonic clock, real metrics. The SIP side is
left out (a call costs it a handful of messages, at setup and teardown). A child process
plays the callers, as SIPp does: one G.711 packet of speech to every session every 20 ms,
all from one socket; the sessions send back to a socket nobody reads.

After a warm-up, one window without a profiler gives the CPU per call per tick (this
process only: the child's sending is the callers' cost) and the pacer's lateness; a
second window under cProfile gives the functions with the most time of their own,
scaled to microseconds per call per tick (cProfile itself roughly doubles the cost, so
read the shares, and the first window for the absolute figure).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import multiprocessing
import pstats
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

TICK = 0.020
_RTP = struct.Struct("!BBHII")
_PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8}


class _Leg:
    """The part of SipCall the echo handler uses: send_audio goes to the session."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.reason: str | None = None

    def send_audio(self, pcm: bytes, rate: int, mark: str | None = None) -> None:
        if self.reason is None:
            self.session.send_audio(pcm, rate, mark)

    def send_dtmf(self, digits: str) -> None:
        self.session.send_dtmf(digits)


def _feed(ports: list[int], seconds: float, codec: str) -> None:
    """The callers (a child process): speech to every port, one packet each per 20 ms."""
    from media import g711
    from media.bench import frames_of, speech

    pcm, _ = speech(8000, 10.0)
    encode = g711.ulaw_encode if codec == "PCMU" else g711.alaw_encode
    payloads = [encode(frame) for frame in frames_of(pcm, 8000)]
    pt = _PAYLOAD_TYPES[codec]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    start = time.monotonic()
    n = 0
    while n * TICK < seconds:
        wait = start + n * TICK - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        payload = payloads[n % len(payloads)]
        for i, port in enumerate(ports):
            header = _RTP.pack(0x80, pt, n & 0xFFFF, (n * 160) & 0xFFFFFFFF, i + 1)
            sock.sendto(header + payload, ("127.0.0.1", port))
        n += 1


def _sink() -> tuple[list[socket.socket], int]:
    """A bound RTP/RTCP port pair that is never read: the far end of every session."""
    for _ in range(100):
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp.bind(("127.0.0.1", 0))
        port = rtp.getsockname()[1]
        rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rtcp.bind(("127.0.0.1", port + 1))
        except OSError:
            rtp.close()
            rtcp.close()
            continue
        return [rtp, rtcp], port
    raise RuntimeError("no free UDP port pair on 127.0.0.1")


async def measure(calls: int, seconds: float, warmup: float, codec: str,
                  rtp_base: int = 26000) -> dict[str, Any]:
    from media.clock import MonotonicClock
    from media.pacer import Pacer
    from pipeline.echo import EchoHandler
    from pipeline.metrics import Metrics
    from sip.ports import PortAllocator
    from sip.rtp_session import MediaParams, RtpSession

    clock, metrics = MonotonicClock(), Metrics()
    lateness: list[float] = []

    def on_lateness(late: float) -> None:  # the server's hook, plus a copy for percentiles
        lateness.append(late)
        metrics.pacer_lateness_seconds.observe(late)

    pacer = Pacer(clock, on_lateness=on_lateness,
                  on_skipped=metrics.pacer_skipped_ticks_total.inc)
    sinks, sink_port = _sink()
    ports = PortAllocator(rtp_base, rtp_base + 4 * calls + 64)
    params = MediaParams("127.0.0.1", sink_port, codec=codec, payload_type=_PAYLOAD_TYPES[codec])
    sessions = []
    for _ in range(calls):
        handler = EchoHandler()
        session = await RtpSession.open(params, local_host="127.0.0.1", ports=ports,
                                        clock=clock, pacer=pacer, metrics=metrics)
        session.on_frame = handler.on_frame
        await handler.on_start(_Leg(session))  # type: ignore[arg-type]
        sessions.append(session)
    pacer.start()
    feeder = multiprocessing.get_context("spawn").Process(
        target=_feed, args=([s.local_port for s in sessions], warmup + 2 * seconds + 3, codec),
        daemon=True)
    feeder.start()
    try:
        await asyncio.sleep(warmup)
        plain = await _window(pacer, lateness, seconds, calls, None)
        profiler = cProfile.Profile()
        profiled = await _window(pacer, lateness, seconds, calls, profiler)
    finally:
        feeder.terminate()
        feeder.join(5)
        for session in sessions:
            session.close()
        await pacer.stop()
        for sock in sinks:
            sock.close()
    received = sum(s.stats.packets_in for s in sessions)
    top, stages = _top(profiler, calls * profiled["ticks"])
    return {"calls": calls, "codec": codec, "window_s": seconds, "plain": plain,
            "profiled": profiled, "packets_in": received,
            "top": top, "stages": stages}


async def _window(pacer: Any, lateness: list[float], seconds: float, calls: int,
                  profiler: cProfile.Profile | None) -> dict[str, Any]:
    # Ticks run (not tick indices: those also count ticks skipped after a stall).
    tick0, late0 = pacer.stats.ticks, len(lateness)
    skipped0, wall0, cpu0 = pacer.stats.skipped, time.monotonic(), time.process_time()
    if profiler is not None:
        profiler.enable()
    await asyncio.sleep(seconds)
    if profiler is not None:
        profiler.disable()
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    ticks = max(1, pacer.stats.ticks - tick0)
    late = np.array(lateness[late0:]) * 1e3
    return {
        "ticks": ticks,
        "cpu_core_pct": 100 * cpu / wall,
        "us_per_call_tick": cpu / (calls * ticks) * 1e6,
        "calls_per_core_at_100pct": TICK / (cpu / (calls * ticks)),
        "pacer_lateness_ms": {f"p{q}": float(np.percentile(late, q)) for q in (50, 99)}
        | {"max": float(late.max())} if late.size else {},
        "skipped_ticks": pacer.stats.skipped - skipped0,
    }


# Where a call's tick goes, as cumulative time of these functions: (label, file, function).
# A function named twice in a file (resample.py's outer and inner process) counts once,
# by its largest cumulative time.
STAGES = (
    ("receive RTP (asyncio read -> datagram_received)", "selector_events.py", "_read_ready"),
    ("pacer tick, per session", "rtp_session.py", "tick"),
    ("  inbound pull: jitter buffer, decode, PLC, 8->16 kHz", "inbound.py", "pull"),
    ("  echo on_frame -> outbound push, 16->8 kHz", "echo.py", "on_frame"),
    ("  send: encode, RTP packet, sendto", "rtp_session.py", "_send_next"),
    ("resampling, both directions", "resample.py", "process"),
    ("sendto system call", "~", "<method 'sendto' of '_socket.socket' objects>"),
    ("G.711 loss concealment", "plc.py", "frame_ok"),
    ("G.711 loss concealment (lost frames)", "plc.py", "conceal"),
    ("idle: waiting in epoll", "~", "<method 'poll' of 'select.epoll' objects>"),
)
_IDLE = frozenset({"<method 'poll' of 'select.epoll' objects>",
                   "<method 'select' of 'select.epoll' objects>"})


def _top(profiler: cProfile.Profile, call_ticks: int,
         count: int = 40) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Functions by own time and the STAGES, in µs per call per tick; shares are of the
    busy time (cProfile times are wall-clock, so epoll's includes the idle wait)."""
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = []
    cum: dict[tuple[str, str], float] = {}
    for (path, line, func), (_, ncalls, tottime, cumtime, _) in stats.items():
        where = f"{Path(path).parent.name}/{Path(path).name}:{line}" if line else path
        rows.append({"function": f"{func} ({where})", "own_us": tottime / call_ticks * 1e6,
                     "cum_us": cumtime / call_ticks * 1e6, "per_tick": ncalls / call_ticks,
                     "idle": func in _IDLE})
        key = (Path(path).name, func)
        cum[key] = max(cum.get(key, 0.0), cumtime / call_ticks * 1e6)
    busy = sum(r["own_us"] for r in rows if not r["idle"]) or 1.0
    rows.sort(key=lambda r: r["own_us"], reverse=True)
    for r in rows:
        r["share_pct"] = None if r["idle"] else 100 * r["own_us"] / busy
    stages = [{"stage": label, "cum_us": cum.get((file, func), 0.0),
               "share_pct": None if func in _IDLE else 100 * cum.get((file, func), 0.0) / busy}
              for label, file, func in STAGES]
    return rows[:count], stages


def render(report: dict[str, Any], count: int) -> str:
    plain = report["plain"]
    late = plain["pacer_lateness_ms"]
    lines = [
        f"{report['calls']} echo calls ({report['codec']}), {report['window_s']:g} s windows, "
        f"{report['packets_in']} RTP packets received",
        f"  unprofiled: {plain['us_per_call_tick']:.1f} µs CPU per call per 20 ms tick, "
        f"{plain['cpu_core_pct']:.1f} % of one core, "
        f"~{plain['calls_per_core_at_100pct']:.0f} calls per core at 100 %",
        f"  pacer lateness p50 {late.get('p50', 0):.2f} ms, p99 {late.get('p99', 0):.2f} ms, "
        f"max {late.get('max', 0):.2f} ms; skipped ticks {plain['skipped_ticks']}",
        f"  under cProfile: {report['profiled']['us_per_call_tick']:.1f} µs per call per tick",
        "",
        f"  {'cum µs':>7} {'share':>6}  stage (µs per call per tick under cProfile; share of "
        "busy time)",
    ]
    for st in report["stages"]:
        share = "-" if st["share_pct"] is None else f"{st['share_pct']:5.1f}%"
        lines.append(f"  {st['cum_us']:7.2f} {share:>6}  {st['stage']}")
    lines += ["", f"  {'own µs':>7} {'cum µs':>7} {'share':>6} {'calls':>6}  function"]
    for r in report["top"][:count]:
        share = "idle" if r["share_pct"] is None else f"{r['share_pct']:5.1f}%"
        lines.append(f"  {r['own_us']:7.2f} {r['cum_us']:7.2f} {share:>6} "
                     f"{r['per_tick']:6.2f}  {r['function']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.echo_profile",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15.0, help="each measured window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--codec", choices=sorted(_PAYLOAD_TYPES), default="PCMU")
    parser.add_argument("--top", type=int, default=25, help="functions to list")
    parser.add_argument("--rtp-base", type=int, default=26000)
    parser.add_argument("--json", type=Path, help="write the report here as JSON")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--calls and --seconds must be positive")
    if args.rtp_base + 4 * args.calls + 64 > 65535:
        parser.error("too many calls for the ports above --rtp-base")
    logging.getLogger("media.pacer").setLevel(logging.ERROR)  # stalls are counted instead
    report = asyncio.run(measure(args.calls, args.seconds, args.warmup, args.codec,
                                 args.rtp_base))
    print(render(report, args.top))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
