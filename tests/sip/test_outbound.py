"""Outbound INVITE (sip.outbound) through a real SipEndpoint and transaction layer on a
ManualClock; the far end is played by the test from the requests it sees."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from media.clock import ManualClock
from pipeline.leg import CallInfo
from pipeline.metrics import Metrics
from sip.digest import AuthResult, Credentials, DigestServer
from sip.endpoint import CallRefused, EndpointSettings, SipEndpoint
from sip.message import SipRequest, SipResponse, make_response
from sip.outbound import (
    CallCancelled,
    CallLimitReached,
    CallRejected,
    CallTimedOut,
    DestinationError,
    Dialer,
    DialError,
    OutboundCall,
    parse_destination,
)
from sip.registration import TrunkAccount
from sip.rtp_session import MediaParams
from sip.sdp import SessionDescription
from sip.transport import Source, Target
from tests.helpers import switchboard
from tests.sip.test_call import RecordingHandler
from tests.sip.test_transaction import FakeSender, settle

BOB = Source("udp", ("192.0.2.7", 5062), ("192.0.2.10", 5060))
TRUNK_SRC = Source("udp", ("192.0.2.50", 5060), ("192.0.2.10", 5060))
SECRET = b"0123456789abcdef0123"


def answer_sdp(pt: str = "8", name: str = "PCMA", port: int = 7000) -> bytes:
    return (
        "v=0\r\no=bob 5 5 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP {pt} 101\r\na=rtpmap:{pt} {name}/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    ).encode()


class Media:
    """The media a call gets: records updates and close."""

    def __init__(self, params: MediaParams, port: int) -> None:
        self.on_frame = self.on_dtmf = self.on_mark = self.on_failure = None  # type: ignore[var-annotated]
        self.params = params
        self.local_port = port
        self.updates: list[MediaParams] = []
        self.closed = 0

    def update(self, params: MediaParams) -> None:
        self.params = params
        self.updates.append(params)

    def send_audio(self, pcm: bytes, rate: int, mark: str | None = None) -> None: ...

    def clear_audio(self) -> None: ...

    def queued_seconds(self) -> float:
        return 0.0

    def send_dtmf(self, digits: str) -> None: ...

    def close(self) -> None:
        self.closed += 1


class Rig:
    def __init__(self, trunk: TrunkAccount | None = None, max_calls: int = 10) -> None:
        self.clock = ManualClock()
        self.metrics = Metrics(CollectorRegistry())
        self.sender = FakeSender()
        self.media: list[Media] = []
        self.endpoint = SipEndpoint(
            EndpointSettings(max_calls=max_calls, trusted_networks=("192.0.2.0/24",)),
            transport=self.sender, handler_factory=self.refuse, media_factory=self.open_media,
            clock=self.clock, metrics=self.metrics)
        self.dialer = Dialer(self.endpoint, local_address=lambda t: ("192.0.2.10", 5060),
                             trunk=trunk, ring_timeout=30.0)
        self.handler = RecordingHandler()

    def refuse(self, info: CallInfo) -> RecordingHandler:
        raise CallRefused(403, "Forbidden")

    async def open_media(self, params: MediaParams) -> Media:
        media = Media(params, 40000 + 2 * len(self.media))
        self.media.append(media)
        return media

    def requests(self, method: str) -> list[SipRequest]:
        out = []
        for m in self.sender.messages():
            if isinstance(m, SipRequest) and m.method == method and (
                    not out or bytes(out[-1]) != bytes(m)):
                out.append(m)
        return out

    def sent_count(self, method: str) -> int:
        return sum(1 for m in self.sender.messages()
                   if isinstance(m, SipRequest) and m.method == method)

    def reply(self, request: SipRequest, status: int, *, body: bytes = b"",
              extra: list[tuple[str, object]] | None = None, source: Source = BOB,
              tag: str = "bob1") -> SipResponse:
        items = list(extra or [])
        if 200 <= status < 300 and request.method == "INVITE":
            items.append(("Contact", "<sip:bob@192.0.2.7:5062>"))
        response = make_response(request, status, to_tag=tag, extra=items, body=body,
                                 content_type="application/sdp" if body else None)
        self.endpoint.receive(response, source)
        return response

    def start(self, to: str = "sip:bob@192.0.2.7:5062", **kwargs: object
              ) -> tuple[OutboundCall, asyncio.Task[object]]:
        attempt = self.dialer.prepare(to, self.handler, **kwargs)  # type: ignore[arg-type]
        return attempt, asyncio.get_running_loop().create_task(self.dialer.run(attempt))

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    async def advance(self, seconds: float, step: float = 0.25) -> None:
        end = self.clock.now() + seconds
        while self.clock.now() < end - 1e-9:
            self.clock.set(min(end, self.clock.now() + step))
            await settle()

    async def close(self) -> None:
        await self.dialer.close()
        task = asyncio.create_task(self.endpoint.shutdown(timeout=5))
        for _ in range(60):
            await settle()
            if task.done():
                break
            self.clock.advance(1.0)
        await asyncio.wait_for(task, 1)


async def test_answered_call_acks_builds_the_dialog_and_starts_the_handler() -> None:
    rig = Rig()
    attempt, task = rig.start(codecs=("PCMU", "PCMA"))
    await settle()
    (invite,) = rig.requests("INVITE")
    assert rig.sender.sent[0][1] == Target("udp", "192.0.2.7", 5062)
    assert str(invite.uri) == "sip:bob@192.0.2.7:5062" and invite.to_addr.tag is None
    assert invite.from_addr.tag == attempt.local_tag and invite.call_id == attempt.call_id
    assert str(invite.contacts[0].uri) == "sip:switchboard@192.0.2.10:5060"
    offer = SessionDescription.parse(invite.body)
    assert offer.media[0].port == 40000 and offer.media[0].formats == ("0", "8", "101")
    assert rig.media[0].params.direction == "inactive"  # no media timeout while it rings
    rig.clock.advance(0.2)
    rig.reply(invite, 100)
    rig.reply(invite, 180)
    await settle()
    assert attempt.state == "ringing" and not task.done()
    rig.clock.advance(0.3)
    rig.reply(invite, 200, body=answer_sdp(), extra=[
        ("Record-Route", "<sip:proxy2.example;lr>"), ("Record-Route", "<sip:proxy1.example;lr>")])
    call = await asyncio.wait_for(task, 1)
    assert attempt.setup_time == pytest.approx(0.5)
    (ack,) = rig.requests("ACK")
    assert ack.cseq.seq == invite.cseq.seq and ack.cseq.method == "ACK"
    assert str(ack.uri) == "sip:bob@192.0.2.7:5062" and ack.to_addr.tag == "bob1"
    assert [str(r.uri) for r in ack.routes] == ["sip:proxy1.example;lr", "sip:proxy2.example;lr"]
    assert rig.sender.sent[-1][1] == Target("udp", "proxy1.example", 5060)
    assert rig.media[0].params.codec == "PCMA" and rig.media[0].params.remote_port == 7000
    assert rig.media[0].params.remote_host == "192.0.2.7"
    assert rig.media[0].params.dtmf_payload_type == 101
    assert rig.endpoint.calls[call.dialog.id] is call
    await settle()
    assert rig.handler.events == ["start"] and call.info.params["direction"] == "outbound"
    assert rig.sample("switchboard_sip_outbound_calls_total", outcome="answered") == 1
    assert rig.sample("switchboard_calls_active", transport="sip") == 1
    # A retransmitted 200 gets the same ACK again; nothing else happens.
    rig.reply(invite, 200, body=answer_sdp())
    await settle()
    acks = [m for m in rig.sender.messages() if isinstance(m, SipRequest) and m.method == "ACK"]
    assert len(acks) == 2 and bytes(acks[0]) == bytes(acks[1])
    # Our hangup: BYE along the route set, then the call is gone from the table.
    hangup = asyncio.create_task(call.hangup())
    await settle()
    (bye,) = rig.requests("BYE")
    assert bye.cseq.seq == invite.cseq.seq + 1 and bye.to_addr.tag == "bob1"
    rig.reply(bye, 200)
    await asyncio.wait_for(hangup, 1)
    assert call.dialog.id not in rig.endpoint.calls
    assert rig.handler.events[-1] == "end:hangup"
    await rig.close()


async def test_remote_bye_reaches_the_outbound_call() -> None:
    rig = Rig()
    _, task = rig.start()
    await settle()
    (invite,) = rig.requests("INVITE")
    rig.reply(invite, 200, body=answer_sdp("0", "PCMU"))
    call = await asyncio.wait_for(task, 1)
    await settle()
    bye = (
        f"BYE sip:switchboard@192.0.2.10:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKbye1\r\n"
        f"From: <sip:bob@192.0.2.7:5062>;tag=bob1\r\n"
        f"To: {invite.headers.get('From')}\r\nCall-ID: {invite.call_id}\r\n"
        "CSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n"
    )
    rig.endpoint.receive(SipRequest.parse(bye.encode()), BOB)
    await call.wait_closed()
    assert call.reason == "remote_bye" and rig.handler.events[-1] == "end:remote_bye"
    last = rig.sender.last()
    assert isinstance(last, SipResponse) and last.status == 200 and last.cseq.method == "BYE"
    await rig.close()


async def test_trunk_call_answers_407_with_digest_and_keeps_call_id() -> None:
    trunk = TrunkAccount.parse("192.0.2.50", username="alice", password="s3cret",
                               domain="trunk.example")
    server = DigestServer("trunk.example", SECRET, algorithms=("SHA-256", "MD5"))
    rig = Rig(trunk)
    attempt, task = rig.start("+15551234")
    await settle()
    (first,) = rig.requests("INVITE")
    assert str(first.uri) == "sip:+15551234@trunk.example"
    assert str(first.from_addr.uri) == "sip:alice@trunk.example"
    assert rig.sender.sent[0][1] == Target("udp", "192.0.2.50", 5060)
    rig.reply(first, 407, source=TRUNK_SRC, extra=[("Proxy-Authenticate", c)
                                                     for c in server.challenges(0.0)])
    await settle()
    acks = rig.requests("ACK")
    assert len(acks) == 1 and acks[0].cseq.seq == first.cseq.seq  # the 407 is ACKed
    second = rig.requests("INVITE")[-1]
    assert second.cseq.seq == first.cseq.seq + 1 and second.call_id == first.call_id
    assert second.from_addr.tag == first.from_addr.tag
    assert second.top_via.branch != first.top_via.branch
    creds = Credentials.parse(second.header("Proxy-Authorization") or "")
    assert creds.algorithm == "SHA-256"
    assert server.verify(creds, method="INVITE", password="s3cret", now=0.1,
                         uri=str(second.uri)) is AuthResult.OK
    rig.reply(second, 200, body=answer_sdp(), source=TRUNK_SRC)
    call = await asyncio.wait_for(task, 1)
    # No Record-Route: in-dialog requests still go through the trunk.
    assert [str(r.uri) for r in call.dialog.route_set] == ["sip:192.0.2.50:5060;lr"]
    assert call.dialog.next_hop() == Target("udp", "192.0.2.50", 5060)
    assert attempt.state == "answered"
    await rig.close()


async def test_refused_credentials_fail_with_the_status() -> None:
    trunk = TrunkAccount.parse("192.0.2.50", username="alice", password="wrong")
    server = DigestServer("trunk.example", SECRET)
    rig = Rig(trunk)
    _, task = rig.start("5551234")
    await settle()
    for _ in range(2):
        rig.reply(rig.requests("INVITE")[-1], 401, source=TRUNK_SRC, extra=[
            ("WWW-Authenticate", c) for c in server.challenges(0.0)])
        await settle()
    with pytest.raises(CallRejected) as info:
        await asyncio.wait_for(task, 1)
    assert info.value.status == 401 and info.value.outcome == "auth_failed"
    assert len(rig.requests("INVITE")) == 2
    assert rig.sample("switchboard_sip_outbound_calls_total", outcome="auth_failed") == 1
    await rig.close()


@pytest.mark.parametrize(("status", "outcome"), [(486, "busy"), (404, "rejected"),
                                                 (480, "no_answer"), (603, "rejected")])
async def test_failure_response_raises_with_status(status: int, outcome: str) -> None:
    rig = Rig()
    attempt, task = rig.start()
    await settle()
    (invite,) = rig.requests("INVITE")
    rig.reply(invite, 183)
    rig.reply(invite, status)
    with pytest.raises(CallRejected) as info:
        await asyncio.wait_for(task, 1)
    assert info.value.status == status and info.value.outcome == outcome
    assert attempt.state == "failed" and attempt.status == status
    assert rig.media[0].closed == 1 and rig.handler.events == []
    assert rig.requests("ACK")[-1].cseq.seq == invite.cseq.seq  # the transaction ACKed it
    assert rig.sample("switchboard_sip_outbound_calls_total", outcome=outcome) == 1
    await rig.close()


async def test_cancel_after_ringing_sends_cancel_and_raises() -> None:
    rig = Rig()
    attempt, task = rig.start()
    await settle()
    (invite,) = rig.requests("INVITE")
    rig.reply(invite, 180)
    await settle()
    attempt.cancel()
    await settle()
    (cancel,) = rig.requests("CANCEL")
    assert cancel.top_via.branch == invite.top_via.branch and cancel.cseq.seq == invite.cseq.seq
    assert str(cancel.uri) == str(invite.uri) and cancel.to_addr.tag is None
    with pytest.raises(CallCancelled) as info:
        await asyncio.wait_for(task, 1)
    assert info.value.status == 487 and attempt.state == "cancelled"
    rig.reply(cancel, 200)
    rig.reply(invite, 487)
    await settle()
    assert rig.requests("ACK")[-1].cseq.seq == invite.cseq.seq
    assert rig.media[0].closed == 1 and not rig.requests("BYE")
    await rig.close()


async def test_cancel_waits_for_a_provisional_response() -> None:
    rig = Rig()
    attempt, task = rig.start()
    await settle()
    (invite,) = rig.requests("INVITE")
    attempt.cancel()
    with pytest.raises(CallCancelled):
        await asyncio.wait_for(task, 1)
    assert rig.requests("CANCEL") == []  # RFC 3261 9.1: not before a provisional
    rig.reply(invite, 100)
    await settle()
    (cancel,) = rig.requests("CANCEL")
    rig.reply(cancel, 200)
    rig.reply(invite, 487)
    await rig.close()


async def test_ring_timeout_cancels_and_a_racing_2xx_is_acked_and_hung_up() -> None:
    rig = Rig()
    _, task = rig.start(ring_timeout=5.0)
    await settle()
    (invite,) = rig.requests("INVITE")
    rig.reply(invite, 180)
    await rig.advance(5.0)
    with pytest.raises(CallTimedOut) as info:
        await asyncio.wait_for(task, 1)
    assert info.value.status == 408
    assert len(rig.requests("CANCEL")) == 1
    rig.reply(invite, 200, body=answer_sdp())  # answered just as we gave up
    await settle()
    (ack,) = rig.requests("ACK")
    (bye,) = rig.requests("BYE")
    assert ack.to_addr.tag == "bob1" and bye.to_addr.tag == "bob1"
    assert rig.sample("switchboard_sip_outbound_calls_total", outcome="no_answer") == 1
    await rig.close()


async def test_cancelled_task_still_sends_cancel() -> None:
    rig = Rig()
    _, task = rig.start()
    await settle()
    (invite,) = rig.requests("INVITE")
    rig.reply(invite, 180)
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle()
    (cancel,) = rig.requests("CANCEL")
    assert rig.media[0].closed == 1
    rig.reply(cancel, 200)
    rig.reply(invite, 487)
    await rig.close()


async def test_no_response_at_all_times_out_with_408() -> None:
    rig = Rig()
    _, task = rig.start(ring_timeout=60.0)
    await settle()
    await rig.advance(32.0)  # Timer B (64*T1)
    with pytest.raises(CallTimedOut) as info:
        await asyncio.wait_for(task, 1)
    assert info.value.status == 408
    assert rig.sent_count("INVITE") > 5  # Timer A retransmitted it
    await rig.close()


async def test_unusable_sdp_answer_is_acked_then_hung_up() -> None:
    rig = Rig()
    _, task = rig.start(codecs=("PCMU",))
    await settle()
    (invite,) = rig.requests("INVITE")
    rig.reply(invite, 200, body=answer_sdp("18", "G729"))
    with pytest.raises(DialError) as info:
        await asyncio.wait_for(task, 1)
    assert info.value.status == 488
    assert len(rig.requests("ACK")) == 1 and len(rig.requests("BYE")) == 1
    assert rig.media[0].closed == 1 and rig.endpoint.calls == {}
    await rig.close()


async def test_a_second_fork_answering_gets_ack_and_bye() -> None:
    rig = Rig()
    _, task = rig.start()
    await settle()
    (invite,) = rig.requests("INVITE")
    rig.reply(invite, 200, body=answer_sdp(), tag="fork1")
    call = await asyncio.wait_for(task, 1)
    rig.reply(invite, 200, body=answer_sdp(), tag="fork2")
    await settle()
    assert [a.to_addr.tag for a in rig.requests("ACK")] == ["fork1", "fork2"]
    assert [b.to_addr.tag for b in rig.requests("BYE")] == ["fork2"]
    assert call.active
    await rig.close()


async def test_a_started_attempt_says_calling_before_its_task_runs() -> None:
    rig = Rig()
    attempt = rig.dialer.prepare("sip:bob@192.0.2.7:5062", rig.handler)
    assert attempt.state == "new"
    task = rig.dialer.start(attempt)
    assert attempt.state == "calling" and attempt.started_at is None  # nothing sent yet
    await settle()
    rig.reply(rig.requests("INVITE")[0], 200, body=answer_sdp())
    await asyncio.wait_for(task, 1)
    assert attempt.state == "answered"
    await rig.close()


async def test_call_limit_refuses_before_any_port_is_taken() -> None:
    rig = Rig(max_calls=1)
    _, task = rig.start()
    await settle()
    rig.reply(rig.requests("INVITE")[0], 200, body=answer_sdp())
    await asyncio.wait_for(task, 1)
    with pytest.raises(CallLimitReached) as info:
        await rig.dialer.dial("sip:carol@192.0.2.8", RecordingHandler())
    assert info.value.status == 503 and len(rig.media) == 1
    await rig.close()


def test_parse_destination() -> None:
    trunk = TrunkAccount.parse("pbx.example:5080", username="u", domain="voip.example")
    d = parse_destination("sip:bob@192.0.2.7:5062;transport=tcp", trunk)
    assert d.target == Target("tcp", "192.0.2.7", 5062) and not d.via_trunk
    assert parse_destination("sip:bob@[::1]", None).target == Target("udp", "::1", 5060)
    for number in ("+15551234", "tel:+1-555-1234", "5551234", "*97"):
        d = parse_destination(number, trunk)
        assert d.via_trunk and d.target == Target("udp", "pbx.example", 5080)
        assert d.uri.host == "voip.example"
    assert parse_destination("sip:9999@voip.example", trunk).via_trunk
    assert parse_destination("sip:9999@pbx.example:5080", trunk).via_trunk
    bad = {
        "+15551234": "no sip.trunk",
        "hello world": "not a SIP URI",
        "sips:bob@example.com": "TLS",
        "sip:bob@example.com;transport=sctp": "transport 'sctp'",
        "mailto:bob@example.com": "not a SIP URI",
        "sip:bob@example.com?Subject=x": "headers",
    }
    for text, message in bad.items():
        with pytest.raises(DestinationError, match=message):
            parse_destination(text, None if text == "+15551234" else trunk)
    with pytest.raises(DestinationError, match="unknown codecs"):
        Dialer(None, local_address=lambda t: ("h", 1)).prepare(  # type: ignore[arg-type]
            "sip:a@b", RecordingHandler(), codecs=("G729",))


async def test_ringing_longer_than_timer_b_is_still_answered() -> None:
    rig = Rig()
    _, task = rig.start(ring_timeout=60.0)
    await settle()
    (invite,) = rig.requests("INVITE")
    rig.reply(invite, 180)
    await rig.advance(45.0)  # Timer B (32 s) must not end a ringing INVITE
    assert not task.done()
    rig.reply(invite, 200, body=answer_sdp())
    call = await asyncio.wait_for(task, 1)
    assert call.active
    await rig.close()


async def test_unanswered_cancel_ends_the_invite_transaction() -> None:
    rig = Rig()
    attempt, task = rig.start(ring_timeout=60.0)
    await settle()
    rig.reply(rig.requests("INVITE")[0], 180)
    await settle()
    attempt.cancel()
    with pytest.raises(CallCancelled):
        await asyncio.wait_for(task, 1)
    assert len(rig.requests("CANCEL")) == 1
    await rig.advance(33.0)  # no 487, no 200 to the CANCEL: given up after 64*T1
    assert rig.endpoint.transactions.client_transactions == 0
    await rig.close()


# -- through a real `switchboard serve` --------------------------------------------------------


@pytest.mark.slow
def test_post_calls_between_two_real_servers_and_input_errors(tmp_path: Path) -> None:
    from tests.sip.test_refer import http

    other = {"SWITCHBOARD_SIP__RTP_PORT_MIN": "32000", "SWITCHBOARD_SIP__RTP_PORT_MAX": "32998"}
    with switchboard(tmp_path, "--agent", "echo", env={"SWITCHBOARD_SIP__MAX_CALLS": "1"}) as a, \
            switchboard(tmp_path, "--agent", "echo", env=other) as b:
        code, placed = http(a, "POST", "/calls", {"to": f"sip:echo@127.0.0.1:{b.sip_port}",
                                                  "agent": "echo"})
        assert code == 202, placed
        status: dict[str, object] = {}
        for _ in range(50):
            _, status = http(a, "GET", f"/calls/{placed['call_id']}")
            if status["state"] == "answered":
                break
            time.sleep(0.1)
        assert status["state"] == "answered" and status["status"] == 200
        time.sleep(1.0)  # both echo agents send and receive RTP
        received = [line for line in b.metrics().splitlines()
                    if line.startswith("switchboard_rtp_packets_received_total ")]
        assert received and float(received[0].split()[1]) > 10
        # One call is the limit: the next is refused before anything is sent.
        code, busy = http(a, "POST", "/calls", {"to": f"sip:echo@127.0.0.1:{b.sip_port}"})
        assert code == 503 and "call limit" in str(busy["error"])
        bad = [({"to": 5}, "'to' must be a non-empty string"),
               ({"to": "+15551234"}, "no sip.trunk configured"),
               ({"to": "sip:a@b", "from": "x"}, "unknown fields ['from']"),
               ({"to": "sip:a@b", "agent": "llama"}, "unknown agent 'llama'"),
               ({"to": "sip:a@b", "agent": "conversation"}, "not loaded in this process"),
               ({}, "'to' must be a non-empty string")]
        for body, message in bad:
            code, error = http(a, "POST", "/calls", body)
            assert code == 400 and message in str(error["error"]), (body, error)
        assert http(a, "GET", "/calls/unknown")[0] == 404
        assert http(a, "POST", "/calls/unknown/transfer", {"target": "sip:x@y"})[0] == 404
