"""`python -m media.bench`: what the whole media path of one call costs per 20 ms frame.

Inbound, per 20 ms tick of the receiver's clock: every RTP packet that has arrived is
parsed (media.rtp) and pushed into InboundMedia (jitter buffer); then one pull() yields the
16 kHz frame (decode, or concealment on loss, and resampling) and the energy VAD takes it.
The arrival pattern (1 % loss, small jitter, occasional reordering) comes from media.netsim
with a fixed seed and is computed before any timing.

Outbound, per tick: 20 ms of PCM at the source rate (16 kHz from the pipeline, or 22050 Hz
straight from Piper) goes into OutboundAudio, which resamples to the wire rate and cuts
exact frames; one frame is popped, encoded and built into an RTP packet.

The audio is speech (espeak-ng when installed, else a deterministic synthetic voiced
signal), since Opus costs depend on the content. Each run builds fresh objects, warms up,
then times every frame and every stage with perf_counter_ns. All runs replay the same
input, so each frame's cost is the median of its runs (a preempted frame on a shared
machine does not count); the report gives each stage's mean of those and the whole path's
mean, p50, p95 and p99, beside the thread's CPU time per frame as a cross-check. It prints
numbers and asserts nothing about time. `--profile` shows where the time goes instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from media import g711
from media.inbound import InboundMedia
from media.l16 import pcm_to_l16_be
from media.netsim import NetConditions, NetSim
from media.opus import OpusEncoder
from media.outbound import OutboundAudio
from media.rtp import RtpPacket
from media.vad import EnergyVad

FRAME_S = 0.020
BUDGET_US = 20_000.0
PIPELINE_RATE = 16000
TTS_RATE = 22050
SOURCE_RATES = (PIPELINE_RATE, TTS_RATE)
SSRC = 0x5EB0_0001
FIRST_SEQ = 64_000  # wraps within the first ~1500 frames, as long calls do
FIRST_TS = 0xFFF0_0000  # wraps too
# The receiver's 20 ms ticks sit off the sender's grid, as two unsynchronised clocks do.
TICK_PHASE = 0.0137
# What the arrivals look like: 1 % random loss, 30 ms one-way delay, exponential jitter
# of mean 5 ms (so a packet overtakes its predecessor now and then).
NETWORK = NetConditions(loss=0.01, delay=0.030, jitter=0.005, jitter_model="exponential")

SPEECH_TEXT = (
    "Thank you for calling. Please tell me, in a few words, how I can help you today. "
    "You can ask about your order, your bill, or our opening hours. "
    "I am sorry, I did not catch that. Could you say it again, a little more slowly? "
    "Your parcel left our warehouse on Tuesday and should arrive by Friday afternoon."
)


@dataclasses.dataclass(frozen=True, slots=True)
class CodecSpec:
    name: str
    payload_type: int
    clock_rate: int  # RTP timestamp rate
    wire_rate: int  # PCM rate at the codec
    target_us: float | None  # issue's per-direction budget per 20 ms frame
    sender_rate: int  # rate the far end encodes inbound audio from

    @property
    def frame_ticks(self) -> int:
        return int(self.clock_rate * FRAME_S)

    def encoder(self, rate: int) -> Callable[[bytes], bytes]:
        if self.name == "PCMU":
            return g711.ulaw_encode
        if self.name == "PCMA":
            return g711.alaw_encode
        if self.name == "opus":
            return OpusEncoder(rate=rate).encode
        return pcm_to_l16_be


CODECS = {
    "PCMU": CodecSpec("PCMU", 0, 8000, 8000, 30.0, 8000),
    "PCMA": CodecSpec("PCMA", 8, 8000, 8000, 30.0, 8000),
    # A softphone encodes Opus from 48 kHz; we decode straight to 16 kHz and send at 16 kHz.
    "opus": CodecSpec("opus", 111, 48000, 16000, 150.0, 48000),
    "L16": CodecSpec("L16", 96, 16000, 16000, None, 16000),
}


# -- input audio -----------------------------------------------------------------------


def speech(rate: int, seconds: float, source: str = "auto") -> tuple[np.ndarray, str]:
    """`seconds` of int16 speech at `rate` (the clip looped), and what produced it."""
    clip, clip_rate, origin = None, 0, "synthetic voiced signal"
    if source != "synthetic" and shutil.which("espeak-ng"):
        clip, clip_rate = _espeak(SPEECH_TEXT)
        origin = "espeak-ng"
    elif source == "espeak":
        raise SystemExit("espeak-ng is not installed")
    if clip is None:
        clip_rate = rate
        clip = _synthetic_voice(rate, 12.0)
    if clip_rate != rate:
        clip = soxr.resample(clip, clip_rate, rate, quality="HQ")
    reps = int(np.ceil(seconds * rate / len(clip)))
    audio = np.tile(clip, reps)[: int(seconds * rate)]
    return np.clip(np.rint(audio * 32767), -32768, 32767).astype(np.int16), origin


@functools.cache
def _espeak(text: str) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        with wave.open(str(path)) as wav:
            rate = wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    audio = np.frombuffer(raw, dtype="<i2").astype(np.float64)
    return audio * (0.5 / max(1.0, float(np.abs(audio).max()))), rate  # peak at -6 dBFS


def _synthetic_voice(rate: int, seconds: float) -> np.ndarray:
    """Glottal pulses with a wandering pitch through three formants, in syllables and
    words with pauses: enough like speech to exercise the codecs and the VAD."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(7)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = 125 + 25 * np.sin(2 * np.pi * 0.6 * t) + 12 * np.sin(2 * np.pi * 3.3 * t)
    pulses = np.diff(np.floor(np.cumsum(f0 / rate)), prepend=0.0)
    signal = pulses + 0.01 * rng.standard_normal(n)
    for formant, bandwidth in ((650, 80), (1250, 100), (2600, 160)):
        r = np.exp(-np.pi * bandwidth / rate)
        theta = 2 * np.pi * min(formant, 0.45 * rate) / rate
        signal = lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], signal)
    syllables = np.abs(np.sin(2 * np.pi * 2.2 * t)) ** 0.6
    words = (t % 2.5) < 1.9  # 1.9 s of talk, 0.6 s of pause
    signal = signal * syllables * words
    return signal * (0.5 / max(1e-9, float(np.abs(signal).max())))


