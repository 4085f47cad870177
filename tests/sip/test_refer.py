"""Blind transfer (sip.refer) on an answered outbound call: REFER through the real
transaction layer and endpoint, NOTIFYs delivered as the far end would send them."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from media.clock import MonotonicClock
from media.pacer import Pacer
from pipeline.metrics import Metrics
from sip.call import SipCall
from sip.digest import AuthResult, Credentials, DigestServer
from sip.message import SipRequest, SipResponse
from sip.outbound import Dialer
from sip.refer import ReferError, SipFrag, SipFragError, refer_to, transfer_call
from sip.registration import DigestClient, TrunkAccount
from sip.server import SipServer, SipServerConfig
from tests.helpers import Server, free_port, switchboard
from tests.sip.test_call import RecordingHandler
from tests.sip.test_outbound import BOB, Rig, answer_sdp
from tests.sip.test_registration import sipp_result, start_sipp
from tests.sip.test_transaction import settle


async def answered(rig: Rig) -> tuple[SipCall, SipRequest]:
    _, task = rig.start()
    await settle()
    (invite,) = rig.requests("INVITE")
    rig.reply(invite, 200, body=answer_sdp())
    call = await asyncio.wait_for(task, 1)
    await settle()
    return call, invite


def transfer(rig: Rig, call: SipCall, target: str = "sip:carol@192.0.2.9", **kwargs: object
             ) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(transfer_call(
        call, target, transactions=rig.endpoint.transactions, clock=rig.clock,
        metrics=rig.metrics, **kwargs))  # type: ignore[arg-type]


_notify_cseq = [100]


def notify(rig: Rig, call: SipCall, frag: str | None, state: str = "active;expires=60",
           event: str = "refer") -> SipResponse:
    """Deliver a NOTIFY from the far end in the call's dialog; return our answer to it."""
    _notify_cseq[0] += 1
    dialog = call.dialog
    body = f"{frag}\r\n" if frag is not None else ""
    ctype = "Content-Type: message/sipfrag;version=2.0\r\n" if frag is not None else ""
    text = (
        f"NOTIFY {dialog.local_contact.uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKn{_notify_cseq[0]}\r\n"
        f"From: <sip:bob@192.0.2.7:5062>;tag={dialog.remote_tag}\r\n"
        f"To: {dialog.local_uri.with_tag(dialog.local_tag)}\r\n"
        f"Call-ID: {dialog.call_id}\r\nCSeq: {_notify_cseq[0]} NOTIFY\r\n"
        f"Event: {event}\r\nSubscription-State: {state}\r\n"
        "Contact: <sip:bob@192.0.2.7:5062>\r\n"
        f"{ctype}Content-Length: {len(body)}\r\n\r\n{body}"
    )
    before = len(rig.sender.sent)
    rig.endpoint.receive(SipRequest.parse(text.encode()), BOB)
    (answer,) = [m for m in rig.sender.messages()[before:] if isinstance(m, SipResponse)]
    return answer


def test_sipfrag_parse() -> None:
    assert SipFrag.parse(b"SIP/2.0 100 Trying\r\n") == SipFrag(100, "Trying")
    assert SipFrag.parse(b"SIP/2.0 200 OK\r\nContact: <sip:x@y>\r\n") == SipFrag(200, "OK")
    assert SipFrag.parse(b"SIP/2.0 503") == SipFrag(503, "")
    assert bytes(SipFrag(486, "Busy Here")) == b"SIP/2.0 486 Busy Here\r\n"
    assert SipFrag(180).final is False and SipFrag(603).final is True
    for bad in (b"", b"INVITE sip:a@b SIP/2.0", b"SIP/2.0 99 x", b"SIP/1.0 200 OK"):
        with pytest.raises(SipFragError):
            SipFrag.parse(bad)


async def test_refer_to_targets() -> None:
    rig = Rig()
    call, _ = await answered(rig)
    assert str(refer_to("sip:carol@192.0.2.9;transport=tcp", call.dialog).uri) == \
        "sip:carol@192.0.2.9;transport=tcp"
    assert str(refer_to("+15550001", call.dialog).uri) == "sip:+15550001@192.0.2.7:5062"
    assert str(refer_to("tel:+1-555-0001", call.dialog).uri) == "sip:+15550001@192.0.2.7:5062"
    for bad in ("carol", "mailto:carol@x", ""):
        with pytest.raises(ReferError):
            refer_to(bad, call.dialog)
    await rig.close()


