"""Call records in a real `switchboard serve`, after real SIPp calls: GET /calls with its
filters, GET /calls/{id} (merged with the outbound API's live state), `switchboard
calls`; and the graceful shutdown drain (SIGTERM while a call is up)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from switchboard.config import RecordsConfig
from switchboard.records.sqlite import SqliteStore
from switchboard.records.store import CallQuery
from tests.helpers import EXE, Server, free_port, switchboard
from tests.postgres import PASSWORD

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp (sip-tester) not installed"),
]

SCENARIOS = Path(__file__).resolve().parents[2] / "loadtest" / "sipp"

# INVITE, two DTMF digits as SIP INFO (application/dtmf-relay), then the caller's BYE.
UAC_DTMF = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="call with INFO DTMF">
  <send retrans="500"><![CDATA[
INVITE sip:bot@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Alice" <sip:alice@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:bot@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:alice@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=user1 1 1 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200"/>
  <send><![CDATA[
ACK sip:bot@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Alice" <sip:alice@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:bot@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <pause milliseconds="300"/>
  <send retrans="500"><![CDATA[
INFO sip:bot@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Alice" <sip:alice@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:bot@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 INFO
Max-Forwards: 70
Content-Type: application/dtmf-relay
Content-Length: [len]

Signal=5
Duration=160
]]></send>
  <recv response="200"/>
  <send retrans="500"><![CDATA[
INFO sip:bot@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Alice" <sip:alice@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:bot@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 3 INFO
Max-Forwards: 70
Content-Type: application/dtmf-relay
Content-Length: [len]

Signal=#
Duration=160
]]></send>
  <recv response="200"/>
  <pause milliseconds="300"/>
  <send retrans="500"><![CDATA[
BYE sip:bot@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Alice" <sip:alice@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:bot@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 4 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""


def sipp(server: Server, workdir: Path, *args: str) -> subprocess.Popen[str]:
    """SIPp against `server`, one call; `args` name the scenario and its options."""
    cmd = ["sipp", *args, "-m", "1", "-timeout", "30s", "-timeout_error", "-i", "127.0.0.1",
           "-p", str(free_port()), "-mp", str(free_port()), "-nostdin",
           f"127.0.0.1:{server.sip_port}"]
    return subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(proc: subprocess.Popen[str], timeout: float = 40) -> int:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


def get(server: Server, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post(server: Server, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)
    return result


def options_status(port: int) -> int:
    """One OPTIONS over UDP, as a load balancer probes; the response status."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(3)
        local = s.getsockname()[1]
        tag = secrets.token_hex(6)
        s.sendto((f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{tag}\r\n"
                  f"Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag={tag}\r\n"
                  f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: {tag}@probe\r\n"
                  "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", port))
        return int(s.recv(65535).split(b" ", 2)[1])


def answered_calls(server: Server) -> list[dict[str, Any]]:
    return [c for c in get(server, "/calls")[1]["calls"] if c["answered_at"]]


def env_for(db: Path, rtp: int, **extra: str) -> dict[str, str]:
    return {"SWITCHBOARD_RECORDS__PATH": str(db), "SWITCHBOARD_SIP__RTP_PORT_MIN": str(rtp),
            "SWITCHBOARD_SIP__RTP_PORT_MAX": str(rtp + 98), **extra}


def records_env(cfg: RecordsConfig) -> dict[str, str]:
    """The environment that points `switchboard` at `cfg`'s store."""
    if cfg.backend == "sqlite":
        return {"SWITCHBOARD_RECORDS__PATH": cfg.path}
    return {"SWITCHBOARD_RECORDS__BACKEND": cfg.backend, "SWITCHBOARD_RECORDS__DSN": cfg.dsn}


