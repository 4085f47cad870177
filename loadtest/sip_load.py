"""The SIP scenario of `switchboard loadtest sip`: SIPp callers that say a recorded
question as RTP, hold, and hang up; measured on the wire and from the server's metrics.

1. the question WAV (and, for barge-in, an interruption `bargein_at_s` after it) goes
   through loadtest.wav2pcap into speech.pcap after `lead_s` of silence;
2. SIPp runs loadtest/sipp/uac_pcmu.xml: `calls` calls in all at `rate` per second, at
   most `concurrency` at once, each playing the pcap and hanging up `hold_s` after the
   answer; -trace_stat every second (calls over time, the totals, failures by kind),
   -trace_screen and -trace_err kept in the report folder; SIPp's own -timeout bounds it;
3. dumpcap captures the RTP both ways on the server's RTP ports (whole packets); per
   call (server port, split at gaps), the question's end is the last loud frame the
   caller sent and the reply the first loud frame the server sent after it
   (loadtest.audio_marks), both on the capture's clock: latency as the caller's line
   carries it. With an interruption: its onset -> the server's audio stopping;
4. a Monitor scrapes /metrics every second (active calls, CPU, memory), and one scrape
   before and after gives the stage histograms (loadtest.loadstats).
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.audio_marks import LOUD_DBFS, BargeinTracker, ReplyTracker, frame_dbfs
from loadtest.capacity_report import StatsError, parse_sipp_stats
from loadtest.monitor import Monitor, scrape
from loadtest.pcap import PcapError, read_pcap
from loadtest.sip_capacity import CapacityError, capture, free_udp_port, scenario_for, stop_process
from loadtest.wav2pcap import RATE, read_wav_8k
from media.g711 import alaw_decode, ulaw_decode

__all__ = ["SipScenario", "analyse_capture", "run_sip", "sipp_error_responses", "sipp_timeline"]

GAP_S = 2.0  # no packet on a port for this long: the next packets are another call
_UDP = struct.Struct("!HHHH")


@dataclass(frozen=True, slots=True)
class SipScenario:
    target: str  # host:port of the server's SIP UDP
    metrics_url: str | None
    rtp_ports: tuple[int, int]  # the server's RTP range (what to capture)
    calls: int
    concurrency: int
    rate: float
    hold_s: float
    question: Path  # WAV
    interruption: Path | None = None
    bargein_at_s: float = 6.0  # after the end of the question
    lead_s: float = 4.0
    mode: str = "answer"  # or "echo"
    interface: str = "lo"
    codec: str = "PCMU"
    time_limit_s: float = 900.0  # SIPp's global -timeout, at most


def build_pcap(s: SipScenario, path: Path) -> dict[str, float]:
    """speech.pcap: lead silence, the question, the interruption; where each one sits."""
    from loadtest.pcap import pcm_to_rtp, write_rtp_pcap

    question = read_wav_8k(s.question)
    parts = [np.zeros(round(s.lead_s * RATE), np.int16), question]
    info = {"question_start_s": s.lead_s, "question_end_s": s.lead_s + len(question) / RATE}
    if s.interruption is not None:
        cut = read_wav_8k(s.interruption)
        parts += [np.zeros(round(s.bargein_at_s * RATE), np.int16), cut]
        info["interruption_s"] = info["question_end_s"] + s.bargein_at_s
    pcm = np.concatenate([*parts, np.zeros(RATE // 5, np.int16)])
    info["packets"] = write_rtp_pcap(path, pcm_to_rtp(pcm.astype("<i2").tobytes(), s.codec))
    return info


def sipp_command(s: SipScenario, scenario: Path, limit_s: float) -> list[str]:
    host = s.target.rsplit(":", 1)[0]
    local = "127.0.0.1" if host.startswith("127.") or host == "localhost" else "0.0.0.0"
    return [
        "sipp", "-sf", str(scenario), "-t", "u1", "-i", local,
        "-p", str(free_udp_port()), "-mp", str(_media_port(s.rtp_ports)),
        "-l", str(s.concurrency), "-m", str(s.calls), "-r", f"{s.rate:g}",
        "-d", str(round(s.hold_s * 1000)),
        "-trace_stat", "-stf", "sipp_stats.csv", "-fd", "1",
        "-trace_screen", "-screen_file", "sipp_screen.log",
        "-trace_err", "-error_file", "sipp_errors.log",
        "-timeout", f"{math.ceil(limit_s)}s", "-timeout_error", "-nostdin", s.target,
    ]


def _media_port(avoid: tuple[int, int]) -> int:
    """SIPp's RTP port: free, and outside the server's range (the capture tells the two
    directions apart by it)."""
    for _ in range(50):
        port = free_udp_port(pair=True)
        if not avoid[0] - 1 <= port <= avoid[1]:
            return port
    raise CapacityError(f"no free UDP port outside {avoid[0]}-{avoid[1]} for SIPp's RTP")


_UNEXPECTED = re.compile(r"received 'SIP/2\.0 (\d{3}[^\r\n']*)")


def sipp_error_responses(text: str) -> dict[str, int]:
    """The SIP responses that failed calls got instead of what the scenario expected,
    from SIPp's -trace_err log: {"503 Service Unavailable": 2, ...}."""
    out: dict[str, int] = {}
    for status in _UNEXPECTED.findall(text):
        status = status.strip()
        out[status] = out.get(status, 0) + 1
    return out