async def test_blind_transfer_succeeds_then_our_leg_hangs_up() -> None:
    rig = Rig()
    call, invite = await answered(rig)
    task = transfer(rig, call)
    await settle()
    (refer,) = rig.requests("REFER")
    assert refer.cseq.seq == invite.cseq.seq + 1 and refer.to_addr.tag == "bob1"
    assert refer.header("Refer-To") == "<sip:carol@192.0.2.9>"
    assert refer.header("Referred-By") == f"<{invite.from_addr.uri}>"
    assert refer.contacts and str(refer.uri) == "sip:bob@192.0.2.7:5062"
    rig.reply(refer, 202)
    await settle()
    assert notify(rig, call, "SIP/2.0 100 Trying").status == 200
    assert notify(rig, call, "SIP/2.0 180 Ringing").status == 200
    await settle()
    assert not task.done() and call.active and rig.requests("BYE") == []
    assert notify(rig, call, "SIP/2.0 200 OK", "terminated;reason=noresource").status == 200
    await settle()
    (bye,) = rig.requests("BYE")
    rig.reply(bye, 200)
    await asyncio.wait_for(task, 1)
    assert call.reason == "transfer" and rig.handler.events[-1] == "end:transfer"
    assert rig.sample("switchboard_sip_transfers_total", outcome="ok") == 1
    assert rig.sample("switchboard_calls_total", transport="sip", outcome="transfer") == 1
    await rig.close()


async def test_notify_before_the_202_still_counts() -> None:
    rig = Rig()
    call, _ = await answered(rig)
    task = transfer(rig, call)
    await settle()
    (refer,) = rig.requests("REFER")
    notify(rig, call, "SIP/2.0 100 Trying")
    notify(rig, call, "SIP/2.0 200 OK", "terminated")
    rig.reply(refer, 202)
    await settle()
    (bye,) = rig.requests("BYE")
    rig.reply(bye, 200)
    await asyncio.wait_for(task, 1)
    assert call.reason == "transfer"
    await rig.close()


async def test_target_failure_raises_with_its_status_and_keeps_the_call() -> None:
    rig = Rig()
    call, _ = await answered(rig)
    task = transfer(rig, call)
    await settle()
    rig.reply(rig.requests("REFER")[0], 202)
    notify(rig, call, "SIP/2.0 100 Trying")
    notify(rig, call, "SIP/2.0 486 Busy Here", "terminated")
    with pytest.raises(ReferError) as info:
        await asyncio.wait_for(task, 1)
    assert info.value.status == 486 and call.active and rig.requests("BYE") == []
    assert rig.sample("switchboard_sip_transfers_total", outcome="failed") == 1
    # The call can try again.
    retry = transfer(rig, call, "+15550001")
    await settle()
    assert rig.requests("REFER")[-1].header("Refer-To") == "<sip:+15550001@192.0.2.7:5062>"
    retry.cancel()
    await rig.close()


async def test_refused_refer_raises_with_the_status() -> None:
    rig = Rig()
    call, _ = await answered(rig)
    task = transfer(rig, call)
    await settle()
    rig.reply(rig.requests("REFER")[0], 603)
    with pytest.raises(ReferError) as info:
        await asyncio.wait_for(task, 1)
    assert info.value.status == 603 and info.value.outcome == "refused" and call.active
    await rig.close()


async def test_refer_challenge_is_answered() -> None:
    rig = Rig()
    call, _ = await answered(rig)
    server = DigestServer("pbx", b"0123456789abcdef0123")
    task = transfer(rig, call, auth=DigestClient("alice", "pw"))
    await settle()
    first = rig.requests("REFER")[0]
    rig.reply(first, 401, extra=[("WWW-Authenticate", c) for c in server.challenges(0.0)])
    await settle()
    second = rig.requests("REFER")[-1]
    assert second.cseq.seq == first.cseq.seq + 1 == call.dialog.local_cseq
    creds = Credentials.parse(second.header("Authorization") or "")
    assert server.verify(creds, method="REFER", password="pw", now=0.0) is AuthResult.OK
    rig.reply(second, 202)
    notify(rig, call, "SIP/2.0 200 OK", "terminated")
    await settle()
    rig.reply(rig.requests("BYE")[0], 200)
    await asyncio.wait_for(task, 1)
    assert rig.requests("BYE")[0].cseq.seq == second.cseq.seq + 1
    await rig.close()


async def test_no_final_notify_times_out() -> None:
    rig = Rig()
    call, _ = await answered(rig)
    task = transfer(rig, call, timeout=10.0)
    await settle()
    rig.reply(rig.requests("REFER")[0], 202)
    notify(rig, call, "SIP/2.0 100 Trying")
    await rig.advance(10.0)
    with pytest.raises(ReferError, match=r"no final NOTIFY.*last 100") as info:
        await asyncio.wait_for(task, 1)
    assert info.value.outcome == "timeout" and call.active
    await rig.close()


async def test_subscription_ending_without_final_status_fails() -> None:
    rig = Rig()
    call, _ = await answered(rig)
    task = transfer(rig, call)
    await settle()
    rig.reply(rig.requests("REFER")[0], 202)
    assert notify(rig, call, "not a status line", "terminated;reason=timeout").status == 200
    with pytest.raises(ReferError, match="without a final status"):
        await asyncio.wait_for(task, 1)
    await rig.close()


