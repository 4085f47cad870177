"""Soak: calls arriving and ending without pause for a bounded time, watching for leaks.

  python -m loadtest.soak [--minutes 10] [--agent echo|conversation] [--max-calls N]
         [--concurrency C] [--hold S] [--warmup N] [--sample-s S] [--json out.json]
         [--target host:port --http host:port [--pid PID]]

Without --target a `switchboard serve` with the chosen agent is started on loopback.
echo: SIPp (loadtest/sipp/uac_pcmu.xml, real speech from a pcap) keeps about
`--concurrency` calls up, each held `--hold` s, new ones arriving as old ones end.
conversation: `--concurrency` callers in this process, each the project's UAC
(switchboard.dial.place_call) asking one spoken question (loadtest.questions) per call,
calling again as soon as the call ends.

First `--warmup` calls fill the caches and pools, then the baseline is taken, then the
run: until `--minutes` have passed or `--max-calls` calls were placed. The server is
sampled every `--sample-s` s: RSS, threads, open fds and sockets (from /proc, local or
--pid), asyncio tasks, Python threads, RTP ports in use and active calls (/metrics).
After the last call the counts must come back to the baseline (polled a bounded number
of times) and RSS must be flat over the second half of the run. Prints the series and
the verdicts and writes them as JSON; exit status 0 only when nothing leaked, no call
failed and memory was flat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtest import soak_report as sr
from loadtest.capacity_report import by_label, delta, parse_sipp_stats
from loadtest.sip_capacity import (
    SCENARIO,
    build_speech_pcap,
    free_udp_port,
    scrape,
    stop_process,
)

__all__ = ["Settings", "main", "run"]

SETTLE_EVERY_S = 0.5  # after the last call, poll this often for the counts to come back


@dataclass(frozen=True, slots=True)
class Settings:
    agent: str = "echo"
    minutes: float = 10.0
    max_calls: int | None = None
    concurrency: int = 20  # echo; the conversation default is 2 (see main)
    hold: float = 10.0  # echo: seconds each call lasts after its answer
    warmup: int = 5  # calls before the baseline
    sample_s: float = 5.0
    target: str | None = None  # host:port of a running server
    http: str | None = None  # host:port of its /metrics
    pid: int | None = None  # its process, for /proc (local server: known)
    timer_t1: float = 0.5  # the local server's SIP T1 (transactions live 64 T1 after)

    @property
    def quiet_s(self) -> float:
        """How long the counts must hold still before the baseline is taken."""
        return 64 * self.timer_t1 + 5.0


# -- the server -----------------------------------------------------------------------------


def server_config(s: Settings, sip_port: int, http_port: int, workdir: Path) -> str:
    calls = s.concurrency + 10
    # Its own slot of 400 ports per run (by pid): two runs side by side must not share
    # ports, or calls get 503 when a port is taken (seen running an echo and a
    # conversation soak at once). The callers' UACs use 40000 and up.
    low = 20000 + 400 * (os.getpid() % 40)
    return (
        f"agent: {s.agent}\n"
        "shutdown_drain_seconds: 0\n"
        "log: {level: WARNING}\n"
        f"records: {{path: {json.dumps(str(workdir / 'calls.db'))}}}\n"
        f"http: {{listen: 127.0.0.1, port: {http_port}}}\n"
        f"sip: {{listen: 127.0.0.1, port: {sip_port}, transports: [udp], "
        f"max_calls: {calls}, rtp_port_min: {low}, rtp_port_max: {low + 8 * calls + 64}, "
        f"media_timeout: 30, timer_t1: {s.timer_t1}}}\n"
    )


@contextlib.contextmanager
def local_server(s: Settings, workdir: Path, ready_s: float = 180.0) -> Iterator[Settings]:
    """`switchboard serve` for the run; yields the settings pointing at it."""
    sip_port, http_port = free_udp_port(), free_udp_port()
    config = workdir / "switchboard.yaml"
    config.write_text(server_config(s, sip_port, http_port, workdir))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    with (workdir / "switchboard.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "switchboard.cli", "serve", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                tail = (workdir / "switchboard.log").read_text()[-2000:]
                raise RuntimeError(f"switchboard exited with {proc.returncode}: {tail}")
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz",
                                            timeout=2) as r:
                    if json.loads(r.read()).get("ready"):
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"switchboard was not ready within {ready_s:.0f} s")
            time.sleep(0.25)
        yield Settings(**{**asdict(s), "target": f"127.0.0.1:{sip_port}",
                          "http": f"127.0.0.1:{http_port}", "pid": proc.pid})
    finally:
        stop_process(proc)


# -- sampling -------------------------------------------------------------------------------


def read_proc(pid: int) -> dict[str, Any]:
    try:
        rss, threads = sr.parse_status(Path(f"/proc/{pid}/status").read_text())
        links = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):  # closed while we looked
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    except OSError:
        return {}
    return {"rss_mb": rss, "threads": threads, "fds": len(links),
            "sockets": sr.count_sockets(links)}


class Sampler:
    def __init__(self, s: Settings) -> None:
        self.s = s
        self.t0 = time.monotonic()
        self.samples: list[sr.Sample] = []
        self.url = f"http://{s.http}/metrics" if s.http else None

    def take(self, phase: str, keep: bool = True) -> sr.Sample:
        proc = read_proc(self.s.pid) if self.s.pid else {}  # first: before our scrape's socket
        counts = sr.metric_counts(scrape(self.url)) if self.url else {}
        sample = sr.Sample(round(time.monotonic() - self.t0, 2), phase, **proc, **counts)
        if keep:
            self.samples.append(sample)
        if os.environ.get("SOAK_DEBUG"):
            print(sample, file=sys.stderr)
        return sample

    def settle(self, baseline: sr.Sample | None) -> sr.Sample:
        """Poll until every count is back at the baseline, or (no baseline yet) until no
        call is up and no count has changed for quiet_s: a SIP transaction outlives its
        call by Timer J/K (64 T1, 32 s). Bounded: at most 3 quiet_s of polls."""
        quiet = self.s.quiet_s
        sample = self.take("end", keep=False)
        stable_since = sample.t
        for _ in range(max(4, math.ceil(3 * quiet / SETTLE_EVERY_S))):
            time.sleep(SETTLE_EVERY_S)
            last, sample = sample, self.take("end", keep=False)
            if baseline is not None:
                if all(v["back"] for v in sr.returned(baseline, sample).values()):
                    break
            elif sample.calls_active or sample.rtp_ports or any(
                    last.get(n) != sample.get(n) for n in sr.COUNTS):
                stable_since = sample.t
            elif sample.t - stable_since >= quiet:
                break
        self.samples.append(sample)
        return sample


# -- echo: SIPp -------------------------------------------------------------------------


def sipp_run(s: Settings, workdir: Path, calls: int, name: str, seconds: float,
             sample: Callable[[], object] | None) -> dict[str, Any]:
    """SIPp placing `calls` calls at the rate that keeps `concurrency` up, sampling every
    sample_s while it runs; its statistics (parse_sipp_stats)."""
    period_ms = 10_000
    per_period = max(1, round(s.concurrency / s.hold * period_ms / 1000))
    limit = math.ceil(seconds + s.hold + 60)
    stats = workdir / f"{name}_stats.csv"
    cmd = ["sipp", "-sf", str(SCENARIO), "-t", "u1", "-i", "127.0.0.1",
           "-p", str(free_udp_port()), "-mp", str(free_udp_port(pair=True)),
           "-l", str(s.concurrency), "-m", str(calls), "-r", str(per_period),
           "-rp", str(period_ms), "-d", str(round(s.hold * 1000)),
           "-trace_stat", "-stf", stats.name, "-fd", "1", "-trace_err",
           "-error_file", f"{name}_errors.log", "-timeout", f"{limit}s", "-timeout_error",
           "-nostdin", str(s.target)]
    with (workdir / f"{name}.out").open("w") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + limit + 30
            while proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=s.sample_s)
                if proc.poll() is None and sample is not None:
                    sample()
        finally:
            stop_process(proc)
    try:
        result = parse_sipp_stats(stats.read_text())
    except (OSError, ValueError) as e:
        tail = (workdir / f"{name}.out").read_text(errors="replace")[-2000:]
        raise RuntimeError(
            f"SIPp (exit {proc.returncode}) left no statistics: {e}\n{tail}") from None
    result["exit_code"] = proc.returncode
    return result


def echo_calls(s: Settings, workdir: Path, sampler: Sampler) -> tuple[dict[str, Any], Any]:
    build_speech_pcap(workdir / "speech.pcap", s.hold + 5, "PCMU")
    if s.warmup:
        sipp_run(s, workdir, s.warmup, "warmup", s.warmup * s.hold, None)
    baseline = sampler.settle(None)
    baseline = sr.Sample(**{**asdict(baseline), "phase": "baseline"})
    sampler.samples[-1] = baseline
    rate = s.concurrency / s.hold
    by_time = max(1, math.floor(rate * s.minutes * 60))
    calls = min(by_time, s.max_calls) if s.max_calls else by_time
    result = sipp_run(s, workdir, calls, "soak", calls / rate,
                      lambda: sampler.take("run"))
    return result, baseline


# -- conversation: the project's UAC ------------------------------------------------------


def question_wavs(workdir: Path, count: int, lead_s: float) -> list[Path]:
    from loadtest import questions as q

    wavs = []
    for i in range(count):
        text, voice = q.question(i)
        wav = workdir / f"question{i:02d}.wav"
        q.write_wav(wav, q.compose([(lead_s, q.speak(text, voice))], tail_s=0.2))
        wavs.append(wav)
    return wavs


async def _callers(s: Settings, wavs: list[Path], calls: int, deadline: float,
                   sampler: Sampler | None, tail_s: float) -> dict[str, Any]:
    from switchboard.dial import DialOptions, place_call

    placed = 0
    outcomes: dict[str, int] = {}
    counts = {"attempted": 0, "completed": 0, "failed": 0, "answered": 0,
              "uac_port_retries": 0}

    async def caller(n: int) -> None:
        nonlocal placed
        base = 40000 + 400 * n  # each caller its own RTP range
        while placed < calls and time.monotonic() < deadline:
            wav = wavs[placed % len(wavs)]
            placed += 1
            counts["attempted"] += 1
            opts = DialOptions(uri=f"sip:bot@{s.target}", play=wav, tail=tail_s,
                               listen="127.0.0.1", rtp_ports=(base, base + 398))
            result: dict[str, Any] = {}
            for _ in range(3):  # our UAC's own port taken by another program: try again
                try:
                    result = await place_call(opts)
                    break
                except OSError as e:
                    result = {"status": "failed", "error": repr(e)}
                    if e.errno != errno.EADDRINUSE:
                        break
                    counts["uac_port_retries"] += 1
                except Exception as e:  # a UAC failure is a failed call, not the end of the run
                    result = {"status": "failed", "error": repr(e)}
                    break
            ok = result.get("status") == "completed" and result.get("hangup") == "local"
            counts["completed" if ok else "failed"] += 1
            counts["answered"] += result.get("reply_latency_s") is not None
            kind = f"{result.get('status')}:{result.get('end_reason') or result.get('error')}"
            outcomes[kind] = outcomes.get(kind, 0) + 1

    async def sample_loop() -> None:
        while sampler is not None:
            await asyncio.sleep(s.sample_s)
            await asyncio.to_thread(sampler.take, "run")

    sampling = asyncio.ensure_future(sample_loop())
    try:
        await asyncio.gather(*(caller(n) for n in range(s.concurrency)))
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
    return {**counts, "failure_kinds": {k: v for k, v in outcomes.items()
                                        if not k.startswith("completed:hangup")}}


def conversation_calls(s: Settings, workdir: Path, sampler: Sampler) -> tuple[dict, Any]:
    wavs = question_wavs(workdir, 12, lead_s=4.0)  # the greeting lasts about 3 s
    tail_s = 7.0  # the answer: up to 80 tokens, spoken
    if s.warmup:
        asyncio.run(_callers(s, wavs, s.warmup, time.monotonic() + 600, None, tail_s))
    baseline = sampler.settle(None)
    baseline = sr.Sample(**{**asdict(baseline), "phase": "baseline"})
    sampler.samples[-1] = baseline
    calls = s.max_calls or 1_000_000
    result = asyncio.run(_callers(s, wavs, calls, time.monotonic() + s.minutes * 60, sampler,
                                  tail_s))
    return result, baseline


# -- one run --------------------------------------------------------------------------------


def run(s: Settings, workdir: Path) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        if s.target is None:
            s = stack.enter_context(local_server(s, workdir))
        sampler = Sampler(s)
        before = scrape(sampler.url) if sampler.url else {}
        drive = echo_calls if s.agent == "echo" else conversation_calls
        started = time.monotonic()
        calls, baseline = drive(s, workdir, sampler)
        end = sampler.settle(baseline)
        after = scrape(sampler.url) if sampler.url else {}
        run_samples = [x for x in sampler.samples if x.phase == "run"]
        report = sr.analyse(baseline, run_samples, end, calls)
        report.update(
            settings={**asdict(s), "cpus": os.cpu_count(),
                      "loadavg": Path("/proc/loadavg").read_text().split()[:3]},
            seconds=round(time.monotonic() - started, 1),
            server_outcomes=by_label(delta(after, before), "switchboard_calls_total",
                                     "outcome") if after and before else {},
            samples=[asdict(x) for x in sampler.samples],
        )
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent", choices=("echo", "conversation"), default="echo")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--max-calls", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=None,
                   help="calls up at once (default: echo 20, conversation 2)")
    p.add_argument("--hold", type=float, default=10.0, help="echo: seconds per call")
    p.add_argument("--warmup", type=int, default=None, help="calls before the baseline")
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--timer-t1", type=float, default=0.5,
                   help="SIP T1 of the started server, or of --target (sets the wait for "
                        "transactions to end before the baseline: 64 T1 + 5 s)")
    p.add_argument("--target", help="host:port of a running switchboard (else one is started)")
    p.add_argument("--http", help="host:port of the target's /metrics")
    p.add_argument("--pid", type=int, help="the target's process id, for /proc")
    p.add_argument("--json", type=Path, default=Path("soak.json"))
    p.add_argument("--workdir", type=Path, help="keep the run's files here")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    conv = a.agent == "conversation"
    s = Settings(agent=a.agent, minutes=a.minutes, max_calls=a.max_calls,
                 concurrency=a.concurrency or (2 if conv else 20), hold=a.hold,
                 warmup=a.warmup if a.warmup is not None else (2 if conv else 20),
                 sample_s=a.sample_s, target=a.target, http=a.http, pid=a.pid,
                 timer_t1=a.timer_t1)
    with contextlib.ExitStack() as stack:
        workdir = a.workdir or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="soak-")))
        workdir.mkdir(parents=True, exist_ok=True)
        report = run(s, workdir)
    a.json.write_text(json.dumps(report, indent=2))
    print(sr.render(report))
    print(f"report: {a.json}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
