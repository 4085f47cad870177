"""Conversation latency over SIP on the embedded models: percentiles, never a pass/fail.

  python -m loadtest.latency --calls 20 [--concurrency 1|2|4|8] [--bargein]
         [--target host:port [--server-log FILE] [--http host:port]] [--json out.json]

Without --target a local `switchboard serve` is started on loopback (packaged models,
log.format json). Each call is placed by the project's UAC, switchboard.dial.place_call
(what `switchboard call` runs), in this process: `--lead` s of silence while the greeting
plays, one short question (loadtest.questions), `--tail` s of listening. At most
`--concurrency` calls run at once; they start together, so their questions overlap.

Measured per call: the caller's response latency (end of speech -> first bot audio in the
received audio, dial's reply_latency_s; a filler counts, it is what the caller hears);
from the server's per-call log (pipeline.calllog turn record and speech_end event): the
endpointing wait (VAD hangover), ASR (speculative result used?), LLM first token and
total, TTS first audio, the response latency (last speech frame -> first answer audio
queued) and the rest of it: the first clause (tokens until TTS may start, loop hops).

--bargein: calls one at a time, talking over the greeting (even) or the answer (odd).
Server: confirmed onset -> last bot frame sent (bargein_latency_seconds from /metrics
before and after each call). Caller: interruption onset as sent -> the bot's first silent
frame in the recording, and that less the VAD's confirmation time (the log's detect_ms).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadtest import questions as q

__all__ = ["Plan", "main", "make_plans", "run"]

FRAME_S = 0.02
SPEECH_DBFS = -40.0  # dial's threshold: what counts as speech in the played and heard audio
BOT_AUDIO_DBFS = -50.0  # any bot audio at all, for the barge-in stop
STOP_SILENCE_S = 0.6  # the bot counts as stopped after this long without audio
ANSWER_BARGEIN_AFTER_S = 6.0  # talk over the answer this long after the question: answers
# come 1-5 s after the question here and last longer than 5 s (max_tokens 80)


@dataclass(frozen=True, slots=True)
class Plan:
    index: int
    kind: str  # "question" | "bargein_greeting" | "bargein_answer"
    text: str
    voice: str
    wav: Path
    record: Path
    interrupt: str | None = None


def make_plans(calls: int, *, bargein: bool, lead_s: float, workdir: Path,
               cache_dir: Path | None = None) -> list[Plan]:
    """The calls of a run, each with its WAV written to `workdir`."""
    plans = []
    for i in range(calls):
        text, voice = q.question(i)
        clip = q.speak(text, voice, cache_dir=cache_dir)
        interrupt = None
        if not bargein:
            kind, parts = "question", [(lead_s, clip)]
        else:
            interrupt = q.INTERRUPTIONS[i % len(q.INTERRUPTIONS)]
            cut = q.speak(interrupt, q.VOICES[(i + 1) % len(q.VOICES)], cache_dir=cache_dir)
            if i % 2 == 0:  # the greeting lasts about 3 s: start 0.8-1.4 s into it
                kind, parts = "bargein_greeting", [(0.8 + 0.3 * (i // 2 % 3), cut)]
            else:
                end = lead_s + len(clip) / q.RATE
                kind, parts = "bargein_answer", [(lead_s, clip),
                                                 (end + ANSWER_BARGEIN_AFTER_S, cut)]
        wav = workdir / f"call{i:03d}.wav"
        q.write_wav(wav, q.compose(parts, tail_s=0.2))
        plans.append(Plan(i, kind, text if kind != "bargein_greeting" else "", voice.name, wav,
                          workdir / f"call{i:03d}-heard.wav", interrupt))
    return plans


# --- the server ------------------------------------------------------------------------


def _free_port() -> int:
    """A port free for both UDP and TCP on loopback (SIP listens on both)."""
    for _ in range(50):
        with socket.socket() as t, socket.socket(type=socket.SOCK_DGRAM) as u:
            t.bind(("127.0.0.1", 0))
            with contextlib.suppress(OSError):
                u.bind(("127.0.0.1", t.getsockname()[1]))
                return int(t.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


@dataclass(frozen=True, slots=True)
class Target:
    sip: str  # host:port
    http: str | None  # host:port of /metrics, when known
    log: Path | None  # the server's JSON log, when readable


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


@contextlib.contextmanager
def local_server(workdir: Path, env: dict[str, str], ready_s: float = 180.0) -> Iterator[Target]:
    """`switchboard serve` on free loopback ports with a JSON log; SIGTERM at the end."""
    sip, http = _free_port(), _free_port()
    full = {**os.environ, **{f"SWITCHBOARD_{k}": v for k, v in (
        ("SIP__LISTEN", "127.0.0.1"), ("SIP__PORT", str(sip)), ("HTTP__LISTEN", "127.0.0.1"),
        ("HTTP__PORT", str(http)), ("LOG__FORMAT", "json"), ("LOG__LEVEL", "INFO"))}, **env}
    log = workdir / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "switchboard.cli", "serve"], env=full,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"switchboard serve exited with {proc.returncode}; see {log}")
            with contextlib.suppress(OSError, ValueError):
                if json.loads(_get(f"http://127.0.0.1:{http}/readyz")).get("ready"):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"switchboard serve not ready in {ready_s:.0f} s; see {log}")
            time.sleep(0.25)
        yield Target(f"127.0.0.1:{sip}", f"127.0.0.1:{http}", log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- the server's call log ------------------------------------------------------------------

_KEY = re.compile(r"([A-Za-z_]\w*)=")
_NEXT_KEY = re.compile(r" (?=[A-Za-z_]\w*=)")


class LogFormatError(ValueError):
    """A call-log line whose fields cannot be read back."""


def parse_fields(detail: str) -> dict[str, Any]:
    """CallLog's message 'key=repr(value) key=repr(value) ...' back to values. A value
    ends at the first ' key=' before which it is a whole Python literal: a repr is
    balanced, so a ' key=' inside a quoted transcript never ends it."""
    out: dict[str, Any] = {}
    pos = 0
    while pos < len(detail):
        m = _KEY.match(detail, pos)
        if m is None:
            raise LogFormatError(f"no key=value at {detail[pos:pos + 40]!r}")
        start = m.end()
        for end in [n.start() for n in _NEXT_KEY.finditer(detail, start)] + [len(detail)]:
            try:
                out[m.group(1)] = ast.literal_eval(detail[start:end])
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
            pos = end + 1
            break
        else:
            raise LogFormatError(f"cannot read {m.group(1)}={detail[start:start + 40]!r}")
    return out


@dataclass(slots=True)
class ServerCall:
    call_id: str
    start_ts: float | None = None  # wall clock of call_start
    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    unreadable: int = 0


def read_server_log(lines: Iterable[str]) -> dict[str, ServerCall]:
    """The switchboard.call events of a JSON log (log.format json), by call id. Lines
    that are not JSON (llama.cpp and ONNX Runtime print their own) are skipped."""
    calls: dict[str, ServerCall] = {}
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or rec.get("logger") != "switchboard.call":
            continue
        call_id, ts = rec.get("call_id"), rec.get("ts")
        if not isinstance(call_id, str) or not isinstance(ts, int | float):
            continue
        call = calls.setdefault(call_id, ServerCall(call_id))
        kind, _, detail = str(rec.get("msg", "")).partition(" ")
        try:
            fields = parse_fields(detail)
        except LogFormatError:
            call.unreadable += 1
            continue
        if kind == "call_start":
            call.start_ts = float(ts)
        call.events.append((float(ts), kind, fields))
    return calls


def turn_summary(call: ServerCall) -> dict[str, Any]:
    """The call's answered turn (the last one with a transcript) with its timings, plus
    the endpointing wait: the speech_end event's time less the last speech frame's."""
    def of(kind: str) -> list[dict[str, Any]]:
        return [f for _, k, f in call.events if k == kind]
    turns = of("turn")
    out: dict[str, Any] = {
        "turns": len(turns), "bargeins": of("barge_in"),
        "phrases": [f.get("phrase") for f in of("say")],
        "errors": [f"{f.get('stage')}: {f.get('kind')}: {f.get('message')}" for f in of("error")],
        "end_reason": next((f.get("reason") for f in of("call_end")), None),
        "unreadable_lines": call.unreadable,
    }
    answered = [t for t in turns if t.get("transcript")]
    if not (answered or turns):
        return out
    turn = (answered or turns)[-1]
    timings = dict(turn.get("timings") or {})
    started = turn.get("started")
    if call.start_ts is not None and isinstance(started, int | float):
        def after(kind: str, phrase: str = "") -> float | None:
            # Logged on the wall clock to the ms: allow for its rounding.
            at = [ts - call.start_ts - started for ts, k, f in call.events  # type: ignore[operator]
                  if k == kind and str(f.get("phrase", "")).startswith(phrase)]
            return min((max(0.0, a) for a in at if a > -0.005), default=None)

        if (wait := after("speech_end")) is not None:
            timings["endpointing"] = wait
        if turn.get("filler") and (filler := after("say", "filler")) is not None:
            timings["filler"] = filler
    out.update({k: turn.get(k) for k in ("index", "transcript", "answer", "heard", "outcome",
                                          "speculative_asr", "filler", "error")})
    out["timings"] = timings
    return out


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition; 0 when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


# --- the calls ---------------------------------------------------------------------------


async def _bargein_metric(target: Target) -> tuple[float, float] | None:
    """(sum, count) of the server's SIP bargein_latency_seconds, when /metrics is known."""
    if target.http is None:
        return None
    text = await asyncio.to_thread(_get, f"http://{target.http}/metrics")
    name = "switchboard_bargein_latency_seconds_"
    return metric_value(text, name + "sum", transport="sip"), metric_value(
        text, name + "count", transport="sip")