def frames_of(pcm: np.ndarray, rate: int) -> list[bytes]:
    step = int(rate * FRAME_S)
    return [pcm[i : i + step].tobytes() for i in range(0, len(pcm) - step + 1, step)]


# -- precomputed traffic ---------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Traffic:
    arrivals: list[tuple[float, bytes]]
    sent: int
    lost: int
    reordered: int  # arrivals with a lower sequence number than one already arrived


def inbound_traffic(spec: CodecSpec, pcm: np.ndarray, count: int, seed: int) -> Traffic:
    """The far end's RTP stream of `count` frames, encoded and sent through the simulated
    network."""
    encode = spec.encoder(spec.sender_rate)
    net = NetSim(NETWORK, seed=seed)
    sends = []
    for i, frame in enumerate(frames_of(pcm, spec.sender_rate)[:count]):
        packet = RtpPacket(
            spec.payload_type,
            (FIRST_SEQ + i) & 0xFFFF,
            (FIRST_TS + i * spec.frame_ticks) & 0xFFFF_FFFF,
            SSRC,
            encode(frame),
            marker=i == 0,
        )
        sends.append((net.send_time(i), bytes(packet)))
    arrivals = net.run(sends)
    reordered, highest = 0, -1
    for _, data in arrivals:
        seq = (int.from_bytes(data[2:4], "big") - FIRST_SEQ) & 0xFFFF
        if seq < highest:
            reordered += 1
        highest = max(highest, seq)
    return Traffic(arrivals, net.stats.sent, net.stats.lost, reordered)