def sipp_timeline(text: str) -> list[dict[str, float]]:
    """SIPp's -trace_stat rows as [{t, active, completed, failed}] (t: seconds since start)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return []
    head = lines[0].split(";")
    out = []
    for line in lines[1:]:
        row = dict(zip(head, line.split(";"), strict=False))
        hms = row.get("ElapsedTime(C)", "").split(":")
        try:
            t = int(hms[0]) * 3600 + int(hms[1]) * 60 + int(hms[2])  # HH:MM:SS:micros
            t += int(hms[3]) / 1e6 if len(hms) > 3 else 0.0
            out.append({"t": t, "active": int(row.get("CurrentCall") or 0),
                        "completed": int(row.get("SuccessfulCall(C)") or 0),
                        "failed": int(row.get("FailedCall(C)") or 0)})
        except (IndexError, ValueError):
            continue
    return out


# -- the capture -------------------------------------------------------------------------


def _udp(frame: bytes) -> tuple[int, int, bytes] | None:
    """(source port, destination port, payload) of an Ethernet/IPv4/UDP frame."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    start = 14 + (frame[14] & 0x0F) * 4
    if len(frame) < start + 8:
        return None
    sport, dport, length, _ = _UDP.unpack_from(frame, start)
    return sport, dport, frame[start + 8:start + max(8, length)]


def _loud(rtp: bytes) -> bool | None:
    """Is this G.711 RTP packet's audio loud? None for anything else (RTCP, DTMF)."""
    if len(rtp) < 12 or rtp[0] >> 6 != 2:
        return None
    pt = rtp[1] & 0x7F
    decode = {0: ulaw_decode, 8: alaw_decode}.get(pt)
    if decode is None:
        return None
    payload = rtp[12 + 4 * (rtp[0] & 0x0F):]
    return frame_dbfs(decode(payload)) > LOUD_DBFS if payload else None


Packet = tuple[float, bool, bool]  # time, inbound (to the server)?, loud?


def _calls(records: Iterable[tuple[float, int, bool, bool]]) -> list[list[Packet]]:
    """Packets (time, server port, inbound?, loud) grouped into calls: by server port,
    a new call after GAP_S without packets."""
    open_: dict[int, list[Packet]] = {}
    calls = []
    for t, port, inbound, loud in sorted(records):
        current = open_.get(port)
        if current is None or t - current[-1][0] > GAP_S:
            current = open_[port] = []
            calls.append(current)
        current.append((t, inbound, loud))
    return calls


def analyse_capture(data: bytes, ports: tuple[int, int], plan: dict[str, float],
                    mode: str = "answer") -> list[dict[str, Any]]:
    """Per call in the capture: the caller-side latency and barge-in stop (seconds, on
    the capture's clock; 'start' is the call's first inbound packet)."""
    records = []
    for rec in read_pcap(data):
        udp = _udp(rec.frame)
        if udp is None:
            continue
        sport, dport, payload = udp
        inbound = ports[0] <= dport <= ports[1]
        if not inbound and not ports[0] <= sport <= ports[1]:
            continue
        loud = _loud(payload)
        if loud is not None:
            records.append((rec.time, dport if inbound else sport, inbound, loud))
    out = []
    for packets in _calls(records):
        sent = [(t, loud) for t, inbound, loud in packets if inbound]
        if not sent:
            continue
        start = sent[0][0]
        cut_at = start + plan["interruption_s"] if "interruption_s" in plan else math.inf
        question = [t for t, loud in sent if loud and t < cut_at - 0.5]
        reply, barge = ReplyTracker(mode), BargeinTracker()
        onset = next((t for t, loud in sent if loud and t >= cut_at - 0.02), None)
        for t, inbound, loud in packets:
            if inbound:
                continue
            if question and reply.started is None and t >= question[0]:
                reply.question_started(question[0])
            if question and reply.ended is None and t >= question[-1]:
                reply.question_ended(question[-1])
            reply.frame(t, loud)
            if onset is not None and barge.sent_at is None and t >= onset:
                barge.interruption_sent(onset)
            barge.frame(t, loud)
        barge.finish()
        lat = reply.latency
        call: dict[str, Any] = {
            "start": start, "end": packets[-1][0], "frames_in": len(sent),
            "frames_out": len(packets) - len(sent),
            "latency_ms": None if lat is None else round(lat * 1000, 1),
            "question": [question[0], question[-1]] if question else None,
            "reply_onset": reply.onset,
        }
        if onset is not None:
            call["bargein"] = {"talking_at_onset": barge.talking_at_onset,
                               "stop_ms": _ms(barge.stop_latency), "clear_ms": None}
        out.append(call)
    return out