def calls_command(db: Path | RecordsConfig, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = db if isinstance(db, RecordsConfig) else RecordsConfig(path=str(db))
    return subprocess.run([EXE, "calls", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **records_env(cfg)})


def test_records_of_real_calls_over_http_and_in_the_terminal(
        tmp_path: Path, records_config: RecordsConfig) -> None:
    """Both backends: SQLite, and PostgreSQL (records.backend=postgresql, a real server)."""
    db = records_config
    (tmp_path / "uac_dtmf.xml").write_text(UAC_DTMF)
    env = {**env_for(tmp_path / "unused.db", 43000), **records_env(db)}
    with switchboard(tmp_path, "--agent", "echo", env=env) as server:
        store = get(server, "/readyz")[1]["records"]
        assert (store["backend"], store["failing"]) == (db.backend, None)
        assert finished(sipp(server, tmp_path, "-sf", "uac_dtmf.xml", "-t", "u1")) == 0
        assert finished(sipp(server, tmp_path, "-sn", "uac", "-d", "200", "-t", "t1")) == 0

        def ended() -> list[dict[str, Any]]:
            calls = get(server, "/calls")[1]["calls"]
            return calls if len(calls) == 2 and all(c["outcome"] for c in calls) else []

        second, first = wait_for("two ended call records", ended)
        assert first["callee"] == "bot" and first["caller"] == "alice"
        assert first["dtmf"] == "5#" and second["dtmf"] == ""
        assert first["params"]["source"].startswith("udp:127.0.0.1:")
        assert second["params"]["source"].startswith("tcp:127.0.0.1:")
        for c in (first, second):
            assert (c["transport"], c["direction"], c["agent"]) == ("sip", "inbound", "echo")
            assert (c["outcome"], c["cause"], c["turn_count"]) == ("remote_bye", "caller", 0)
            assert c["answered_at"] is not None and c["duration_s"] is not None

        def ids(query: str) -> list[str]:
            code, body = get(server, f"/calls?{query}")
            assert code == 200, body
            return [c["call_id"] for c in body["calls"]]

        both = [second["call_id"], first["call_id"]]
        assert ids("transport=sip&outcome=remote_bye&agent=echo") == both
        assert ids("agent=conversation") == [] and ids("outcome=shutdown") == []
        assert ids("limit=1") == both[:1] and ids("limit=1&offset=1") == both[1:]
        assert ids(f"since={first['started_at']}") == both
        assert ids(f"until={second['started_at']}") == both[1:]
        assert ids("since=2999-01-01T00:00:00Z") == [] and ids("until=0") == []
        code, bad = get(server, "/calls?since=soon")
        assert code == 400 and "since" in bad["error"]

        code, call = get(server, f"/calls/{first['call_id']}")
        assert code == 200 and call["id"] == first["id"]
        assert [(e["event"], e["digit"]) for e in call["events"]] == [("dtmf", "5"), ("dtmf", "#")]
        assert call["transcript"] == [] and call["turns"] == []
        assert get(server, "/calls/no-such-call")[0] == 404
        assert "switchboard_records_write_errors_total{" not in server.metrics()
    if db.backend == "postgresql":
        assert "call records: postgresql://postgres@127.0.0.1:" in server.log()
        assert PASSWORD not in server.log()

    # The terminal reads the same file, the server gone.
    table = calls_command(db)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:8] == ["time", "door", "caller", "callee", "agent", "duration",
                                    "outcome", "turns"]
    assert len(lines) == 3 and all("remote_bye" in line for line in lines[1:])
    assert lines[2].split()[-1] == first["call_id"]
    one = calls_command(db, first["call_id"])
    assert one.returncode == 0, one.stderr
    assert f"call {first['call_id']}" in one.stdout and "DTMF     5#" in one.stdout
    assert "remote_bye (caller)" in one.stdout
    listed = json.loads(calls_command(db, "--json", "--limit", "1", "--outcome",
                                      "remote_bye").stdout)
    assert [c["call_id"] for c in listed] == both[:1]
    missing = calls_command(db, "nope")
    assert missing.returncode == 1 and "no call 'nope'" in missing.stderr


