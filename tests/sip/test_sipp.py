"""Acceptance: real SIPp runs every scenario in loadtest/sipp/ against a real
`switchboard serve --agent echo`, over UDP and over TCP; uac_auth and uac_auth_403
against one that trusts only 192.0.2.0/24, so SIPp must authenticate.

uac_pcmu plays speech.pcap: real speech (the packaged Piper voice), resampled to 8 kHz,
μ-law RTP written as a classic pcap by loadtest/pcap.py.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadtest.pcap import (
    PcapRecord,
    pcm_to_rtp,
    read_pcap,
    udp_frame,
    udp_payload,
    write_pcap,
    write_rtp_pcap,
)
from media.rtp import RtpPacket
from tests.helpers import Server, free_port, switchboard

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp (sip-tester) not installed"),
]

SCENARIOS = Path(__file__).resolve().parents[2] / "loadtest" / "sipp"
TRANSPORTS = {"udp": "u1", "tcp": "t1"}
SPEECH = "Hello, this is a test call. Please repeat after me: one, two, three, four."


@dataclass
class SippRun:
    returncode: int
    messages: str
    errors: str
    output: str

    def explain(self) -> str:
        tail = self.output[-3000:]
        return f"exit {self.returncode}\n--- errors\n{self.errors}\n--- output\n{tail}"


def run_sipp(scenario: str, transport: str, server: Server, workdir: Path,
             *extra: str) -> SippRun:
    name = f"{scenario}-{transport}"
    messages, errors = workdir / f"{name}.messages.log", workdir / f"{name}.errors.log"
    cmd = [
        "sipp", "-sf", str(SCENARIOS / f"{scenario}.xml"), "-m", "1", "-timeout", "30s",
        "-timeout_error", "-trace_err", "-trace_msg", "-message_file", str(messages),
        "-error_file", str(errors), "-t", TRANSPORTS[transport], "-i", "127.0.0.1",
        "-p", str(free_port()), "-mp", str(free_port()), "-nostdin", *extra,
        f"127.0.0.1:{server.sip_port}",
    ]
    proc = subprocess.run(cmd, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=90)
    read = lambda p: p.read_text(errors="replace") if p.exists() else ""  # noqa: E731
    return SippRun(proc.returncode, read(messages), read(errors), proc.stdout + proc.stderr)


def speech_pcm_8k() -> bytes:
    from media.resample import StreamResampler
    from pipeline.tts import PiperTts

    tts = PiperTts()
    pcm = b"".join(tts.synthesize(SPEECH))
    resampler = StreamResampler(tts.sample_rate, 8000)
    return resampler.process(pcm) + resampler.flush()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder SIPp runs in; it holds speech.pcap for uac_pcmu."""
    path = tmp_path_factory.mktemp("sipp")
    count = write_rtp_pcap(path / "speech.pcap", pcm_to_rtp(speech_pcm_8k()))
    assert count > 150  # several seconds of 20 ms packets
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The echo agent; it rings for 0.5 s so that uac_cancel can CANCEL."""
    env = {"SWITCHBOARD_SIP__RING_SECONDS": "0.5", "SWITCHBOARD_SIP__MEDIA_TIMEOUT": "30",
           "SWITCHBOARD_SIP__RTP_PORT_MIN": "40000", "SWITCHBOARD_SIP__RTP_PORT_MAX": "40100"}
    with switchboard(tmp_path_factory.mktemp("server"), "--agent", "echo", env=env) as s:
        yield s
        assert "Traceback" not in s.log(), s.log()


@pytest.fixture(scope="module")
def impatient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Hangs up after 2 s without RTP: uac_bye_from_server waits for its BYE."""
    env = {"SWITCHBOARD_SIP__MEDIA_TIMEOUT": "2",
           "SWITCHBOARD_SIP__RTP_PORT_MIN": "40200", "SWITCHBOARD_SIP__RTP_PORT_MAX": "40300"}
    with switchboard(tmp_path_factory.mktemp("impatient"), "--agent", "echo", env=env) as s:
        yield s
        assert "Traceback" not in s.log(), s.log()