def _since(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 3)


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


# -- one run ------------------------------------------------------------------------------


def run_sip(s: SipScenario, workdir: Path) -> dict[str, Any]:
    """SIPp against the server with the capture and the monitor; the mode's raw results."""
    if shutil.which("sipp") is None:
        raise CapacityError("SIPp is not installed (Debian package sip-tester)")
    plan = build_pcap(s, workdir / "speech.pcap")
    scenario = scenario_for(s.codec, workdir)
    call_s = plan["packets"] * 0.02
    limit = min(s.time_limit_s,
                s.calls / s.rate + math.ceil(s.calls / s.concurrency) * (s.hold_s + 10) + 30)
    before = scrape(s.metrics_url)
    started, wall0 = time.monotonic(), time.time()
    timed_out = False
    with contextlib.ExitStack() as stack:
        cap = stack.enter_context(capture(workdir / "rtp.pcap", s.interface, s.rtp_ports,
                                          limit + 30, snaplen=2048, direction=""))
        monitor = stack.enter_context(Monitor(s.metrics_url, started, limit_s=limit + 30))
        with (workdir / "sipp.out").open("w") as out:
            sipp = subprocess.Popen(sipp_command(s, scenario, limit), cwd=workdir, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                sipp.wait(timeout=limit + 30)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                stop_process(sipp)
        time.sleep(0.5)  # the last packets after the final 200 OK
    wall_s = time.monotonic() - started
    after = scrape(s.metrics_url)
    stats_csv = workdir / "sipp_stats.csv"
    if not stats_csv.exists():
        tail = (workdir / "sipp.out").read_text(errors="replace")[-2000:]
        raise CapacityError(f"SIPp (exit {sipp.returncode}) wrote no statistics:\n{tail}")
    try:
        counts = parse_sipp_stats(stats_csv.read_text())
    except StatsError as e:
        raise CapacityError(f"{stats_csv}: {e}") from None
    try:
        calls = analyse_capture((workdir / "rtp.pcap").read_bytes(), s.rtp_ports, plan, s.mode)
    except (OSError, PcapError) as e:
        calls = []
        counts["capture_error"] = str(e)
    for c in calls:  # capture clock (epoch) -> seconds after the run started
        c["started_s"], c["ended_s"] = _since(c.pop("start"), wall0), _since(c.pop("end"), wall0)
        q = c.pop("question")
        c["question_s"] = [_since(q[0], wall0), _since(q[1], wall0)] if q else None
        c["reply_onset_s"] = _since(c.pop("reply_onset"), wall0)
    failures = dict(counts["failure_kinds"])
    errors_log = workdir / "sipp_errors.log"
    errors = errors_log.read_text(errors="replace") if errors_log.exists() else ""
    if timed_out or sipp.returncode not in (0, 1):
        failures.setdefault(f"sipp exit {sipp.returncode}" + (" (timed out)" if timed_out
                                                             else ""), 0)
    return {
        "sipp": {**counts, "exit_code": sipp.returncode, "timed_out": timed_out,
                 "capture_dropped": cap.get("dropped")},
        "calls": {"attempted": counts["attempted"], "completed": counts["completed"],
                  "failed": counts["failed"], "failures": failures,
                  "failure_responses": sipp_error_responses(errors),
                  "peak_concurrent": counts["max_concurrent"]},
        "plan": {**plan, "call_audio_s": round(call_s, 2)},
        "per_call": calls,
        "timeline_client": sipp_timeline(stats_csv.read_text()),
        "timeline_server": monitor.samples,
        "metrics_before": before, "metrics_after": after,
        "wall_s": wall_s, "scrapes_failed": monitor.failed,
    }