# -- timed runs ------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Run:
    stage_names: tuple[str, ...]
    rows: list[tuple[int, ...]]  # per timed frame: ns of each stage, then of the whole path
    cpu_ns: int  # this thread's CPU time over the timed frames: immune to preemption
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def run_inbound(spec: CodecSpec, traffic: Traffic, warmup: int, frames: int) -> Run:
    rate = spec.wire_rate if spec.name == "L16" else None
    inbound = InboundMedia(spec.name, rate=rate, payload_type=spec.payload_type)
    vad = EnergyVad(PIPELINE_RATE)
    parse = RtpPacket.parse
    push, pull, process = inbound.push, inbound.pull, vad.process
    arrivals = traffic.arrivals
    count = len(arrivals)
    ns = time.perf_counter_ns
    rows: list[tuple[int, ...]] = []
    i = cpu = 0
    for k in range(warmup + frames):
        now = TICK_PHASE + k * FRAME_S
        if k == warmup:
            cpu = time.thread_time_ns()
        t0 = ns()
        parse_ns = push_ns = 0
        # Packets are handled as they come; the ones that came since the last tick are
        # charged to this frame.
        while i < count and arrivals[i][0] <= now:
            arrival, data = arrivals[i]
            i += 1
            a = ns()
            packet = parse(data)
            b = ns()
            push(packet, arrival)
            c = ns()
            parse_ns += b - a
            push_ns += c - b
        t1 = ns()
        frame = pull(now)
        t2 = ns()
        process(frame)
        t3 = ns()
        if k >= warmup:
            rows.append((parse_ns, push_ns, t2 - t1, t3 - t2, t3 - t0))
    cpu = time.thread_time_ns() - cpu
    names = ("rtp parse", "jb push", "pull", "vad")
    return Run(names, rows, cpu, {"stats": dataclasses.asdict(inbound.stats)})


def run_outbound(
    spec: CodecSpec, chunks: list[bytes], source_rate: int, warmup: int, frames: int
) -> Run:
    out = OutboundAudio(spec.wire_rate)
    encode = spec.encoder(spec.wire_rate)
    pt, ticks = spec.payload_type, spec.frame_ticks
    seq, ts = FIRST_SEQ, FIRST_TS
    push, pop = out.push, out.pop
    ns = time.perf_counter_ns
    rows: list[tuple[int, ...]] = []
    sent = cpu = 0
    for k in range(warmup + frames):
        if k == warmup:
            cpu = time.thread_time_ns()
        t0 = ns()
        push(chunks[k], source_rate)
        t1 = ns()
        frame, _ = pop()
        t2 = ns()
        t3 = t4 = t2
        if frame is not None:
            payload = encode(frame)
            t3 = ns()
            wire = bytes(RtpPacket(pt, seq, ts, SSRC, payload))
            seq = (seq + 1) & 0xFFFF
            ts = (ts + ticks) & 0xFFFF_FFFF
            t4 = ns()
            sent += len(wire) > 0
        if k >= warmup:
            rows.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0))
    cpu = time.thread_time_ns() - cpu
    names = ("push+resample", "pop", "encode", "rtp build")
    return Run(names, rows, cpu, {"frames_out": sent})


# -- summaries -------------------------------------------------------------------------


def summarise(runs: Sequence[Run]) -> dict[str, Any]:
    """Every run replays the same input, so frame k costs the same work in each: its cost
    is taken as the median of its runs, which filters out the preemptions and interrupts
    of a shared machine. Stages and the whole path are then the mean and percentiles of
    those per-frame medians, in µs. "cpu" is the thread's CPU time per frame (median of
    runs), a cross-check that preemption cannot inflate."""
    per_frame = np.median(np.array([r.rows for r in runs], dtype=np.float64), axis=0) / 1000
    names = runs[0].stage_names
    stages = {name: float(per_frame[:, j].mean()) for j, name in enumerate(names)}
    path = per_frame[:, -1]
    whole = {"mean": float(path.mean())}
    for q in (50, 95, 99, 100):
        whole["max" if q == 100 else f"p{q}"] = float(np.percentile(path, q))
    cpu = [r.cpu_ns / len(r.rows) / 1000 for r in runs]
    whole["cpu"] = statistics.median(cpu)
    return {
        "stages_us": stages,
        "whole_us": whole,
        "budget_ratio": whole["mean"] / BUDGET_US,
        "runs_cpu_us": cpu,
        "extra": runs[-1].extra,
    }


