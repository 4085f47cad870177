"""Scale-out: the shipped kamailio/kamailio.cfg, run by the real Kamailio from Debian, in
front of real `switchboard serve --agent echo` processes, driven by real SIPp.

The config is used as shipped: the test only sets its defines with -A (listen address,
dispatcher list, ctl socket, probe interval and thresholds, tm timer), and the
dispatcher list is the shipped kamailio/dispatcher.list with its URIs pointed at the
test's nodes. Everything is on loopback with free ports; every wait has a deadline.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import Server, free_port, switchboard

needs_kamailio = pytest.mark.skipif(
    shutil.which("kamailio") is None or shutil.which("kamcmd") is None,
    reason="Kamailio not installed (scripts/setup.sh installs it)")
needs_sipp = pytest.mark.skipif(shutil.which("sipp") is None,
                                reason="SIPp (sip-tester) not installed")

ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "kamailio" / "kamailio.cfg"
DISPATCHER_LIST = ROOT / "kamailio" / "dispatcher.list"

# SIPp's built-in uac and loadtest/sipp/uac_pcmu.xml send ACK and BYE straight to the
# proxy without the Route set; through a record-routing proxy the UAC must follow it.
UAC_ROUTED = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="PCMU call through a record-routing proxy">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=ptime:20

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <pause/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
</scenario>
"""


def wait_for(what: str, check: Callable[[], bool], timeout: float, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)


# -- a few raw SIP requests over UDP ---------------------------------------------------------


