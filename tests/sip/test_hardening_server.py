"""Security behaviour of a real `switchboard serve`, from the outside: a flooding source
is blocked while a real call from another one completes, and the block expires; nothing
is relayed or originated to targets that are not allowed; a second RTP sender cannot
join a call; configured secrets never reach the log."""

from __future__ import annotations

import base64
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from media.rtp import RtpPacket
from tests.helpers import Server, free_port, switchboard
from tests.sip.hostile import SipPeer, sdp, sdp_port, udp_exchange
from tests.sip.test_hostile import tone_pcap
from tests.sip.test_refer import http

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp (sip-tester) not installed"),
]


def counter(server: Server, name: str, **labels: str) -> float:
    from tests.sip.test_sipp import counter as sipp_counter
    return sipp_counter(server, name, **labels)


def wait_for(what: str, check, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def udp_listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", free_port(socket.SOCK_DGRAM)))
    sock.settimeout(0.05)
    return sock


def drain(sock: socket.socket, seconds: float = 0.5) -> list[bytes]:
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(70000))
        except TimeoutError:
            continue
    return got


# -- flood ------------------------------------------------------------------------------------


def flood_invite(port: int, n: int) -> bytes:
    return (f"INVITE sip:echo@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.2:{port};branch=z9hG4bKflood{n};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:100@127.0.0.2>;tag=f{n}\r\n"
            f"To: <sip:echo@127.0.0.1>\r\nContact: <sip:100@127.0.0.2:{port}>\r\n"
            f"Call-ID: flood-{n}\r\nCSeq: 1 INVITE\r\nRequire: flood-test\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def test_a_flooding_source_is_blocked_while_a_real_call_completes(tmp_path: Path) -> None:
    from tests.sip.test_sipp import run_sipp

    flood_env = "SWITCHBOARD_SIP__FLOOD__"
    env = {flood_env + "EXEMPT_NETWORKS": "[]", flood_env + "EXEMPT_TRUSTED": "false",
           # so 127.0.0.1 is limited too, and so is 127.0.0.2 (trusted: no digest needed)
           flood_env + "INVITE_BURST": "5", flood_env + "INVITE_PER_SECOND": "1",
           flood_env + "BLOCK_SECONDS": "4"}
    with switchboard(tmp_path, "--agent", "echo", env=env) as server:
        flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flood.bind(("127.0.0.2", 0))
        flood.settimeout(0.05)
        try:
            port = flood.getsockname()[1]
            for n in range(200):  # a SIPVicious-style burst, ~2000 INVITEs a second
                flood.sendto(flood_invite(port, n), ("127.0.0.1", server.sip_port))
                if n % 20 == 19:
                    time.sleep(0.01)
            answers = drain(flood, 1.0)
            refused = {re.search(rb"Call-ID: (\S+)", a).group(1)  # type: ignore[union-attr]
                       for a in answers if a.startswith(b"SIP/2.0 420 ")}
            assert len(refused) == 5  # the burst (420 each, and retransmitted), then nothing
            assert counter(server, "sip_flood_blocks_total", method="INVITE") == 1
            assert counter(server, "sip_flood_dropped_total", method="INVITE", reason="rate") == 1
            # The rest dropped unanswered (the kernel may drop some of a burst itself).
            assert 50 <= counter(server, "sip_flood_dropped_total", method="INVITE",
                                 reason="blocked") <= 194
            assert counter(server, "sip_sources_blocked") == 1
            blocked = udp_exchange(server.sip_port, flood_invite(port, 999), local="127.0.0.2",
                                   timeout=1.0)
            assert blocked.statuses == [] and not blocked.probe_ok  # not even OPTIONS

            # Meanwhile a real call from 127.0.0.1 is answered and completes.
            tone_pcap(tmp_path / "speech.pcap", 2.0)
            run = run_sipp("uac_pcmu", "udp", server, tmp_path, "-d", "2500")
            assert run.returncode == 0, run.explain()

            # The block ends: the source is answered again.
            wait_for("the block to expire", lambda: udp_exchange(
                server.sip_port, b"\r\n\r\n", local="127.0.0.2", timeout=0.5).probe_ok,
                timeout=15)
            assert counter(server, "sip_sources_blocked") == 0
        finally:
            flood.close()
        log = server.log()
        assert log.count("SIP flood from 127.0.0.2") == 1  # once per block, not per packet
        assert re.search(r"SIP source 127\.0\.0\.2 unblocked \(\d+ messages dropped", log), log


# -- toll fraud -------------------------------------------------------------------------------


def test_nothing_is_relayed_or_originated_to_targets_not_allowed(tmp_path: Path) -> None:
    trunk, elsewhere = udp_listener(), udp_listener()
    env = {"SWITCHBOARD_SIP__TRUNK__REGISTRAR": f"127.0.0.1:{trunk.getsockname()[1]}",
           "SWITCHBOARD_SIP__TRUNK__USERNAME": "acct", "SWITCHBOARD_SIP__TRUNK__PASSWORD": "pw",
           "SWITCHBOARD_SIP__TRUNK__REGISTRATION": "false",
           "SWITCHBOARD_SIP__TARGETS__DENIED": "['+1900*']"}
    route = f"Route: <sip:127.0.0.1:{elsewhere.getsockname()[1]};lr>\r\n"
    try:
        with switchboard(tmp_path, "--agent", "echo", env=env) as server:
            # An INVITE for a premium number at another domain, with a Route onwards: we
            # are not a proxy, so it is answered here (by the echo agent) and goes nowhere.
            caller = SipPeer(server.sip_port)
            try:
                caller.send("INVITE", 1, uri="sip:+19005550100@evil.example.com",
                            extra=route, body=sdp(free_port(socket.SOCK_DGRAM)))
                assert caller.final(1).status == 200
                caller.send("ACK", 1)
                # A REFER asking us to call a premium number, in the call and outside it.
                caller.send("REFER", 2, extra="Refer-To: <sip:+19005550100@evil.example.com>\r\n")
                assert caller.final(2).status == 403
                caller.send("BYE", 3)
                assert caller.final(3).status == 200
            finally:
                caller.close()
            stranger = SipPeer(server.sip_port)
            try:
                stranger.send("REFER", 1, extra=f"{route}Refer-To: <sip:+1900555@127.0.0.1>\r\n")
                assert stranger.final().status == 403
            finally:
                stranger.close()
            # POST /calls: not to hosts or numbers the policy refuses.
            for target in ("sip:bob@192.0.2.66", "+19005550100", "sip:+19005550100@127.0.0.1"):
                code, body = http(server, "POST", "/calls", {"to": target})
                assert code == 403 and "sip.targets" in str(body["error"]), (target, body)
            assert drain(elsewhere) == [] and drain(trunk) == []
            assert counter(server, "sip_targets_refused_total", kind="refer") == 2
            assert counter(server, "sip_targets_refused_total", kind="dial") == 3
            assert counter(server, "sip_outbound_calls_total") == 0
            # An allowed number goes to the trunk, and only there.
            code, placed = http(server, "POST", "/calls", {"to": "+15550100"})
            assert code == 202, placed
            first = wait_for("the INVITE at the trunk", lambda: drain(trunk, 0.2))
            assert first[0].startswith(b"INVITE sip:+15550100@127.0.0.1")
            assert drain(elsewhere) == []
    finally:
        trunk.close()
        elsewhere.close()


# -- RTP latching -----------------------------------------------------------------------------


def test_a_second_rtp_sender_cannot_join_a_call(tmp_path: Path) -> None:
    env = {"SWITCHBOARD_SIP__RTP_PORT_MIN": "41400", "SWITCHBOARD_SIP__RTP_PORT_MAX": "41500"}
    media, second = udp_listener(), udp_listener()
    caller = None
    try:
        with switchboard(tmp_path, "--agent", "echo", env=env) as server:
            caller = SipPeer(server.sip_port)
            caller.send("INVITE", 1, body=sdp(media.getsockname()[1]))
            ok = caller.final(1)
            assert ok.status == 200
            rtp_port = sdp_port(ok.raw.split(b"\r\n\r\n", 1)[1])
            caller.send("ACK", 1)

            def packets(seq: int, n: int, ssrc: int = 0xCA11) -> list[bytes]:
                return [bytes(RtpPacket(0, (seq + i) & 0xFFFF, 160 * (seq + i), ssrc,
                                        b"\xff" * 160)) for i in range(n)]

            for data in packets(0, 10):
                media.sendto(data, ("127.0.0.1", rtp_port))
                time.sleep(0.02)
            assert wait_for("echoed RTP", lambda: drain(media, 0.2))
            # A stranger continues the caller's stream (same SSRC, next numbers): dropped.
            before = counter(server, "rtp_packets_invalid_total", reason="source")
            for data in packets(10, 25):
                second.sendto(data, ("127.0.0.1", rtp_port))
            wait_for("the stranger's packets counted", lambda: counter(
                server, "rtp_packets_invalid_total", reason="source") - before >= 25)
            assert drain(second, 0.5) == []  # and nothing is sent to it
            assert drain(media, 0.3)  # the caller still gets the call's audio
            # A re-INVITE moves the media to the second address: from now on it is the peer.
            caller.send("INVITE", 2, body=sdp(second.getsockname()[1], version=2))
            assert caller.final(2).status == 200
            caller.send("ACK", 2)
            for data in packets(35, 10):
                second.sendto(data, ("127.0.0.1", rtp_port))
                time.sleep(0.02)
            assert wait_for("RTP at the new address", lambda: drain(second, 0.2))
            caller.send("BYE", 3)
            assert caller.final(3).status == 200
    finally:
        for sock in (media, second):
            sock.close()
        if caller is not None:
            caller.close()


# -- secrets ----------------------------------------------------------------------------------


SECRETS = {
    "SWITCHBOARD_SIP__CALLERS": "{alice: Caller-Pw-7f3a91}",
    "SWITCHBOARD_SIP__AUTH_SECRET": "Nonce-Key-5c2e8d4b9a",
    "SWITCHBOARD_SIP__TRUNK__PASSWORD": "Trunk-Pw-e41b07",
    "SWITCHBOARD_STREAMS__TWILIO__AUTH_TOKEN": "Twilio-Token-0d9c55",
    "SWITCHBOARD_STREAMS__FREESWITCH__TOKEN": "Fs-Token-a8c3f2",
    "SWITCHBOARD_LLM__API_KEY": "Llm-Key-b7e6d1",
    "SWITCHBOARD_HTTP__API_TOKEN": "Api-Token-3e9f07",
    "SWITCHBOARD_CONSOLE__TOKEN": "Console-Token-6a2d48",
}
SECRET_VALUES = ["Caller-Pw-7f3a91", "Nonce-Key-5c2e8d4b9a", "Trunk-Pw-e41b07",
                 "Twilio-Token-0d9c55", "Fs-Token-a8c3f2", "Llm-Key-b7e6d1", "Api-Token-3e9f07",
                 "Console-Token-6a2d48"]


def post_form(server: Server, path: str, fields: dict[str, str], headers: dict[str, str]) -> int:
    data = "&".join(f"{k}={v}" for k, v in fields.items()).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", data=data,
                                     headers={"Content-Type": "application/x-www-form-urlencoded",
                                              **headers}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def bearer_get(server: Server, path: str, token: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def challenge_register(trunk: socket.socket) -> bytes:
    """Answer the first REGISTER with a 401; return the retried one (with credentials)."""
    from sip.message import SipRequest, make_response

    def receive() -> tuple[bytes, tuple[str, int]]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                return trunk.recvfrom(70000)  # type: ignore[no-any-return]
            except TimeoutError:
                continue
        raise AssertionError("no REGISTER at the trunk")

    data, source = receive()
    challenge = make_response(SipRequest.parse(data), 401, extra=[(
        "WWW-Authenticate", 'Digest realm="trunk", nonce="abc123", algorithm=MD5, qop="auth"')])
    trunk.sendto(bytes(challenge), source)
    for _ in range(10):  # retransmissions of the first REGISTER may come before
        retried, _ = receive()
        if b"Authorization: Digest" in retried:
            assert b'username="acct"' in retried
            return retried
    raise AssertionError("the REGISTER was not retried with credentials")


def test_secrets_from_config_never_reach_the_log(tmp_path: Path) -> None:
    from tests.sip.test_sipp import auth_args, run_sipp

    trunk = udp_listener()
    env = {**SECRETS, "SWITCHBOARD_LOG__LEVEL": "DEBUG",
           "SWITCHBOARD_SIP__TRUSTED_NETWORKS": "[192.0.2.0/24]",  # 127.0.0.1 must authenticate
           "SWITCHBOARD_SIP__AUTH_ALGORITHMS": "[MD5, SHA-256]",
           "SWITCHBOARD_SIP__TRUNK__REGISTRAR": f"127.0.0.1:{trunk.getsockname()[1]}",
           "SWITCHBOARD_SIP__TRUNK__USERNAME": "acct"}
    try:
        with switchboard(tmp_path, "--agent", "echo", env=env) as server:
            tone_pcap(tmp_path / "speech.pcap", 1.0)
            good = run_sipp("uac_auth", "udp", server, tmp_path, "-d", "500",
                            *auth_args(server, "alice", "Caller-Pw-7f3a91"))
            assert good.returncode == 0, good.explain()
            bad = run_sipp("uac_auth_403", "udp", server, tmp_path,
                           *auth_args(server, "alice", "wrong-password"))
            assert bad.returncode == 0, bad.explain()
            # The trunk's REGISTER is challenged and answered with the trunk password.
            assert challenge_register(trunk).startswith(b"REGISTER ")
            # The stream doors' tokens: refused without them.
            assert post_form(server, "/twilio/voice", {"CallSid": "CA1"},
                             {"X-Twilio-Signature": base64.b64encode(b"forged").decode()}) == 403
            request = urllib.request.Request(
                f"http://127.0.0.1:{server.http_port}/freeswitch?token=guess")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 403
            # The calls API: refused with a wrong token, served with the right one.
            assert bearer_get(server, "/calls", "Api-Token-wrong") == 403
            assert bearer_get(server, "/calls", "Api-Token-3e9f07") == 200
            metrics = server.metrics()
            log = server.log()
        assert "DEBUG" in log and "challenged" in log  # the log really is at DEBUG
        for value in SECRET_VALUES:
            assert value not in log, value
            assert value not in metrics, value
        assert "response=" not in log  # nor the digest credentials
    finally:
        trunk.close()


def test_config_errors_do_not_echo_secrets(tmp_path: Path) -> None:
    import subprocess

    from tests.helpers import EXE

    env = {"SWITCHBOARD_SIP__AUTH_SECRET": "short-Sekrit", "PATH": "/usr/bin:/bin",
           "SWITCHBOARD_SIP__CALLERS": "{alice: ''}"}
    proc = subprocess.run([EXE, "serve"], env=env, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode != 0 and "sip.auth_secret" in proc.stderr + proc.stdout
    assert "short-Sekrit" not in proc.stderr + proc.stdout


# -- digest nonces ----------------------------------------------------------------------------


def test_replayed_digest_credentials_are_refused(tmp_path: Path) -> None:
    from sip.digest import authorize, parse_challenges

    env = {"SWITCHBOARD_SIP__TRUSTED_NETWORKS": "[192.0.2.0/24]",
           "SWITCHBOARD_SIP__CALLERS": "{alice: Alice-Pw-1}"}
    with switchboard(tmp_path, "--agent", "echo", env=env) as server:
        uri = "sip:echo@127.0.0.1"
        first = SipPeer(server.sip_port)
        replay = SipPeer(server.sip_port)
        try:
            first.send("INVITE", 1, uri=uri, body=sdp(free_port(socket.SOCK_DGRAM)))
            challenged = first.final(1)
            assert challenged.status == 401
            lines = [v.decode() for v in re.findall(rb"^WWW-Authenticate: (.*)\r$",
                                                    challenged.raw, re.M)]
            challenge = parse_challenges(lines)[0]
            assert challenge.qop == ("auth",) and not challenge.stale
            credentials = authorize(challenge, username="alice", password="Alice-Pw-1",
                                    method="INVITE", uri=uri, cnonce="c0ffee", nc=1)
            first.send("ACK", 1)
            first.to_tag = ""
            auth = f"Authorization: {credentials}\r\n"
            first.send("INVITE", 2, uri=uri, extra=auth, body=sdp(free_port(socket.SOCK_DGRAM)))
            assert first.final(2).status == 200
            first.send("ACK", 2)
            # The same Authorization (same nonce, same nc) on another call: a replay.
            replay.send("INVITE", 1, uri=uri, extra=auth, body=sdp(free_port(socket.SOCK_DGRAM)))
            assert replay.final(1).status == 403
            replay.send("ACK", 1)
            first.send("BYE", 3)
            assert first.final(3).status == 200
        finally:
            first.close()
            replay.close()
        assert "digest replay for user 'alice'" in server.log()
        assert counter(server, "calls_rejected_total", transport="sip", reason="forbidden") == 1
