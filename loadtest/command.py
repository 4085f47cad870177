"""`switchboard loadtest sip|twilio ...`: run a load scenario against a Switchboard and
write a report folder (report.json, report.md, latency_histogram.png, timeline.png).

    switchboard loadtest sip --agent echo --calls 20 --concurrency 10 --rate 5
    switchboard loadtest twilio --calls 8 --concurrency 4 --bargein --out reports/tw8
    switchboard loadtest sip --target 10.0.0.5:5060 --metrics-url http://10.0.0.5:8080/metrics \\
        --rtp-ports 20000-30000 --interface eth0 --agent conversation --calls 50

Without --target a `switchboard serve` is started on loopback for the run (--agent,
echo by default; --server-env KEY=VALUE for more settings) and stopped after it. The
questions are WAVs (--question, repeatable) or, by default, short spoken questions from
loadtest.questions (espeak-ng). The SIP scenario is loadtest.sip_load, the Twilio one
loadtest.twilio_load. Exit status: 0 when every call completed, 1 when some failed, 2
when the run could not be set up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["add_loadtest_command", "main"]


def _port_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        ports = int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH, got {text!r}") from None
    if not 1 <= ports[0] < ports[1] <= 65535:
        raise argparse.ArgumentTypeError(f"bad port range {text!r}")
    return ports


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help="host:port of a running server (SIP for sip, HTTP for "
                                    "twilio); default: start one on loopback")
    p.add_argument("--metrics-url", help="with --target: its /metrics URL")
    p.add_argument("--agent", choices=["echo", "conversation"], default=None,
                   help="the local server's agent (echo); with --target, which one answers "
                        "(echo: the latency is the echo's delay)")
    p.add_argument("--calls", type=int, default=10, help="calls in all (10)")
    p.add_argument("--concurrency", type=int, help="calls at once (default: --calls)")
    p.add_argument("--rate", type=float, default=2.0, help="calls started per second (2)")
    p.add_argument("--question", type=Path, action="append", default=[], metavar="WAV",
                   help="a question to ask (repeatable; call i asks question i mod n; "
                        "sip plays the first one to every call)")
    p.add_argument("--bargein", action="store_true", help="talk over the reply")
    p.add_argument("--interruption", type=Path, metavar="WAV",
                   help="what to say over the reply (default: a spoken interruption)")
    p.add_argument("--lead", type=float, help="silence before the question, s (4 with the "
                                              "conversation agent: the greeting; else 0.5)")
    p.add_argument("--out", type=Path, help="report folder (default: loadtest-MODE-TIME)")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the local server")
    p.add_argument("--time-limit", type=float, default=900.0,
                   help="give up on calls still running after this many seconds (900)")


def add_loadtest_command(sub: Any) -> None:
    """Register `loadtest sip` and `loadtest twilio` on the `switchboard` command."""
    p = sub.add_parser("loadtest", help="load-test a Switchboard and write a report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = p.add_subparsers(dest="mode", required=True)
    sip = modes.add_parser("sip", help="SIPp callers playing a WAV as RTP")
    _common(sip)
    sip.add_argument("--hold", type=float, help="seconds from answer to BYE (default: the "
                                                "audio plus 8 s)")
    sip.add_argument("--bargein-at", type=float, default=6.0,
                     help="--bargein: seconds after the question's end (6.0; answers "
                          "start 1-5 s after it here)")
    sip.add_argument("--rtp-ports", type=_port_range, help="with --target: its RTP range")
    sip.add_argument("--interface", default="lo", help="where to capture RTP (lo)")
    sip.add_argument("--codec", choices=["PCMU", "PCMA"], default="PCMU")
    tw = modes.add_parser("twilio", help="Twilio Media Streams over WebSocket")
    _common(tw)
    tw.add_argument("--listen", type=float, default=12.0,
                    help="seconds of listening after the question (12)")
    tw.add_argument("--bargein-after", type=float, default=1.0,
                    help="--bargein: at least this long after the reply starts, while it "
                         "is heard (1.0)")
    p.set_defaults(func=main)


# -- inputs ---------------------------------------------------------------------------------


def _spoken(out: Path, calls: int, bargein: bool) -> tuple[list[Path], Path | None]:
    """Default questions (up to 6 different ones) and interruption, as WAVs in `out`."""
    from loadtest import questions as q

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(min(calls, 6)):
        text, voice = q.question(i)
        paths.append(out / f"question{i}.wav")
        q.write_wav(paths[-1], q.speak(text, voice))
    cut = None
    if bargein:
        cut = out / "interruption.wav"
        q.write_wav(cut, q.speak(q.INTERRUPTIONS[0], q.VOICES[1]))
    return paths, cut


@contextlib.contextmanager
def _server(args: argparse.Namespace, agent: str, workdir: Path,
            rtp: tuple[int, int]) -> Iterator[Any]:
    from loadtest.latency import local_server

    env = {
        "SWITCHBOARD_AGENT": agent, "SWITCHBOARD_SHUTDOWN_DRAIN_SECONDS": "0",
        "SWITCHBOARD_RECORDS__PATH": str(workdir / "calls.db"),
        "SWITCHBOARD_SIP__MAX_CALLS": str(args.calls + 10),
        "SWITCHBOARD_SIP__RTP_PORT_MIN": str(rtp[0]),
        "SWITCHBOARD_SIP__RTP_PORT_MAX": str(rtp[1]),
        "SWITCHBOARD_STREAMS__MAX_CONCURRENT_STREAMS": str(args.calls + 10),
        "SWITCHBOARD_LOG__LEVEL": "WARNING" if agent == "echo" else "INFO",
        **dict(kv.split("=", 1) for kv in args.server_env),
    }
    with local_server(workdir, env) as target:
        yield target


def _rtp_range(calls: int) -> tuple[int, int]:
    """A range of its own for the local server (others may run on this host), below
    Linux's ephemeral ports (32768 and up), where SIPp's own ports come from."""
    width = max(200, 4 * calls + 64)
    base = 12000 + (os.getpid() % 40) * 400
    return base, min(65535, base + width)


# -- the run ---------------------------------------------------------------------------------


def _run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from loadtest.loadreport import build_report
    from loadtest.wav2pcap import read_wav_8k

    agent = args.agent or ("echo" if args.target is None else None)
    latency_mode = "echo" if agent == "echo" else "answer"
    if args.bargein and agent == "echo":
        raise ValueError("--bargein needs the conversation agent (the echo agent repeats "
                         "the interruption instead of stopping)")
    lead = args.lead if args.lead is not None else (0.5 if agent == "echo" else 4.0)
    questions, cut = list(args.question), args.interruption
    if not questions or (args.bargein and cut is None):
        spoken, spoken_cut = _spoken(out / "audio", args.calls, args.bargein)
        questions, cut = questions or spoken, cut or spoken_cut
    cut = cut if args.bargein else None
    concurrency = args.concurrency or args.calls
    settings: dict[str, Any] = {"calls": args.calls, "concurrency": concurrency,
                                "rate": args.rate, "lead_s": lead, "bargein": args.bargein,
                                "questions": [str(p) for p in questions]}
    rtp = getattr(args, "rtp_ports", None) if args.target else _rtp_range(args.calls)
    with contextlib.ExitStack() as stack:
        if args.target is None:
            server = stack.enter_context(_server(args, agent or "echo", out, rtp))
            sip_target, http = server.sip, server.http
            metrics = f"http://{http}/metrics"
        else:
            sip_target = http = args.target
            metrics = args.metrics_url or (f"http://{http}/metrics" if args.mode == "twilio"
                                           else None)
        if args.mode == "sip":
            from loadtest.sip_load import SipScenario, run_sip

            if rtp is None:
                raise ValueError("--target needs --rtp-ports (the server's RTP range) for sip")
            audio_s = lead + max(len(read_wav_8k(q)) for q in questions[:1]) / 8000
            if cut is not None:
                audio_s += args.bargein_at + len(read_wav_8k(cut)) / 8000
            hold = args.hold if args.hold is not None else round(audio_s + 8, 1)
            scenario = SipScenario(
                target=sip_target, metrics_url=metrics, rtp_ports=rtp, calls=args.calls,
                concurrency=concurrency, rate=args.rate, hold_s=hold, question=questions[0],
                interruption=cut, bargein_at_s=args.bargein_at, lead_s=lead,
                mode=latency_mode, interface=args.interface, codec=args.codec,
                time_limit_s=args.time_limit)
            settings.update(hold_s=hold, codec=args.codec, rtp_ports=list(rtp),
                            questions=[str(questions[0])])
            raw = run_sip(scenario, out)
        else:
            raw = _run_twilio(args, http, metrics, questions, cut, lead, latency_mode,
                              concurrency, read_wav_8k)
            settings.update(listen_s=args.listen, bargein_after_s=args.bargein_after)
    return build_report(mode=args.mode, target=args.target or "local", agent=agent,
                        latency_mode=latency_mode, settings=settings, raw=raw)


def _run_twilio(args: argparse.Namespace, http: str, metrics: str | None,
                questions: list[Path], cut: Path | None, lead: float, mode: str,
                concurrency: int, read: Any) -> dict[str, Any]:
    import time

    from loadtest.monitor import Monitor, scrape
    from loadtest.twilio_load import TwilioScenario, run_streams

    url = http if http.startswith("ws") else f"ws://{http}/twilio/stream"
    scenario = TwilioScenario(
        url=url, calls=args.calls, concurrency=concurrency, rate=args.rate,
        questions=[read(q) for q in questions], interruption=read(cut) if cut else None,
        lead_s=lead, listen_s=args.listen, bargein_after_s=args.bargein_after, mode=mode,
        time_limit_s=args.time_limit)
    before = scrape(metrics)
    started = time.monotonic()
    with Monitor(metrics, started, limit_s=args.time_limit + 30) as monitor:
        results, timeline = asyncio.run(run_streams(scenario))
    wall = time.monotonic() - started
    time.sleep(0.5)  # the server's side of the last streams ends after our stop
    failures: dict[str, int] = {}
    for r in results:
        if r.status == "failed":
            failures[r.reason or "?"] = failures.get(r.reason or "?", 0) + 1
    return {
        "calls": {"attempted": sum(r.started is not None for r in results),
                  "completed": sum(r.status == "completed" for r in results),
                  "failed": sum(r.status == "failed" for r in results), "failures": failures,
                  "peak_concurrent": max((p["active"] for p in timeline), default=0)},
        "per_call": [r.to_dict() for r in results],
        "timeline_client": timeline, "timeline_server": monitor.samples,
        "metrics_before": before, "metrics_after": scrape(metrics), "wall_s": wall,
        "scrapes_failed": monitor.failed,
    }


def main(args: argparse.Namespace) -> int:
    from loadtest.loadreport import write_report

    if args.calls < 1 or (args.concurrency is not None and args.concurrency < 1) \
            or args.rate <= 0 or any("=" not in kv for kv in args.server_env):
        print("switchboard loadtest: --calls/--concurrency >= 1, --rate > 0, "
              "--server-env KEY=VALUE", file=sys.stderr)
        return 2
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or Path(f"loadtest-{args.mode}-{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    try:
        report = _run(args, out)
    except (RuntimeError, ValueError, OSError) as e:
        print(f"switchboard loadtest: {e}", file=sys.stderr)
        return 2
    files = write_report(report, out)
    c, lat = report["calls"], report["response_latency_ms"]
    print(f"{args.mode}: {c['completed']}/{c['attempted']} calls completed, {c['failed']} "
          f"failed; latency p50 {lat.get('p50', '-')} / p95 {lat.get('p95', '-')} ms "
          f"({report['latency_measured']})")
    print(f"report: {files['md']}")
    return 0 if c["failed"] == 0 and c["completed"] == args.calls else 1