def sip_request(port: int, method: str, ruri: str, *, max_forwards: int = 70,
                timeout: float = 2.0) -> int | None:
    """Send one out-of-dialog request to 127.0.0.1:port; the final status, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.25)
        local = s.getsockname()[1]
        branch = f"z9hG4bK{os.urandom(6).hex()}"
        msg = (f"{method} {ruri} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch};rport\r\n"
               f"From: <sip:probe@127.0.0.1:{local}>;tag={os.urandom(4).hex()}\r\n"
               f"To: <{ruri}>\r\n"
               f"Call-ID: {os.urandom(8).hex()}@127.0.0.1\r\n"
               f"CSeq: 1 {method}\r\n"
               f"Contact: <sip:probe@127.0.0.1:{local}>\r\n"
               f"Max-Forwards: {max_forwards}\r\n"
               "Content-Length: 0\r\n\r\n").encode()
        deadline = time.monotonic() + timeout
        s.sendto(msg, ("127.0.0.1", port))
        while time.monotonic() < deadline:
            try:
                data = s.recv(65535)
            except TimeoutError:
                s.sendto(msg, ("127.0.0.1", port))  # UDP: retransmit like a UAC would
                continue
            found = re.match(rb"SIP/2\.0 (\d{3}) ", data)
            if found and int(found[1]) >= 200:
                return int(found[1])
    return None


# -- Kamailio with the shipped config --------------------------------------------------------


def render_dispatcher_list(nodes: list[str]) -> str:
    """The shipped list with its first len(nodes) destination URIs replaced, in order;
    set id, flags, priority and attributes stay as shipped."""
    template = [line for line in DISPATCHER_LIST.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert len(template) >= len(nodes), "the shipped list has fewer entries than the test"
    out = []
    for line, uri in zip(template, nodes, strict=False):
        setid, _, rest = line.split(maxsplit=2)
        out.append(f"{setid} {uri} {rest}")
    return "\n".join(out) + "\n"


@dataclass
class Kamailio:
    proc: subprocess.Popen[bytes]
    port: int
    ctl: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def states(self) -> dict[str, str]:
        """Destination URI -> dispatcher flags (AP active, IP inactive, TP trying...)."""
        out = subprocess.run(["kamcmd", "-s", self.ctl, "dispatcher.list"],
                             capture_output=True, text=True, timeout=5)
        return dict(re.findall(r"URI: (\S+)\s+FLAGS: (\S+)", out.stdout))


@contextmanager
def kamailio(nodes: list[str], **defines: int) -> Iterator[Kamailio]:
    # ctl is a unix socket (path at most 107 bytes): keep the run dir short
    run = Path(tempfile.mkdtemp(prefix="kam-"))
    port = free_port()
    (run / "dispatcher.list").write_text(render_dispatcher_list(nodes))
    ctl = f"unix:{run}/ctl"
    all_defines = {"LISTEN_IP": "127.0.0.1", "LISTEN_PORT": str(port),
                   "DISPATCHER_LIST": f'"{run}/dispatcher.list"', "CTL_SOCKET": f'"{ctl}"',
                   **{k: str(v) for k, v in defines.items()}}
    cmd = ["kamailio", "-f", str(CFG), "-DD", "-E", "-n", "2", "-m", "32", "-M", "8",
           "-w", str(run), "-Y", str(run), "-P", str(run / "kamailio.pid")]
    for name, value in all_defines.items():
        cmd += ["-A", f"{name}={value}"]
    log_path = run / "kamailio.log"
    with log_path.open("wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    kam = Kamailio(proc, port, ctl, log_path)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"kamailio exited with {proc.returncode}:\n{kam.log()}")
            return sip_request(port, "OPTIONS", f"sip:127.0.0.1:{port}", timeout=0.5) is not None

        wait_for("kamailio answering OPTIONS", up, timeout=15)
        yield kam
        # the script's own xlog errors are expected in some tests; Kamailio's are not
        assert not re.search(r"\b(ERROR|CRITICAL|BUG): <(?!script>)", kam.log()), kam.log()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only its children
                proc.wait()
        shutil.rmtree(run, ignore_errors=True)


# -- SIPp and the nodes ----------------------------------------------------------------------


def sipp_calls(kam: Kamailio, workdir: Path, calls: int,
               tag: str) -> subprocess.CompletedProcess[str]:
    """`calls` short PCMU calls through Kamailio; exit status 0 means every one succeeded.
    Call-IDs are fixed per tag, so which node a call hashes to is the same every run."""
    scenario = workdir / "uac_routed.xml"
    scenario.write_text(UAC_ROUTED)
    cmd = ["sipp", "-sf", str(scenario), "-m", str(calls), "-r", "10", "-l", "20", "-d", "300",
           "-cid_str", f"%u-{tag}@%s", "-i", "127.0.0.1", "-p", str(free_port()),
           "-mp", str(free_port()), "-timeout", "30s", "-timeout_error", "-nostdin",
           "-trace_err", "-error_file", str(workdir / f"{tag}.errors.log"),
           f"127.0.0.1:{kam.port}"]
    return subprocess.run(cmd, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60)


def explain(run: subprocess.CompletedProcess[str], workdir: Path, kam: Kamailio) -> str:
    errors = "\n".join(p.read_text(errors="replace")[-2000:] for p in workdir.glob("*.errors.log"))
    return (f"sipp exit {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-1000:]}\n"
            f"--- sipp errors\n{errors}\n--- kamailio\n{kam.log()[-4000:]}")


def counter(server: Server, name: str, **labels: str) -> float:
    total = 0.0
    for line in server.metrics().splitlines():
        found = re.match(rf"switchboard_{name}\{{([^}}]*)\}} ([0-9.e+]+)$", line)
        if found and all(f'{k}="{v}"' in found[1] for k, v in labels.items()):
            total += float(found[2])
    return total


def ended_by_caller(server: Server) -> int:
    """Calls that ended with the caller's BYE: the BYE found its way through the proxy."""
    return int(counter(server, "calls_total", transport="sip", outcome="remote_bye"))


def uri(server: Server) -> str:
    return f"sip:127.0.0.1:{server.sip_port}"


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        server.proc.wait(timeout=20)


def node_env(rtp_base: int) -> dict[str, str]:
    return {"SWITCHBOARD_SIP__RTP_PORT_MIN": str(rtp_base),
            "SWITCHBOARD_SIP__RTP_PORT_MAX": str(rtp_base + 98)}


# -- tests: the shipped files as text -------------------------------------------------------


def test_readme_documents_every_define() -> None:
    """Every #!trydef in kamailio.cfg is in the README's table with its default."""
    defines = re.findall(r"^#!trydef (\w+) (.+)$", CFG.read_text(), re.M)
    assert len(defines) >= 10
    readme = (ROOT / "kamailio" / "README.md").read_text()
    for name, default in defines:
        row = re.search(rf"^\|[^|\n]*`{name}`[^|\n]*\|([^|\n]*)\|", readme, re.M)
        assert row, f"README has no row for {name}"
        assert f"`{default.strip()}`" in row[1], f"README's default for {name}: {row[1]}"