async def run_calls(plans: list[Plan], target: Target, *, concurrency: int,
                    tail_s: float) -> list[dict[str, Any]]:
    """Place every planned call, at most `concurrency` at a time; dial's result per call,
    with the server's barge-in histogram delta for barge-in calls."""
    from switchboard.dial import DialOptions, place_call

    gate = asyncio.Semaphore(concurrency)
    listen = "127.0.0.1" if target.sip.startswith("127.") else "0.0.0.0"

    async def one(plan: Plan) -> dict[str, Any]:
        async with gate:
            before = await _bargein_metric(target) if plan.kind != "question" else None
            base = 40000 + 200 * (plan.index % 49)  # one RTP port range per call
            opts = DialOptions(uri=f"sip:bot@{target.sip}", play=plan.wav, record=plan.record,
                               tail=tail_s, listen=listen, rtp_ports=(base, base + 198))
            result = await place_call(opts)
            if before is not None:
                after = await _bargein_metric(target)
                if after is not None and after[1] > before[1]:
                    result["server_bargein_s"] = (after[0] - before[0]) / (after[1] - before[1])
                    result["server_bargeins"] = int(after[1] - before[1])
            return result

    return list(await asyncio.gather(*(one(p) for p in plans)))


# --- the recordings ---------------------------------------------------------------------