def test_an_outbound_call_shows_its_live_state_and_its_record(tmp_path: Path) -> None:
    quick = {"SWITCHBOARD_SHUTDOWN_DRAIN_SECONDS": "0"}
    with switchboard(tmp_path, "--agent", "echo",
                     env=env_for(tmp_path / "b.db", 43200, **quick)) as b:
        with switchboard(tmp_path, "--agent", "echo",
                         env=env_for(tmp_path / "a.db", 43400, **quick)) as a:
            code, placed = post(a, "/calls", {"to": f"sip:echo@127.0.0.1:{b.sip_port}"})
            assert code == 202, placed

            def answered() -> dict[str, Any] | None:
                status = get(a, f"/calls/{placed['call_id']}")[1]
                return status if status.get("state") == "answered" and "id" in status else None

            call = wait_for("an answered outbound call with its record", answered)
            assert call["status"] == 200 and call["setup_time_s"] is not None  # live
            assert (call["direction"], call["transport"]) == ("outbound", "sip")  # record
            assert call["answered_at"] is not None and call["outcome"] is None
            assert placed["call_id"] in [c["call_id"] for c in get(a, "/calls")[1]["calls"]]
            a.proc.terminate()  # drain 0: the call ends at once with our BYE
            assert a.proc.wait(timeout=20) == 0, a.log()
        ours = SqliteStore(tmp_path / "a.db", readonly=True).get_call(placed["call_id"])
        assert ours is not None and ours["outcome"] == "shutdown"

        def ended() -> dict[str, Any] | None:
            status = get(b, f"/calls/{placed['call_id']}")[1]
            return status if status.get("outcome") else None

        theirs = wait_for("the far end's record", ended)
        assert (theirs["direction"], theirs["outcome"]) == ("inbound", "remote_bye")


def test_sigterm_lets_a_call_in_progress_finish(tmp_path: Path) -> None:
    """Drain: readiness and OPTIONS say no at once, the call goes on until the caller's BYE."""
    db = tmp_path / "calls.db"
    env = env_for(db, 43600, SWITCHBOARD_SIP__MEDIA_TIMEOUT="60",
                  SWITCHBOARD_SHUTDOWN_DRAIN_SECONDS="60")
    with switchboard(tmp_path, "--agent", "echo", env=env) as server:
        assert options_status(server.sip_port) == 200
        caller = sipp(server, tmp_path, "-sn", "uac", "-d", "4000")  # hangs up after 4 s
        try:
            wait_for("the answered call", lambda: answered_calls(server))
            server.proc.terminate()
            assert wait_for("readiness off", lambda: get(server, "/readyz")[0] == 503)
            assert options_status(server.sip_port) == 503
            assert server.proc.poll() is None  # still serving the call
            assert finished(caller) == 0, caller.stdout.read() if caller.stdout else ""
        finally:
            if caller.poll() is None:
                finished(caller, 0.1)
        assert server.proc.wait(timeout=20) == 0, server.log()
        assert "draining: 1 calls in progress" in server.log()
        assert "ending: shutdown" not in server.log()
    calls = SqliteStore(db, readonly=True).list_calls(CallQuery())
    assert [(c["outcome"], c["cause"]) for c in calls] == [("remote_bye", "caller")]


def test_sigterm_ends_calls_politely_when_the_drain_time_is_over(tmp_path: Path) -> None:
    db = tmp_path / "calls.db"
    env = env_for(db, 43800, SWITCHBOARD_SIP__MEDIA_TIMEOUT="60",
                  SWITCHBOARD_SHUTDOWN_DRAIN_SECONDS="1")
    with switchboard(tmp_path, "--agent", "echo", env=env) as server:
        # The caller waits for our BYE (up to 30 s) and answers it.
        caller = sipp(server, tmp_path, "-sf", str(SCENARIOS / "uac_bye_from_server.xml"))
        try:
            wait_for("the answered call", lambda: answered_calls(server))
            server.proc.terminate()
            assert finished(caller) == 0, caller.stdout.read() if caller.stdout else ""
        finally:
            if caller.poll() is None:
                finished(caller, 0.1)
        assert server.proc.wait(timeout=20) == 0, server.log()
        assert "drain time over: ending 1 calls" in server.log()
    calls = SqliteStore(db, readonly=True).list_calls(CallQuery())
    assert [(c["outcome"], c["cause"]) for c in calls] == [("shutdown", "shutdown")]


