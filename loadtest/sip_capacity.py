"""`python -m loadtest.sip_capacity`: how many concurrent G.711 echo calls Switchboard holds.

    python -m loadtest.sip_capacity --calls 200 --hold 60            # one load
    python -m loadtest.sip_capacity --calls 50,100,200,300 --hold 60 # a series, one table
    python -m loadtest.sip_capacity --calls 5 --hold 3 --json out.json
    python -m loadtest.sip_capacity --target 10.0.0.5:5060 --rtp-ports 20000-30000 \\
        --metrics-url http://10.0.0.5:8080/metrics --interface eth0 --calls 100 --hold 60

One run, everything bounded in count and time and on loopback unless --target says
otherwise:
1. start `switchboard serve --agent echo` (unless --target) with a config sized for the
   run: sip.max_calls above N, an RTP port range for N calls, log level WARNING;
2. build speech.pcap (espeak-ng speech, looped to cover the hold) for SIPp;
3. capture the server's outbound RTP (source ports in its RTP range) with dumpcap;
4. run SIPp's uac_pcmu scenario: N calls at R calls/s, each held HOLD s, at most N at
   once, a global timeout; its -trace_stat CSV gives attempted/completed/failed;
5. in the steady state (every call up, none ended yet) sample the CPU of the server,
   SIPp and dumpcap from /proc, kernel drops on the server's RTP sockets from
   /proc/net/udp, and the server's /metrics at both ends;
6. judge the capture (loadtest.rtp_intervals): |interval - 20 ms| p50/p95/p99/max over
   all streams, and loss by sequence.
"Held" means every call completed and the steady-state p99 interval jitter is within
--max-p99-ms. SIPp and dumpcap run on the same cores and are reported beside the server.

Where the server's time goes at a given load: `python -m loadtest.echo_profile`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.capacity_report import (
    Sample,
    StatsError,
    bucket_counts,
    by_label,
    cpu_usage,
    delta,
    dumpcap_dropped,
    histogram_quantile,
    parse_machine_stat,
    parse_proc_stat,
    parse_prometheus,
    parse_sipp_stats,
    render,
    render_series,
    total,
    udp_socket_drops,
)
from loadtest.pcap import pcm_to_rtp, read_pcap, write_rtp_pcap
from loadtest.rtp_intervals import IntervalAnalyzer
from loadtest.stopping import end_on_sigterm

SCENARIO = Path(__file__).resolve().parent / "sipp" / "uac_pcmu.xml"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SNAPLEN = 64  # Ethernet + IPv4 + UDP + RTP header = 54 bytes; the payload is not needed
PORTS_PER_CALL = 4  # an RTP/RTCP pair, doubled so the allocator's FIFO has room to rotate


class CapacityError(RuntimeError):
    """The run could not be set up or measured (not: the server did not hold the load)."""


@dataclass(frozen=True, slots=True)
class RunSettings:
    calls: int
    hold: float  # seconds each call lasts after its answer
    rate: float  # calls started per second
    codec: str = "PCMU"
    target: str | None = None  # host:port of a running server; None = start one here
    rtp_ports: tuple[int, int] | None = None  # the server's RTP range (None: sized here)
    metrics_url: str | None = None
    interface: str = "lo"
    max_p99_ms: float = 10.0
    rtp_base: int = 20000
    nice: int = 0  # the local server's niceness (negative: ahead of other work; needs root)

    @property
    def ramp(self) -> float:
        return self.calls / self.rate

    def window(self) -> tuple[float, float]:
        """Seconds after SIPp starts when every call is up and none has ended yet."""
        start = self.ramp + min(2.0, 0.2 * self.hold)
        end = self.hold - min(1.0, 0.1 * self.hold)
        if end - start < 0.5:
            raise CapacityError(
                f"{self.calls} calls at {self.rate:g}/s take {self.ramp:.1f} s to start, "
                f"too long for a {self.hold:g} s hold: raise --rate or --hold")
        return start, end

    def port_range(self) -> tuple[int, int]:
        if self.rtp_ports is not None:
            return self.rtp_ports
        return self.rtp_base, self.rtp_base + PORTS_PER_CALL * self.calls + 64


def auto_rate(calls: int, hold: float) -> float:
    """Start every call within 30 % of the hold time, at 10 calls/s at least."""
    return float(max(10, math.ceil(calls / (0.3 * hold))))


# -- inputs: speech, scenario, server config ------------------------------------------


def build_speech_pcap(path: Path, seconds: float, codec: str) -> int:
    """espeak-ng speech at 8 kHz (media.bench's clip, looped) as 20 ms RTP in a pcap."""
    from media.bench import speech

    pcm, _ = speech(8000, seconds)
    return write_rtp_pcap(path, pcm_to_rtp(pcm.tobytes(), codec))


def scenario_for(codec: str, workdir: Path) -> Path:
    """uac_pcmu.xml, or a copy offering PCMA instead."""
    text = SCENARIO.read_text()
    if codec == "PCMA":
        for old, new in (("RTP/AVP 0 101", "RTP/AVP 8 101"), ("rtpmap:0 PCMU", "rtpmap:8 PCMA"),
                         ("RTP/AVP 0\"", "RTP/AVP 8\"")):
            if old not in text:
                raise CapacityError(f"{SCENARIO.name} no longer contains {old!r}")
            text = text.replace(old, new)
    path = workdir / f"uac_{codec.lower()}.xml"
    path.write_text(text)
    return path


def server_config(settings: RunSettings, sip_port: int, http_port: int, workdir: Path) -> str:
    """The echo agent, UDP only, room for the run's calls; call records (on by default)
    go to the run's folder instead of ./switchboard-calls.db."""
    low, high = settings.port_range()
    return (
        "agent: echo\n"
        "shutdown_drain_seconds: 0\n"  # calls still up when the run ends are just hung up
        "log: {level: WARNING}\n"
        f"records: {{path: {json.dumps(str(workdir / 'calls.db'))}}}\n"
        f"http: {{listen: 127.0.0.1, port: {http_port}}}\n"
        f"sip: {{listen: 127.0.0.1, port: {sip_port}, transports: [udp], "
        f"codecs: [{settings.codec}], max_calls: {settings.calls + 10}, "
        f"rtp_port_min: {low}, rtp_port_max: {high}, media_timeout: 30}}\n"
    )


def free_udp_port(pair: bool = False) -> int:
    """A free loopback UDP port (and the one above it, when `pair`)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not pair:
            return port
        if port % 2 or port >= 65535:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise CapacityError("no free UDP port on 127.0.0.1")


# -- processes ----------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    """SIGTERM this one process, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def local_server(settings: RunSettings, workdir: Path) -> Iterator[tuple[int, str, int]]:
    """`switchboard serve` sized for the run: yields (pid, SIP target, HTTP port)."""
    sip_port, http_port = free_udp_port(), free_udp_port()
    config = workdir / "switchboard.yaml"
    config.write_text(server_config(settings, sip_port, http_port, workdir))
    log = (workdir / "switchboard.log").open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    nice = ["nice", "-n", str(settings.nice)] if settings.nice else []  # nice execs: same pid
    proc = subprocess.Popen(
        [*nice, sys.executable, "-m", "switchboard.cli", "serve", "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise CapacityError(f"switchboard exited with {proc.returncode}: "
                                    f"{(workdir / 'switchboard.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError, ValueError):
                url = f"http://127.0.0.1:{http_port}/readyz"
                with urllib.request.urlopen(url, timeout=2) as r:
                    if json.loads(r.read()).get("ready"):
                        break
            if time.monotonic() > deadline:
                raise CapacityError("switchboard was not ready within 60 s")
            time.sleep(0.2)
        yield proc.pid, f"127.0.0.1:{sip_port}", http_port
    finally:
        stop_process(proc)
        log.close()


@contextlib.contextmanager
def capture(path: Path, interface: str, ports: tuple[int, int], limit: float, *,
            snaplen: int = SNAPLEN, direction: str = "src") -> Iterator[dict[str, Any]]:
    """dumpcap of UDP sent from `ports` (direction "src"; "" for both ways), stopped on
    exit (or after `limit` s); the dict gets its pid while running and its drop count
    after. The default snaplen keeps headers only; loadtest.sip_load needs payloads."""
    if shutil.which("dumpcap") is None:
        raise CapacityError("dumpcap is not installed (apt package tshark / wireshark-common)")
    bpf = f"udp and {direction} portrange {ports[0]}-{ports[1]}".replace("  ", " ")
    err = (path.parent / "dumpcap.log").open("w+")
    proc = subprocess.Popen(
        ["dumpcap", "-i", interface, "-P", "-s", str(snaplen), "-B", "64", "-f", bpf,
         "-a", f"duration:{math.ceil(limit)}", "-w", str(path)],
        stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    info: dict[str, Any] = {"pid": proc.pid}
    try:
        deadline = time.monotonic() + 10
        while "Capturing on" not in Path(err.name).read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise CapacityError(f"dumpcap did not start: {Path(err.name).read_text()}")
            time.sleep(0.05)
        yield info
    finally:
        stop_process(proc, timeout=30)
        text = Path(err.name).read_text()
        err.close()
        info["dropped"] = dumpcap_dropped(text)


# -- measurements ----------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float | None:
    try:
        return parse_proc_stat(Path(f"/proc/{pid}/stat").read_text(), CLK_TCK)
    except OSError:  # the process has gone
        return None


def scrape(url: str | None) -> dict[str, float]:
    """A Prometheus snapshot; empty when there is no URL or the server did not answer in
    time (an overloaded server: the run goes on and the report says so)."""
    if url is None:
        return {}
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return parse_prometheus(r.read().decode())
    except OSError as e:
        print(f"sip_capacity: scraping {url} failed: {e}", file=sys.stderr)
        return {}


def take_sample(pids: dict[str, int], metrics_url: str | None,
                ports: tuple[int, int]) -> Sample:
    metrics = scrape(metrics_url)  # first: its cost is the server's, inside the window
    machine = parse_machine_stat(Path("/proc/stat").read_text(), CLK_TCK)
    cpu = {role: process_cpu_seconds(pid) for role, pid in pids.items()}
    drops = udp_socket_drops(Path("/proc/net/udp").read_text(), ports)
    return Sample(time.monotonic(), cpu, machine, metrics, drops)


# -- one run ----------------------------------------------------------------------------


def sipp_command(settings: RunSettings, scenario: Path, target: str, limit: float) -> list[str]:
    return [
        "sipp", "-sf", str(scenario), "-t", "u1", "-i", "127.0.0.1",
        "-p", str(free_udp_port()), "-mp", str(free_udp_port(pair=True)),
        "-l", str(settings.calls), "-m", str(settings.calls), "-r", f"{settings.rate:g}",
        "-d", str(round(settings.hold * 1000)),
        "-trace_stat", "-stf", "stats.csv", "-fd", "1", "-trace_err", "-error_file", "errors.log",
        "-timeout", f"{math.ceil(limit)}s", "-timeout_error", "-nostdin", target,
    ]


def run(settings: RunSettings, workdir: Path) -> dict[str, Any]:
    """One load: SIPp calls against the server while the capture and samplers watch."""
    if shutil.which("sipp") is None:
        raise CapacityError("SIPp is not installed (apt package sip-tester)")
    window = settings.window()
    limit = settings.ramp + settings.hold + 60  # SIPp's global timeout
    scenario = scenario_for(settings.codec, workdir)
    build_speech_pcap(workdir / "speech.pcap", settings.hold + 5, settings.codec)
    ports = settings.port_range()
    samples: list[Sample] = []
    timed_out = False
    with contextlib.ExitStack() as stack:
        pids: dict[str, int] = {}
        if settings.target is None:
            pid, target, http_port = stack.enter_context(local_server(settings, workdir))
            metrics_url: str | None = f"http://127.0.0.1:{http_port}/metrics"
            pids["server"] = pid
        else:
            target, metrics_url = settings.target, settings.metrics_url
        cap = stack.enter_context(
            capture(workdir / "out.pcap", settings.interface, ports, limit + 30))
        pids["capture"] = cap["pid"]
        before = scrape(metrics_url)
        with (workdir / "sipp.out").open("w") as out:
            wall_start, started = time.time(), time.monotonic()
            sipp = subprocess.Popen(sipp_command(settings, scenario, target, limit), cwd=workdir,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            pids["sipp"] = sipp.pid
            try:
                for at in window:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        sipp.wait(timeout=max(0.0, started + at - time.monotonic()))
                    if sipp.poll() is not None:
                        break
                    samples.append(take_sample(pids, metrics_url, ports))
                sipp.wait(timeout=limit + 30)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                stop_process(sipp)
        time.sleep(0.5)  # the last calls' final packets and RTCP BYEs, sent after their 200
        after = scrape(metrics_url)  # every call has ended, so every session has flushed
    stats_csv = next(workdir.glob("*stats.csv"), None)  # SIPp may prefix the file name
    if stats_csv is None:
        tail = (workdir / "sipp.out").read_text(errors="replace")[-2000:]
        raise CapacityError(f"SIPp (exit {sipp.returncode}) wrote no statistics:\n{tail}")
    try:
        calls = parse_sipp_stats(stats_csv.read_text())
    except StatsError as e:
        raise CapacityError(f"{stats_csv}: {e}") from None
    calls.update(exit_code=sipp.returncode, timed_out=timed_out)

    steady_window = (wall_start + window[0], wall_start + window[1])
    whole = IntervalAnalyzer(src_ports=ports)
    steady = IntervalAnalyzer(window=steady_window, src_ports=ports)
    for rec in read_pcap((workdir / "out.pcap").read_bytes()):
        if whole.add_frame(rec.time, rec.frame):
            steady.add_frame(rec.time, rec.frame)
    jitter, whole_run = steady.report(), whole.report()

    snapshots = [before, *(s.metrics for s in samples), after]
    failed_scrapes = sum(1 for snap in snapshots if metrics_url and not snap)
    run_metrics = delta(after, before) if after and before else {}
    win = {}
    if len(samples) == 2 and samples[0].metrics and samples[1].metrics:
        win = delta(samples[1].metrics, samples[0].metrics)
    seconds = samples[-1].at - samples[0].at if len(samples) == 2 else 0.0
    lateness = [histogram_quantile(q, win, "switchboard_pacer_lateness_seconds")
                for q in (0.5, 0.99)]
    lag = histogram_quantile(0.99, win, "switchboard_event_loop_lag_seconds")
    held = (calls["failed"] == 0 and calls["completed"] == settings.calls and not timed_out
            and jitter.jitter_p99_ms is not None and jitter.jitter_p99_ms <= settings.max_p99_ms)
    return {
        "settings": {
            "calls": settings.calls, "hold_s": settings.hold, "rate_cps": settings.rate,
            "codec": settings.codec, "target": settings.target or "local switchboard serve",
            "rtp_ports": list(ports), "cpus": os.cpu_count(), "server_nice": settings.nice,
            "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            "code": _code_version(),
        },
        "calls": calls,
        "server_calls": {
            "outcomes": by_label(run_metrics, "switchboard_calls_total", "outcome"),
            "rejected": by_label(run_metrics, "switchboard_calls_rejected_total", "reason"),
        },
        "window_s": [round(window[0], 2), round(window[1], 2), round(seconds, 2)],
        "cpu": cpu_usage(samples[0], samples[-1], os.cpu_count() or 1) if len(samples) == 2 else {},
        "rtp": {
            "server_in": total(run_metrics, "switchboard_rtp_packets_received_total"),
            "server_out": total(run_metrics, "switchboard_rtp_packets_sent_total"),
            "server_in_lost": total(run_metrics, "switchboard_rtp_packets_lost_total"),
            "server_late": total(run_metrics, "switchboard_jitter_late_packets_total"),
            "server_concealed": total(run_metrics, "switchboard_jitter_concealed_frames_total"),
            "server_invalid": total(run_metrics, "switchboard_rtp_packets_invalid_total"),
            "steady_in_per_s": _rate(win, "switchboard_rtp_packets_received_total", seconds),
            "steady_out_per_s": _rate(win, "switchboard_rtp_packets_sent_total", seconds),
            "server_socket_drops": _socket_drops(samples),
            "captured_out": whole_run.packets,
            "captured_out_lost": whole_run.lost,
            "capture_dropped": cap.get("dropped"),
        },
        "jitter": jitter.to_dict(),
        "jitter_whole_run": {k: whole_run.to_dict()[k] for k in (
            "streams", "intervals", "jitter_p50_ms", "jitter_p99_ms", "jitter_max_ms")},
        "pacer": {
            "lateness_p50_ms": _ms(lateness[0]), "lateness_p99_ms": _ms(lateness[1]),
            "skipped_ticks": total(run_metrics, "switchboard_pacer_skipped_ticks_total"),
            "loop_lag_p99_ms": _ms(lag),
            "lateness_buckets_s": bucket_counts(win, "switchboard_pacer_lateness_seconds"),
            "loop_lag_buckets_s": bucket_counts(win, "switchboard_event_loop_lag_seconds"),
        },
        "metrics_scrapes_failed": failed_scrapes,
        "held": held,
    }


def _socket_drops(samples: list[Sample]) -> int | None:
    """Kernel drops on the server's RTP sockets (this host only) over the window; a
    socket opened inside the window counts from zero."""
    if len(samples) != 2 or not samples[1].udp_drops:
        return None
    first, last = samples[0].udp_drops, samples[1].udp_drops
    return sum(n - first.get(inode, 0) for inode, n in last.items())


def _code_version() -> str | None:
    """The checkout's commit, "+dirty" when the working tree differs from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                              capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty.strip() else "")


def _rate(snapshot: dict[str, float], name: str, seconds: float) -> float | None:
    return total(snapshot, name) / seconds if seconds else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


# -- command line ------------------------------------------------------------------------


def _port_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        ports = int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH, got {text!r}") from None
    if not 1 <= ports[0] < ports[1] <= 65535:
        raise argparse.ArgumentTypeError(f"bad port range {text!r}")
    return ports


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,N,..., got {text!r}") from None
    if any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError("call counts must be >= 1")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.sip_capacity",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=_counts, required=True, help="N, or N,N,... for a series")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds each call lasts")
    parser.add_argument("--rate", type=float, help="calls per second (default: start all "
                                                   "within 30%% of the hold, >= 10/s)")
    parser.add_argument("--codec", choices=["PCMU", "PCMA"], default="PCMU")
    parser.add_argument("--target", help="host:port of a running server (default: start one)")
    parser.add_argument("--rtp-ports", type=_port_range, help="the target's RTP port range")
    parser.add_argument("--metrics-url", help="the target's /metrics URL")
    parser.add_argument("--interface", default="lo", help="where to capture its outbound RTP")
    parser.add_argument("--max-p99-ms", type=float, default=10.0, help="jitter target")
    parser.add_argument("--rtp-base", type=int, default=20000,
                        help="the local server's lowest RTP port")
    parser.add_argument("--nice", type=int, default=0,
                        help="run the local server at this niceness (e.g. -10, as root)")
    parser.add_argument("--keep", type=Path, help="keep captures and logs in this folder")
    parser.add_argument("--json", type=Path, help="write the report(s) here as JSON")
    args = parser.parse_args(argv)
    end_on_sigterm()  # kill/pkill still stops the server and SIPp this started
    if args.hold <= 0 or (args.rate is not None and args.rate <= 0):
        parser.error("--hold and --rate must be positive")
    if args.target is None and args.rtp_base + PORTS_PER_CALL * max(args.calls) + 64 > 65535:
        parser.error("too many calls for the RTP ports above --rtp-base")
    reports = []
    try:
        for n in args.calls:
            settings = RunSettings(
                calls=n, hold=args.hold, rate=args.rate or auto_rate(n, args.hold),
                codec=args.codec, target=args.target,
                rtp_ports=args.rtp_ports or ((20000, 30000) if args.target else None),
                metrics_url=args.metrics_url, interface=args.interface,
                max_p99_ms=args.max_p99_ms, rtp_base=args.rtp_base, nice=args.nice)
            settings.window()  # fail before starting anything
            with _workdir(args.keep, n) as workdir:
                report = run(settings, workdir)
            reports.append(report)
            print(render(report), flush=True)
    except CapacityError as e:
        print(f"sip_capacity: {e}", file=sys.stderr)
        return 2
    if len(reports) > 1:
        print("\n" + render_series(reports))
    document: Any = reports[0] if len(reports) == 1 else reports
    print(json.dumps(document, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0 if all(r["held"] for r in reports) else 1


@contextlib.contextmanager
def _workdir(keep: Path | None, calls: int) -> Iterator[Path]:
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="sip_capacity-") as tmp:
            yield Path(tmp)
    else:
        path = keep / f"calls-{calls}"
        path.mkdir(parents=True, exist_ok=True)
        yield path


if __name__ == "__main__":
    sys.exit(main())