def test_shipped_dispatcher_list_is_well_formed() -> None:
    setid = re.search(r"^#!trydef SB_SET (\d+)$", CFG.read_text(), re.M)
    assert setid
    duids = []
    for line in DISPATCHER_LIST.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        found = re.fullmatch(r"(\d+) (sip:[\w.-]+:\d+(?:;transport=(?:udp|tcp))?) (\d+) (\d+) "
                             r"(\S+)", line)
        assert found, line
        assert found[1] == setid[1] and found[3] == "0"
        attrs = dict(a.split("=", 1) for a in found[5].split(";"))
        duids.append(attrs["duid"])
    assert len(duids) >= 2 and len(set(duids)) == len(duids)


# -- tests: the real Kamailio ----------------------------------------------------------------


@needs_kamailio
def test_shipped_config_passes_kamailio_check() -> None:
    """kamailio -c with the shipped defaults (only the list path points at the repo)."""
    out = subprocess.run(["kamailio", "-c", "-f", str(CFG),
                          "-A", f'DISPATCHER_LIST="{DISPATCHER_LIST}"'],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "config file ok" in out.stdout + out.stderr


@pytest.mark.slow
@needs_kamailio
def test_no_node_no_relay_no_loops() -> None:
    """With its only node dead: 503 to calls and to OPTIONS once the probe fails; never a
    relay to a foreign domain; Max-Forwards and methods checked before dispatching."""
    dead = f"sip:127.0.0.1:{free_port()}"
    with kamailio([dead], DS_PING_INTERVAL=1, DS_PROBING_THRESHOLD=1, FR_TIMER=500) as kam:
        me = f"sip:127.0.0.1:{kam.port}"
        assert sip_request(kam.port, "INVITE", "sip:5000@example.com") == 403
        assert sip_request(kam.port, "INVITE", f"sip:5000@127.0.0.1:{kam.port}",
                           max_forwards=0) == 483
        assert sip_request(kam.port, "MESSAGE", f"sip:5000@127.0.0.1:{kam.port}") == 405
        wait_for("dead node marked inactive", lambda: kam.states()[dead].startswith("I"), 10)
        assert sip_request(kam.port, "OPTIONS", me) == 503
        assert sip_request(kam.port, "INVITE", f"sip:5000@127.0.0.1:{kam.port}") == 503
        assert "no active Switchboard node" in kam.log()


@pytest.mark.slow
@needs_kamailio
@needs_sipp
def test_calls_spread_over_nodes_and_avoid_a_stopped_one(tmp_path: Path) -> None:
    with ExitStack() as stack:
        a = stack.enter_context(switchboard(tmp_path, "--agent", "echo", env=node_env(41000)))
        b = stack.enter_context(switchboard(tmp_path, "--agent", "echo", env=node_env(41100)))
        kam = stack.enter_context(kamailio(
            [uri(a), uri(b)], DS_PING_INTERVAL=1, DS_PROBING_THRESHOLD=1,
            DS_INACTIVE_THRESHOLD=1, FR_TIMER=1000))
        assert [s[0] for s in kam.states().values()] == ["A", "A"]

        run = sipp_calls(kam, tmp_path, 20, "spread")
        assert run.returncode == 0, explain(run, tmp_path, kam)
        on_a, on_b = ended_by_caller(a), ended_by_caller(b)
        assert (on_a, on_b) != (0, 20) and (on_a, on_b) != (20, 0), (on_a, on_b)
        assert on_a + on_b == 20, (on_a, on_b)

        # SIGTERM: a answers OPTIONS with 503 while it stops, then nothing at all
        stop(a)
        wait_for("stopped node marked inactive", lambda: kam.states()[uri(a)].startswith("I"),
                 timeout=15)
        assert kam.states()[uri(b)].startswith("A")
        assert sip_request(kam.port, "OPTIONS", f"sip:127.0.0.1:{kam.port}") == 200

        run = sipp_calls(kam, tmp_path, 20, "drained")
        assert run.returncode == 0, explain(run, tmp_path, kam)
        assert ended_by_caller(b) == on_b + 20
        assert f"node {uri(a)} is DOWN" in kam.log()
        assert "trying the next" not in kam.log()  # the probe took it out, no call paid for it
        assert "Traceback" not in b.log(), b.log()


def hold_one_call(stack: ExitStack, server: Server, workdir: Path) -> None:
    """One long call straight to `server` (SIPp's built-in uac, no RTP), ended by SIPp's
    death at the end of the test; `server` is stopped first so its BYE is answered."""
    holder = subprocess.Popen(
        ["sipp", "-sn", "uac", "-m", "1", "-d", "60000", "-i", "127.0.0.1",
         "-p", str(free_port()), "-mp", str(free_port()), "-nostdin",
         f"127.0.0.1:{server.sip_port}"],
        cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    stack.callback(lambda: (holder.kill(), holder.wait()))
    stack.callback(stop, server)
    wait_for("node full", lambda: sip_request(server.sip_port, "OPTIONS", uri(server)) == 503,
             timeout=10)


@pytest.mark.slow
@needs_kamailio
@needs_sipp
def test_a_full_node_leaves_the_rotation_and_comes_back(tmp_path: Path) -> None:
    """OPTIONS answered 503 (at max_calls) takes a node out; once its call ends (here by
    its media timeout) the 200 answers bring it back."""
    busy_env = {**node_env(41500), "SWITCHBOARD_SIP__MAX_CALLS": "1",
                "SWITCHBOARD_SIP__MEDIA_TIMEOUT": "10"}
    with ExitStack() as stack:
        busy = stack.enter_context(switchboard(tmp_path, "--agent", "echo", env=busy_env))
        other = stack.enter_context(switchboard(tmp_path, "--agent", "echo",
                                                env=node_env(41600)))
        hold_one_call(stack, busy, tmp_path)
        kam = stack.enter_context(kamailio(
            [uri(busy), uri(other)], DS_PING_INTERVAL=1, DS_PROBING_THRESHOLD=1,
            DS_INACTIVE_THRESHOLD=1, FR_TIMER=1000))
        wait_for("full node marked inactive", lambda: kam.states()[uri(busy)][0] == "I", 5)

        run = sipp_calls(kam, tmp_path, 10, "full")
        assert run.returncode == 0, explain(run, tmp_path, kam)
        assert ended_by_caller(other) == 10
        assert "trying the next" not in kam.log()  # the probe took it out, no call paid

        wait_for("node back after its call ended",
                 lambda: kam.states()[uri(busy)][0] == "A", timeout=15, every=0.25)
        log = kam.log()
        assert f"node {uri(busy)} is DOWN" in log and f"node {uri(busy)} is UP" in log, log
        assert counter(busy, "calls_total", transport="sip", outcome="media_timeout") == 1


@pytest.mark.slow
@needs_kamailio
@needs_sipp
def test_busy_and_frozen_nodes_fail_over_to_the_next(tmp_path: Path) -> None:
    """No probes during the test (30 s interval): the INVITE itself finds out. A node at
    max_calls answers 503, a frozen one nothing; both calls move on to the healthy node."""
    busy_env = {**node_env(41200), "SWITCHBOARD_SIP__MAX_CALLS": "1",
                "SWITCHBOARD_SIP__MEDIA_TIMEOUT": "120"}
    with ExitStack() as stack:
        busy = stack.enter_context(switchboard(tmp_path, "--agent", "echo", env=busy_env))
        frozen = stack.enter_context(switchboard(tmp_path, "--agent", "echo",
                                                 env=node_env(41300)))
        healthy = stack.enter_context(switchboard(tmp_path, "--agent", "echo",
                                                  env=node_env(41400)))

        hold_one_call(stack, busy, tmp_path)
        os.kill(frozen.proc.pid, signal.SIGSTOP)
        # thawed, it would answer the INVITEs queued meanwhile and then wait on BYEs for
        # those calls at shutdown: end it outright instead
        stack.callback(lambda: (frozen.proc.kill(), frozen.proc.wait()))

        kam = stack.enter_context(kamailio(
            [uri(busy), uri(frozen), uri(healthy)], DS_PING_INTERVAL=30, FR_TIMER=1000))
        run = sipp_calls(kam, tmp_path, 20, "failover")
        assert run.returncode == 0, explain(run, tmp_path, kam)

        log = kam.log()
        assert f"node {uri(busy)} failed" in log and "with 503, trying the next" in log, log
        assert f"node {uri(frozen)} failed" in log and "with 408, trying the next" in log, log
        assert ended_by_caller(healthy) == 20
        assert counter(busy, "calls_rejected_total", transport="sip") >= 1
        states = kam.states()
        assert states[uri(busy)].startswith("I") and states[uri(frozen)].startswith("I")
        assert states[uri(healthy)].startswith("A")