def timer_overhead_ns(samples: int = 200_000) -> float:
    ns = time.perf_counter_ns
    start = ns()
    for _ in range(samples):
        ns()
    return (ns() - start) / samples


def bench(
    codecs: Sequence[str], frames: int, warmup: int, repeat: int, seed: int, source: str
) -> dict[str, Any]:
    total = warmup + frames
    seconds = total * FRAME_S + 1.0
    origin = ""
    audio: dict[int, np.ndarray] = {}

    def audio_at(rate: int) -> np.ndarray:
        nonlocal origin
        if rate not in audio:
            audio[rate], origin = speech(rate, seconds, source)
        return audio[rate]

    results: list[dict[str, Any]] = []
    calls: dict[str, dict[str, float]] = {}
    for name in codecs:
        spec = CODECS[name]
        traffic = inbound_traffic(spec, audio_at(spec.sender_rate), total, seed)
        runs = [_fresh(run_inbound, spec, traffic, warmup, frames) for _ in range(repeat)]
        inbound = summarise(runs) | {
            "codec": name,
            "direction": "in",
            "route": f"RTP {spec.clock_rate // 1000} kHz clock -> {PIPELINE_RATE} Hz frames",
            "target_us": spec.target_us,
            "network": {
                "sent": traffic.sent,
                "lost": traffic.lost,
                "reordered": traffic.reordered,
                "arrivals": len(traffic.arrivals),
            },
        }
        results.append(inbound)
        per_code: dict[str, float] = {}
        for rate in SOURCE_RATES:
            chunks = frames_of(audio_at(rate), rate)
            runs = [_fresh(run_outbound, spec, chunks, rate, warmup, frames) for _ in range(repeat)]
            outbound = summarise(runs) | {
                "codec": name,
                "direction": "out",
                "source_rate": rate,
                "route": f"{rate} Hz -> {spec.wire_rate} Hz {name}",
                "target_us": spec.target_us,
            }
            results.append(outbound)
            both = inbound["whole_us"]["mean"] + outbound["whole_us"]["mean"]
            per_code[f"out_{rate}"] = BUDGET_US / both
        calls[name] = per_code
    return {
        "config": {
            "frames": frames,
            "warmup": warmup,
            "repeat": repeat,
            "seed": seed,
            "audio": origin,
            "network": {
                "loss": NETWORK.loss,
                "delay_s": NETWORK.delay,
                "jitter_s": NETWORK.jitter,
                "jitter_model": NETWORK.jitter_model,
            },
            "python": sys.version.split()[0],
            "timer_overhead_ns": timer_overhead_ns(),
        },
        "results": results,
        "calls_per_core": calls,
    }


def _fresh(func: Callable[..., Run], *args: Any) -> Run:
    """One run from a clean heap: earlier runs' garbage is not charged to this one."""
    gc.collect()
    return func(*args)


# -- report ----------------------------------------------------------------------------


def _verdict(mean: float, target: float | None) -> str:
    if target is None:
        return "-"
    return f"<= {target:g} {'ok' if mean <= target else 'ABOVE'}"