def _levels(pcm: bytes) -> np.ndarray:
    """dBFS of each 20 ms frame of 16 kHz int16 PCM (what dial's rms_dbfs gives per frame)."""
    x = np.frombuffer(pcm[: len(pcm) // 640 * 640], dtype="<i2").astype(np.float64)
    rms = np.sqrt((x.reshape(-1, 320) ** 2).mean(axis=1)) if len(x) else np.zeros(0)
    return 20 * np.log10(np.maximum(rms, 1e-9) / 32768)


def heard_stop(plan: Plan, result: dict[str, Any]) -> float | None:
    """Caller's ear: onset of the interruption as sent -> the bot's first silent frame in
    the recording (None if the bot was not talking). Both sides are tied to dial's clock:
    the first loud heard frame came `first_reply_s` after the speech_start mark, which
    fires as the frame before the first voiced one is sent; one frame each way per tick."""
    from switchboard.dial import load_wav

    first_reply = result.get("first_reply_s")
    if first_reply is None or not plan.record.exists():
        return None
    voiced = np.flatnonzero(_levels(b"".join(load_wav(plan.wav))) > SPEECH_DBFS)
    with wave.open(str(plan.record), "rb") as w:
        heard = _levels(w.readframes(w.getnframes()))
    loud = np.flatnonzero(heard > SPEECH_DBFS)
    if not len(voiced) or not len(loud):
        return None
    j0, k0 = voiced[0], loud[0]
    # The interruption: the last voiced run after a pause of 1 s (or the only one).
    gaps = np.flatnonzero(np.diff(voiced) > 1.0 / FRAME_S)
    j_int = voiced[gaps[-1] + 1] if len(gaps) else j0
    onset = (j_int - j0 + 1) * FRAME_S  # after the speech_start mark
    k_onset = k0 + round((onset - float(first_reply)) / FRAME_S)
    if k_onset < 0 or k_onset >= len(heard):
        return None
    bot, quiet = heard > BOT_AUDIO_DBFS, round(STOP_SILENCE_S / FRAME_S)
    for k in range(k_onset, len(heard) - quiet):
        if not bot[k:k + quiet].any():  # at k_onset itself: there was nothing to stop
            return float(first_reply) + (k - k0) * FRAME_S - onset if k > k_onset else None
    return None


# --- percentiles and the report ------------------------------------------------------------

ROWS = {  # key -> label, in report order
    "caller_response": "caller: end of speech -> first bot audio heard",
    "server_first": "server: last speech frame -> first audio queued",
    "path": "  path: caller - server (RTP, jitter buffers, pacing)",
    "server_response": "server: last speech frame -> first ANSWER audio",
    "endpointing": "  endpointing wait (VAD hangover)",
    "asr": "  ASR",
    "asr_wait": "  ASR still running after the endpoint",
    "llm_first_token": "  LLM first token (incl. queue)",
    "first_clause": "  first clause (tokens until TTS may start)",
    "tts_first_audio": "  TTS first audio (incl. queue)",
    "llm_total": "  LLM total",
    "bargein_server": "server: confirmed onset -> last bot frame sent",
    "bargein_detect": "  VAD confirmation (onset -> confirmed)",
    "bargein_heard": "caller: interruption onset -> bot audio stops",
    "bargein_heard_confirmed": "caller: confirmed onset -> bot audio stops",
}
WATERFALL = ("endpointing", "asr_wait", "llm_first_token", "first_clause", "tts_first_audio")


def percentiles(values: list[float]) -> dict[str, float]:
    """n, mean, p50/p95/p99 (linear interpolation) and max, in milliseconds."""
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=np.float64) * 1000
    ps = dict(zip(("p50", "p95", "p99"), np.percentile(a, [50, 95, 99]), strict=True))
    return {"n": len(a), **{k: round(float(v), 1) for k, v in
                            {"mean": a.mean(), **ps, "max": a.max()}.items()}}


def _spec_delay() -> float:
    """Silence before the speculative ASR starts (whole frames), as the pipeline counts it."""
    from pipeline.turns import ConversationSettings

    return -(-ConversationSettings().speculative_after_ms // 20) * FRAME_S


_STAGES = {"endpointing", "asr", "llm_first_token", "tts_first_audio", "response_latency"}


def _parts(sample: dict[str, Any]) -> dict[str, float]:
    """One call's measurements in seconds, by ROWS key (what it has of them)."""
    out: dict[str, float] = {}
    dial, server = sample["dial"], sample.get("server") or {}
    t = server.get("timings") or {}
    if sample["kind"] == "question":
        if dial.get("reply_latency_s") is not None:
            out["caller_response"] = dial["reply_latency_s"]
        for key in ("endpointing", "asr", "llm_first_token", "llm_total", "tts_first_audio"):
            if key in t:
                out[key] = t[key]
        if "response_latency" in t:
            out["server_response"] = t["response_latency"]
        first = [t[k] for k in ("response_latency", "filler") if k in t]
        if first:
            out["server_first"] = min(first)
        if _STAGES <= set(t):
            lead = _spec_delay() if server.get("speculative_asr") else t["endpointing"]
            out["asr_wait"] = max(0.0, lead + t["asr"] - t["endpointing"])
            out["first_clause"] = (t["response_latency"] - t["endpointing"] - out["asr_wait"]
                                   - t["llm_first_token"] - t["tts_first_audio"])
        if "caller_response" in out and "server_first" in out:
            out["path"] = out["caller_response"] - out["server_first"]
        return out
    if dial.get("server_bargein_s") is not None:
        out["bargein_server"] = dial["server_bargein_s"]
    bargeins = server.get("bargeins") or []
    detect = bargeins[0].get("detect_ms") if bargeins else None
    if detect is not None:
        out["bargein_detect"] = detect / 1000
    if sample.get("heard_stop_s") is not None:
        out["bargein_heard"] = sample["heard_stop_s"]
        if detect is not None:
            out["bargein_heard_confirmed"] = sample["heard_stop_s"] - detect / 1000
    return out


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    parts = [_parts(s) for s in samples]
    servers = [s.get("server") or {} for s in samples]
    rows = {key: percentiles([p[key] for p in parts if key in p]) for key in ROWS}
    count = {
        "calls": len(samples),
        "completed": sum(s["dial"].get("status") == "completed" for s in samples),
        "with_server_log": sum(bool(s.get("server")) for s in samples),
        "speculative_asr_used": sum(bool(v.get("speculative_asr")) for v in servers),
        "filler_played": sum(bool(v.get("filler")) for v in servers),
        "answer_heard": sum("server_response" in p for p in parts),
        "llm_total_missing": sum("timings" in v and "llm_total" not in v["timings"]
                                 for v in servers),
        "stage_errors": sum(len(v.get("errors") or []) for v in servers),
        "bargein_events": sum(len(v.get("bargeins") or []) for v in servers),
        "cut_audio": [kind for v in servers for b in v.get("bargeins") or []
                      for kind in b.get("bot_audio") or []],
    }
    # The waterfall: means over the calls that have every stage, so the steps add up.
    full = [p for p in parts if "first_clause" in p]
    waterfall = {k: round(1000 * float(np.mean([p[k] for p in full])), 1)
                 for k in (*WATERFALL, "server_response")} if full else {}
    paths = [p["path"] for p in parts if "path" in p]
    if paths:
        waterfall["path"] = round(1000 * float(np.mean(paths)), 1)
    return {"rows": {k: v for k, v in rows.items() if v["n"]}, "counts": count,
            "waterfall": {"calls": len(full), "mean_ms": waterfall}}


# The targets, (row, concurrency or 0 for any) -> (percentile, ms).
TARGETS = {("caller_response", 1): [("p50", 800.0), ("p95", 1200.0)],
           ("server_response", 1): [("p50", 800.0), ("p95", 1200.0)],
           ("caller_response", 4): [("p95", 1500.0)], ("server_response", 4): [("p95", 1500.0)],
           ("bargein_server", 0): [("p95", 50.0)], ("bargein_heard_confirmed", 0): [("p95", 50.0)]}


def print_report(report: dict[str, Any], out: Any = None) -> None:
    out = out or sys.stdout
    run_, summary = report["run"], report["summary"]
    rows, counts = summary["rows"], summary["counts"]
    engines = run_.get("engines") or {}
    kind = "barge-in calls" if run_["bargein"] else "calls"
    print(f"\n{run_['calls']} {kind}, concurrency {run_['concurrency']}, target "
          f"{run_['target']} ({engines.get('asr', '?')}, {engines.get('llm', '?')}, "
          f"{engines.get('tts', '?')}); {run_['cpus']} CPUs, load average "
          f"{run_['loadavg_before'][0]} before, {run_['loadavg_after'][0]} after; calls took "
          f"{run_['calls_wall_s']} s", file=out)
    head = f"{'ms':52} {'n':>3} {'mean':>7} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}  target"
    print(head, file=out)
    for key, label in ROWS.items():
        r = rows.get(key)
        if r is None:
            continue
        goal = ", ".join(f"{p} <= {ms:.0f} ({'met' if r[p] <= ms else 'MISSED'})"
                         for p, ms in TARGETS.get((key, run_["concurrency"]),
                                                  TARGETS.get((key, 0), [])))
        if key == "asr":
            label += f" (speculative result used {counts['speculative_asr_used']}/{r['n']})"
        print(f"{label:52} {r['n']:>3} {r['mean']:>7.0f} {r['p50']:>7.0f} {r['p95']:>7.0f} "
              f"{r['p99']:>7.0f} {r['max']:>7.0f}  {goal}", file=out)
    c = counts
    print(f"calls completed {c['completed']}/{c['calls']}, server log for "
          f"{c['with_server_log']}, answer audio before hang-up {c['answer_heard']}, fillers "
          f"played {c['filler_played']}, stage errors "
          f"{c['stage_errors']}, barge-ins {c['bargein_events']}"
          + (f" (cut: {', '.join(sorted(set(c['cut_audio'])))})" if c["cut_audio"] else "")
          + (f", LLM still generating at hang-up {c['llm_total_missing']}"
             if c["llm_total_missing"] else ""), file=out)
    w = summary["waterfall"]["mean_ms"]
    if run_["bargein"] or "server_response" not in w:
        return
    print(f"where the answer's time goes (mean ms after the caller's last speech frame, "
          f"{summary['waterfall']['calls']} calls with every stage):", file=out)
    steps = [*((k, w[k]) for k in WATERFALL), *([("path", w["path"])] if "path" in w else [])]
    at, scale = 0.0, max(1.0, sum(max(0.0, ms) for _, ms in steps)) / 60
    for key, ms in steps:
        bar = " " * round(max(0.0, at) / scale) + "#" * max(1, round(max(0.0, ms) / scale))
        print(f"  {ROWS[key].strip().split(' (')[0]:44} {ms:>6.0f}  {bar}", file=out)
        at += ms
        if key == WATERFALL[-1]:
            print(f"  {'= server: first answer audio':44} {w['server_response']:>6.0f}", file=out)
    print(f"  {'= the answer as the caller hears it':44} {at:>6.0f}", file=out)


# --- one run ------------------------------------------------------------------------------


def _sample(plan: Plan, result: dict[str, Any], server: ServerCall | None) -> dict[str, Any]:
    return {**asdict(plan), "wav": str(plan.wav), "record": str(plan.record), "dial": result,
            "server": turn_summary(server) if server is not None else None,
            "heard_stop_s": heard_stop(plan, result) if plan.kind != "question" else None}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Plan, place and measure the calls; the report as one JSON-able dict."""
    keep = args.workdir is not None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="switchboard-latency-"))
    workdir.mkdir(parents=True, exist_ok=True)
    plans = make_plans(args.calls, bargein=args.bargein, lead_s=args.lead, workdir=workdir)
    concurrency = 1 if args.bargein else args.concurrency  # per-call metric deltas need it
    env = dict(kv.split("=", 1) for kv in args.server_env)
    load_before = os.getloadavg()
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        target = Target(args.target, args.http, args.server_log and Path(args.server_log)) \
            if args.target else stack.enter_context(local_server(workdir, env))
        ready = None
        if target.http is not None:
            with contextlib.suppress(OSError, ValueError):
                ready = json.loads(_get(f"http://{target.http}/readyz"))
        calls_started = time.monotonic()
        results = asyncio.run(run_calls(plans, target, concurrency=concurrency, tail_s=args.tail))
        calls_s = time.monotonic() - calls_started
    log = {}
    if target.log is not None and target.log.exists():
        log = read_server_log(target.log.read_text(errors="replace").splitlines())
    samples = [_sample(p, r, log.get(str(r.get("call_id"))))
               for p, r in zip(plans, results, strict=True)]
    report = {
        "run": {"calls": args.calls, "concurrency": concurrency, "bargein": args.bargein,
                "target": args.target or "local", "lead_s": args.lead, "tail_s": args.tail,
                "server_env": env, "cpus": os.cpu_count(),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "calls_wall_s": round(calls_s, 1),
                "total_wall_s": round(time.monotonic() - started, 1),
                "workdir": str(workdir) if keep else None, "engines": (ready or {}).get("engines")},
        "calls": samples, "summary": summarize(samples),
    }
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20, help="calls to place (20)")
    p.add_argument("--concurrency", type=int, default=1, help="calls at once (1)")
    p.add_argument("--bargein", action="store_true",
                   help="talk over the greeting / the answer; calls run one at a time")
    p.add_argument("--target", help="host:port of a running server (default: start one)")
    p.add_argument("--http", help="with --target: host:port of its HTTP side (/metrics)")
    p.add_argument("--server-log", help="with --target: its JSON log file, for stage timings")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the local server, e.g. SWITCHBOARD_LLM__THREADS=1")
    p.add_argument("--lead", type=float, default=4.0,
                   help="silence before the question, while the greeting plays (4.0 s)")
    p.add_argument("--tail", type=float, default=6.0,
                   help="listening after the caller's audio ends (6.0 s)")
    p.add_argument("--workdir", help="keep the WAVs, recordings and server log here")
    p.add_argument("--json", help="write the whole report (every call) here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.calls < 1 or args.concurrency < 1 or any("=" not in e for e in args.server_env):
        build_parser().error("--calls/--concurrency must be >= 1, --server-env KEY=VALUE")
    report = run(args)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    failed = [c for c in report["calls"] if c["dial"].get("status") != "completed"]
    return 1 if len(failed) == len(report["calls"]) else 0


if __name__ == "__main__":
    sys.exit(main())