def test_stream_doors_leave_records_too(tmp_path: Path) -> None:
    import asyncio

    from tests.streams.test_app import CALL, _audiosocket_call, _twilio_call

    db, as_port = tmp_path / "calls.db", free_port()
    env = env_for(db, 44000, SWITCHBOARD_STREAMS__AUDIOSOCKET__ENABLED="true",
                  SWITCHBOARD_STREAMS__AUDIOSOCKET__LISTEN="127.0.0.1",
                  SWITCHBOARD_STREAMS__AUDIOSOCKET__PORT=str(as_port))
    with switchboard(tmp_path, "--agent", "echo", env=env) as server:
        assert asyncio.run(_twilio_call(server.http_port))
        assert asyncio.run(_audiosocket_call(as_port))

        def ended() -> dict[str, dict[str, Any]]:
            calls = {c["transport"]: c for c in get(server, "/calls")[1]["calls"]}
            return calls if len(calls) == 2 and all(c["outcome"] for c in calls.values()) \
                else {}

        calls = wait_for("two ended stream records", ended)
        assert calls["twilio"]["call_id"] == CALL
        assert (calls["twilio"]["outcome"], calls["twilio"]["cause"]) == ("remote_stop", "caller")
        assert calls["audiosocket"]["outcome"] == "remote_hangup"
        assert all(c["answered_at"] and c["agent"] == "echo" for c in calls.values())
        code, twilio = get(server, "/calls?transport=twilio")
        assert code == 200 and [c["call_id"] for c in twilio["calls"]] == [CALL]


@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                    reason="espeak-ng and sox make the spoken question")
def test_a_conversation_call_records_each_turn(tmp_path: Path) -> None:
    """The real conversation agent on the packaged models: its CallLog's turns, timings
    and events end up in the record."""
    from tests.sip.test_conversation_call import say

    question = tmp_path / "question.wav"
    say(question, "What time do you open on Saturday?", lead_s=4.0)  # after the greeting
    db = tmp_path / "calls.db"
    with switchboard(tmp_path, env=env_for(db, 44200)) as server:
        out = subprocess.run([EXE, "call", f"sip:bot@127.0.0.1:{server.sip_port}",
                              "--play", str(question), "--tail", "8"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        call_id = json.loads(out.stdout)["call_id"]

        def ended() -> dict[str, Any] | None:
            code, call = get(server, f"/calls/{call_id}")
            return call if code == 200 and call["outcome"] else None

        call = wait_for("the conversation's record", ended)
    assert (call["agent"], call["outcome"], call["cause"]) == ("conversation", "remote_bye",
                                                               "caller")
    assert call["turn_count"] >= 1 and len(call["turns"]) == call["turn_count"]
    first = call["turns"][0]
    # Whisper tiny.en on 8 kHz espeak speech varies with the jitter buffer's timing
    # ("...on Saturday?" / "...on that domain?"): the record must hold what it heard.
    assert len(re.findall(r"[A-Za-z]{2,}", first["transcript"])) >= 3, first
    assert {"speech", "asr"} <= set(first["timings"]), first
    assert call["transcript"][0] == {"role": "caller", "text": first["transcript"]}
    kinds = [e["event"] for e in call["events"]]
    assert kinds[0] == "call_start" and "speech_end" in kinds and kinds[-1] == "call_end"
    assert {"event": "say", "phrase": "greeting"}.items() <= next(
        e for e in call["events"] if e["event"] == "say").items()
    shown = calls_command(db, call_id)
    assert shown.returncode == 0 and "turn 1 [" in shown.stdout, shown.stdout + shown.stderr
    assert first["transcript"] in shown.stdout