CALLER_PASSWORD = "s3cret-Pa55"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """SIPp on 127.0.0.1 is outside trusted_networks here: its INVITEs must authenticate
    as alice. MD5 goes first: SIPp 3.6 answers only MD5 and reads only the first challenge."""
    env = {"SWITCHBOARD_SIP__TRUSTED_NETWORKS": "[192.0.2.0/24]",
           "SWITCHBOARD_SIP__CALLERS": f"{{alice: {CALLER_PASSWORD}}}",
           "SWITCHBOARD_SIP__AUTH_ALGORITHMS": "[MD5, SHA-256]",
           "SWITCHBOARD_SIP__RTP_PORT_MIN": "40600", "SWITCHBOARD_SIP__RTP_PORT_MAX": "40700"}
    with switchboard(tmp_path_factory.mktemp("auth"), "--agent", "echo", env=env) as s:
        yield s
        log = s.log()
        assert "Traceback" not in log, log
        assert CALLER_PASSWORD not in log and "response=" not in log, log


def counter(server: Server, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.compile(rf"^switchboard_{name}(?:\{{([^}}]*)\}})? ([0-9.e+]+)$", re.M)
    total = 0.0
    for found_labels, value in pattern.findall(server.metrics()):
        if not want or ",".join(sorted(found_labels.split(","))) == want:
            total += float(value)
    return total


def status_lines(messages: str, status: str) -> int:
    return len(re.findall(rf"^SIP/2\.0 {status} ", messages, re.M))


@pytest.fixture(params=sorted(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_options(server: Server, workdir: Path, transport: str) -> None:
    run = run_sipp("options", transport, server, workdir)
    assert run.returncode == 0, run.explain()
    assert re.search(r"^Allow: INVITE, ACK, BYE, CANCEL, OPTIONS", run.messages, re.M)


def test_uac_488(server: Server, workdir: Path, transport: str) -> None:
    run = run_sipp("uac_488", transport, server, workdir)
    assert run.returncode == 0, run.explain()
    assert status_lines(run.messages, "488") >= 1


def test_uac_cancel(server: Server, workdir: Path, transport: str) -> None:
    run = run_sipp("uac_cancel", transport, server, workdir)
    assert run.returncode == 0, run.explain()
    assert status_lines(run.messages, "487") >= 1


def test_uac_hold(server: Server, workdir: Path, transport: str) -> None:
    run = run_sipp("uac_hold", transport, server, workdir)
    assert run.returncode == 0, run.explain()


def test_uac_lost_ack(server: Server, workdir: Path, transport: str) -> None:
    run = run_sipp("uac_lost_ack", transport, server, workdir)
    assert run.returncode == 0, run.explain()
    # The INVITE's 200 came at least three times (T1 = 0.5 s: at 0, 0.5 and 1.5 s), then
    # one more 200 answers the BYE.
    ok_to_invite = re.findall(r"^SIP/2\.0 200 OK\r?\n(?:[^\r\n]+\r?\n)*?CSeq: 1 INVITE",
                              run.messages, re.M)
    assert len(ok_to_invite) >= 3, run.messages


def test_uac_bye_from_server(impatient_server: Server, workdir: Path, transport: str) -> None:
    run = run_sipp("uac_bye_from_server", transport, impatient_server, workdir)
    assert run.returncode == 0, run.explain()
    assert re.search(r"^BYE sip:", run.messages, re.M)
    assert counter(impatient_server, "calls_total", outcome="media_timeout",
                   transport="sip") >= 1


def test_uac_pcmu_echo_call(server: Server, workdir: Path, transport: str) -> None:
    received = counter(server, "rtp_packets_received_total")
    sent = counter(server, "rtp_packets_sent_total")
    packets = sum(1 for _ in read_pcap((workdir / "speech.pcap").read_bytes()))
    hold_ms = packets * 20 + 500  # the BYE goes after the whole capture has played
    run = run_sipp("uac_pcmu", transport, server, workdir, "-d", str(hold_ms))
    assert run.returncode == 0, run.explain()
    # Most of the speech arrived, and the echo agent answered with packets of its own.
    assert counter(server, "rtp_packets_received_total") - received >= 0.9 * packets
    assert counter(server, "rtp_packets_sent_total") - sent >= 0.9 * packets


def auth_args(server: Server, user: str, password: str) -> tuple[str, ...]:
    # SIPp's digest uri is remote_ip:port by default; Switchboard wants the Request-URI.
    return ("-au", user, "-ap", password, "-auth_uri", f"service@127.0.0.1:{server.sip_port}")


def test_uac_auth_digest_caller_is_answered(auth_server: Server, workdir: Path,
                                            transport: str) -> None:
    def unauthorized() -> float:
        return counter(auth_server, "calls_rejected_total", transport="sip",
                       reason="unauthorized")

    challenged = unauthorized()
    answered = counter(auth_server, "calls_total", transport="sip", outcome="remote_bye")
    run = run_sipp("uac_auth", transport, auth_server, workdir, "-d", "500",
                   *auth_args(auth_server, "alice", CALLER_PASSWORD))
    assert run.returncode == 0, run.explain()
    challenges = re.findall(r"^WWW-Authenticate: Digest (.*)$", run.messages, re.M)
    assert [re.search(r"algorithm=([\w-]+)", c).group(1) for c in challenges] == [  # type: ignore[union-attr]
        "MD5", "SHA-256"]
    assert all('qop="auth"' in c for c in challenges)
    assert status_lines(run.messages, "403") == 0
    assert unauthorized() - challenged == 1
    assert counter(auth_server, "calls_total", transport="sip",
                   outcome="remote_bye") - answered == 1


def test_uac_auth_wrong_password_is_forbidden(auth_server: Server, workdir: Path,
                                              transport: str) -> None:
    def forbidden() -> float:
        return counter(auth_server, "calls_rejected_total", transport="sip", reason="forbidden")

    before = forbidden()
    run = run_sipp("uac_auth_403", transport, auth_server, workdir,
                   *auth_args(auth_server, "alice", "not-the-password"))
    assert run.returncode == 0, run.explain()
    assert status_lines(run.messages, "200") == 0
    assert forbidden() - before == 1


def test_uac_without_credentials_is_challenged(auth_server: Server, workdir: Path) -> None:
    """uac_pcmu from an untrusted source meets the 401 it cannot answer; OPTIONS is open."""
    run = run_sipp("uac_pcmu", "udp", auth_server, workdir)
    assert run.returncode != 0 and status_lines(run.messages, "401") >= 1, run.explain()
    options = run_sipp("options", "udp", auth_server, workdir)
    assert options.returncode == 0, options.explain()


def test_pcap_round_trip() -> None:
    packets = pcm_to_rtp(bytes(range(160)) * 6, "PCMA", first_sequence=65535)  # 3 frames
    assert [p.sequence for p in packets] == [65535, 0, 1]
    assert packets[0].marker and not packets[1].marker and packets[1].timestamp == 160
    out = io.BytesIO()
    records = [PcapRecord(10 + n * 0.02, udp_frame(bytes(p))) for n, p in enumerate(packets)]
    assert write_pcap(out, records) == 3
    back = list(read_pcap(out.getvalue()))
    assert [round(r.time, 6) for r in back] == [10.0, 10.02, 10.04]
    assert [RtpPacket.parse(udp_payload(r.frame)) for r in back] == packets


def test_echo_agent_returns_the_callers_speech(server: Server, workdir: Path) -> None:
    """End to end without SIPp: a UDP caller sends speech as RTP and hears it come back."""
    import socket
    import time

    from media.g711 import ulaw_decode
    from media.vad import rms_dbfs
    from sip.message import SipResponse, parse_message
    from sip.sdp import SessionDescription

    sip_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sip_sock.bind(("127.0.0.1", 0))
    rtp_sock.bind(("127.0.0.1", 0))
    sip_sock.settimeout(5)
    sip_port, rtp_port = sip_sock.getsockname()[1], rtp_sock.getsockname()[1]
    server_addr = ("127.0.0.1", server.sip_port)
    sdp = (f"v=0\r\no=t 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           f"m=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n")

    def request(method: str, cseq: int, to_tag: str = "", body: str = "") -> bytes:
        to = f";tag={to_tag}" if to_tag else ""
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        return (f"{method} sip:echo@127.0.0.1:{server.sip_port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bK{method}{cseq};rport\r\n"
                f"From: <sip:e2e@127.0.0.1:{sip_port}>;tag=e2e\r\n"
                f"To: <sip:echo@127.0.0.1>{to}\r\nCall-ID: e2e-echo\r\n"
                f"CSeq: {cseq} {method}\r\n"
                f"Contact: <sip:e2e@127.0.0.1:{sip_port}>\r\nMax-Forwards: 70\r\n{ctype}"
                f"Content-Length: {len(body)}\r\n\r\n{body}").encode()

    def final_response() -> SipResponse:
        while True:
            message = parse_message(sip_sock.recv(65535))
            if isinstance(message, SipResponse) and message.status >= 200:
                return message

    try:
        sip_sock.sendto(request("INVITE", 1, body=sdp), server_addr)
        ok = final_response()
        assert ok.status == 200
        tag = ok.to_addr.tag or ""
        answer = SessionDescription.parse(ok.body)
        media_addr = (answer.connection.address, answer.media[0].port)  # type: ignore[union-attr]
        sip_sock.sendto(request("ACK", 1, tag), server_addr)
        packets = pcm_to_rtp(speech_pcm_8k())
        rtp_sock.setblocking(False)
        heard: list[bytes] = []
        start = time.monotonic()
        for n, packet in enumerate(packets + pcm_to_rtp(bytes(320 * 50), first_sequence=9000)):
            # Real-time pacing: the far end's jitter buffer plays what a phone would send.
            delay = start + n * 0.02 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            rtp_sock.sendto(bytes(packet), media_addr)
            while True:
                try:
                    heard.append(RtpPacket.parse(rtp_sock.recv(2048)).payload)
                except BlockingIOError:
                    break
        sip_sock.sendto(request("BYE", 2, tag), server_addr)
        assert final_response().status == 200
    finally:
        sip_sock.close()
        rtp_sock.close()
    loud_in = sum(1 for p in packets if rms_dbfs(ulaw_decode(p.payload)) > -40)
    loud_out = sum(1 for p in heard if rms_dbfs(ulaw_decode(p)) > -40)
    assert len(heard) >= 0.9 * len(packets)
    assert loud_in > 50 and loud_out >= 0.8 * loud_in, (loud_in, loud_out)


def test_sigterm_hangs_up_calls_in_progress(tmp_path: Path, workdir: Path) -> None:
    """Graceful shutdown: a call in progress gets our BYE, then the process exits 0."""
    import time

    env = {"SWITCHBOARD_SIP__RTP_PORT_MIN": "40400", "SWITCHBOARD_SIP__RTP_PORT_MAX": "40500"}
    with switchboard(tmp_path, "--agent", "echo", env=env) as server:
        cmd = [
            "sipp", "-sf", str(SCENARIOS / "uac_bye_from_server.xml"), "-m", "1",
            "-timeout", "30s", "-timeout_error", "-t", "u1", "-i", "127.0.0.1",
            "-p", str(free_port()), "-mp", str(free_port()), "-nostdin",
            f"127.0.0.1:{server.sip_port}",
        ]
        sipp = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while counter(server, "calls_active", transport="sip") < 1:
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.1)
            server.proc.terminate()
            assert server.proc.wait(timeout=20) == 0, server.log()
            assert sipp.wait(timeout=30) == 0
        finally:
            if sipp.poll() is None:
                sipp.kill()
                sipp.wait()
        assert "ending: shutdown" in server.log()