def render(report: dict[str, Any]) -> str:
    cfg = report["config"]
    net = cfg["network"]
    lines = [
        f"media path per 20 ms frame, one call: {cfg['frames']} frames x {cfg['repeat']} runs "
        f"after {cfg['warmup']} warm-up frames; audio: {cfg['audio']}; Python {cfg['python']}",
        f"network: {net['loss']:.0%} loss, {net['delay_s'] * 1000:g} ms delay, "
        f"{net['jitter_model']} jitter mean {net['jitter_s'] * 1000:g} ms (seed {cfg['seed']}); "
        f"perf_counter_ns costs {cfg['timer_overhead_ns']:.0f} ns a call",
        "each frame's µs = median over the runs (same input each run); stages = their mean; "
        "whole path: mean, p50/p95/p99;",
        "cpu = thread CPU µs per frame (median of runs); budget = mean / 20 000 µs; "
        "target = the issue's budget per direction, checked on the mean",
    ]
    for direction, title in (
        ("in", "INBOUND  RTP -> 16 kHz frames + VAD"),
        ("out", "OUTBOUND PCM -> wire frames -> RTP"),
    ):
        rows = [r for r in report["results"] if r["direction"] == direction]
        if not rows:
            continue
        stage_names = list(rows[0]["stages_us"])
        head = ["codec", "source"] if direction == "out" else ["codec", "loss/reord"]
        head += stage_names + ["mean", "p50", "p95", "p99", "cpu", "budget", "target µs"]
        table = []
        for r in rows:
            if direction == "out":
                first = str(r["source_rate"])
            else:
                n = r["network"]
                first = f"{n['lost']}/{n['reordered']} of {n['sent']}"
            w = r["whole_us"]
            table.append(
                [r["codec"], first]
                + [f"{r['stages_us'][s]:.2f}" for s in stage_names]
                + [f"{w[k]:.1f}" for k in ("mean", "p50", "p95", "p99", "cpu")]
                + [f"{r['budget_ratio']:.3%}", _verdict(w["mean"], r["target_us"])]
            )
        lines += ["", title, *_columns(head, table)]
    lines += ["", "CALLS PER CORE  20 000 µs / (inbound mean + outbound mean)"]
    table = [
        [codec, f"{v['out_16000']:.0f}", f"{v['out_22050']:.0f}"]
        for codec, v in report["calls_per_core"].items()
    ]
    lines += _columns(["codec", "out from 16 kHz", "out from 22.05 kHz (TTS)"], table)
    return "\n".join(lines)


def _columns(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]
    fmt = [(str.ljust if i < 2 else str.rjust) for i in range(len(head))]
    return [
        "  ".join(f(str(c), w) for f, c, w in zip(fmt, row, widths, strict=True))
        for row in [head, *rows]
    ]


def profile(codecs: Sequence[str], frames: int, warmup: int, seed: int, source: str) -> str:
    """cProfile of one inbound run and one outbound run from the TTS rate per codec: the
    functions that take the most time of their own."""
    import cProfile
    import io
    import pstats

    seconds = (warmup + frames) * FRAME_S + 1.0
    text = io.StringIO()
    for name in codecs:
        spec = CODECS[name]
        pcm, _ = speech(spec.sender_rate, seconds, source)
        traffic = inbound_traffic(spec, pcm, warmup + frames, seed)
        tts, _ = speech(TTS_RATE, seconds, source)
        chunks = frames_of(tts, TTS_RATE)
        cases: list[tuple[str, Callable[..., Run], tuple[Any, ...]]] = [
            (f"{name} inbound", run_inbound, (spec, traffic, warmup, frames)),
            (
                f"{name} outbound from {TTS_RATE} Hz",
                run_outbound,
                (spec, chunks, TTS_RATE, warmup, frames),
            ),
        ]
        for title, func, args in cases:
            profiler = cProfile.Profile()
            profiler.runcall(func, *args)
            text.write(f"\n== {title}: {frames + warmup} frames ==\n")
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(14)
    return text.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m media.bench",
        description="Per-frame cost of one call's whole media path, per codec and direction.",
    )
    parser.add_argument("--frames", type=int, default=3000, help="timed 20 ms frames per run")
    parser.add_argument("--warmup", type=int, default=150, help="untimed frames first")
    parser.add_argument("--repeat", type=int, default=5, help="runs per case (median reported)")
    parser.add_argument("--codec", choices=[*CODECS, "all"], default="all")
    parser.add_argument("--audio", choices=["auto", "espeak", "synthetic"], default="auto")
    parser.add_argument("--seed", type=int, default=1, help="network simulation seed")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--profile", action="store_true", help="cProfile one run per case")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.warmup < 0 or args.repeat < 1:
        parser.error("--frames and --repeat must be >= 1, --warmup >= 0")
    codecs = ["PCMU", "PCMA", "opus", "L16"] if args.codec == "all" else [args.codec]
    if args.profile:
        print(profile(codecs, args.frames, args.warmup, args.seed, args.audio))
        return 0
    report = bench(codecs, args.frames, args.warmup, args.repeat, args.seed, args.audio)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