async def test_stray_notifies_are_refused() -> None:
    rig = Rig()
    call, _ = await answered(rig)
    assert notify(rig, call, "SIP/2.0 200 OK").status == 481  # no transfer running
    task = transfer(rig, call)
    await settle()
    assert notify(rig, call, "SIP/2.0 200 OK", event="presence").status == 489
    assert not task.done()
    with pytest.raises(ReferError, match="already in progress"):
        await transfer(rig, call)
    task.cancel()
    hangup = asyncio.get_running_loop().create_task(call.hangup())
    await settle()
    rig.reply(rig.requests("BYE")[0], 200)
    await asyncio.wait_for(hangup, 1)
    with pytest.raises(ReferError, match="already ended"):
        await transfer(rig, call)
    await rig.close()


# -- against a real SIPp far end -------------------------------------------------------------


@pytest.mark.slow
async def test_outbound_407_then_refer_against_real_sipp(tmp_path: Path) -> None:
    port, rtp = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    sipp = start_sipp("uas_auth_refer.xml", port, tmp_path, "-rtp_echo", "-mp", str(rtp),
                      "-mi", "127.0.0.1")
    clock, metrics = MonotonicClock(), Metrics(CollectorRegistry())
    pacer = Pacer(clock)
    pacer.start()
    server = SipServer(SipServerConfig(listen="127.0.0.1", port=0, transports=("udp",),
                                       rtp_port_min=41000, rtp_port_max=41998),
                       handler_factory=Rig.refuse, clock=clock,  # type: ignore[arg-type]
                       metrics=metrics, pacer=pacer)
    await server.start()
    trunk = TrunkAccount.parse(f"127.0.0.1:{port}", username="alice", password="s3cret")
    dialer = Dialer(server.endpoint, trunk=trunk, local_address=lambda t: (
        server.transport.local_host(t.host), server.port))
    handler = RecordingHandler()
    try:
        await asyncio.sleep(0.3)  # let SIPp bind
        attempt = dialer.prepare("+15551234", handler)
        call = await asyncio.wait_for(dialer.run(attempt), 10)
        assert attempt.state == "answered" and call.media.params.codec == "PCMU"
        assert call.media.params.remote_port == rtp
        await asyncio.sleep(0.5)  # some media both ways
        await asyncio.wait_for(transfer_call(call, "sip:carol@127.0.0.1",
                                             transactions=server.endpoint.transactions,
                                             clock=clock, metrics=metrics), 15)
        assert call.reason == "transfer" and handler.events[-1] == "end:transfer"
        assert call.media.stats.packets_in > 10  # type: ignore[attr-defined]
    finally:
        await dialer.close()
        await server.stop()
        await pacer.stop()
    assert sipp_result(sipp, tmp_path) == 0
    assert metrics.registry.get_sample_value("switchboard_sip_transfers_total",
                                             {"outcome": "ok"}) == 1


def http(server: Server, method: str, path: str, body: object | None = None
         ) -> tuple[int, dict[str, object]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", data=data,
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=40) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_switchboard_serve_calls_out_through_the_trunk_and_transfers(tmp_path: Path) -> None:
    port, rtp = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    sipp = start_sipp("uas_auth_refer.xml", port, tmp_path, "-rtp_echo", "-mp", str(rtp),
                      "-mi", "127.0.0.1")
    env = {"SWITCHBOARD_SIP__TRUNK__REGISTRAR": f"127.0.0.1:{port}",
           "SWITCHBOARD_SIP__TRUNK__USERNAME": "alice",
           "SWITCHBOARD_SIP__TRUNK__PASSWORD": "s3cret",
           "SWITCHBOARD_SIP__TRUNK__REGISTRATION": "false"}
    try:
        with switchboard(tmp_path, "--agent", "echo", env=env) as server:
            code, placed = http(server, "POST", "/calls", {"to": "+15551234"})
            assert code == 202 and placed["state"] == "calling", placed
            call_id = placed["call_id"]
            status: dict[str, object] = {}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                _, status = http(server, "GET", f"/calls/{call_id}")
                if status["state"] not in ("calling", "ringing"):
                    break
                time.sleep(0.1)
            assert status["state"] == "answered" and status["status"] == 200, server.log()
            assert 0 < status["setup_time_s"] < 5  # type: ignore[operator]
            time.sleep(0.5)  # the echo agent and SIPp's RTP echo talk for a moment
            code, done = http(server, "POST", f"/calls/{call_id}/transfer",
                              {"target": "sip:carol@127.0.0.1"})
            assert code == 200 and done["transferred_to"] == "sip:carol@127.0.0.1", done
            _, status = http(server, "GET", f"/calls/{call_id}")
            assert status["state"] == "ended" and status["end_reason"] == "transfer"
            code, again = http(server, "POST", f"/calls/{call_id}/transfer", {"target": "1"})
            assert code == 409 and "already ended" in str(again["error"])
            metrics = server.metrics()
            assert 'switchboard_sip_outbound_calls_total{outcome="answered"} 1.0' in metrics
            assert 'switchboard_sip_transfers_total{outcome="ok"} 1.0' in metrics
            assert 'switchboard_calls_total{outcome="transfer",transport="sip"} 1.0' in metrics
    finally:
        code = sipp_result(sipp, tmp_path)
    assert code == 0
