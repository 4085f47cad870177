"""The UA core driven through an in-memory transport: real parsing and Via stamping,
sends recorded instead of put on a socket, media faked, clock manual."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from media.clock import ManualClock
from pipeline.leg import CallInfo
from pipeline.metrics import Metrics
from sip.digest import authorize, parse_challenges
from sip.endpoint import CallRefused, EndpointSettings, SipEndpoint, parse_dtmf_relay
from sip.message import SipMessage, SipRequest, SipResponse, parse_message
from sip.ports import PortsExhaustedError
from sip.rtp_session import MediaParams
from sip.sdp import SessionDescription
from sip.transport import ErrorHandler, SipTransport, Source, Target
from tests.sip.test_call import FakeMedia, RecordingHandler
from tests.sip.test_transaction import run_clock, settle

CALLER = Source("udp", ("127.0.0.1", 5062), ("127.0.0.1", 5060))
STRANGER = Source("udp", ("198.51.100.9", 5062), ("127.0.0.1", 5060))

PCMU_OFFER = (
    "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 6000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\na=ptime:20\r\na={direction}\r\n"
)
G729_OFFER = (
    "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 6000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n"
)


class MemoryTransport(SipTransport):
    """SipTransport with the sockets taken out: deliver() in, `sent` out."""

    def __init__(self, on_message, clock, metrics) -> None:  # type: ignore[no-untyped-def]
        super().__init__(on_message, clock=clock, metrics=metrics)
        self.listen = ("127.0.0.1", 5060)
        self.sent: list[tuple[bytes, Target]] = []

    def send(self, data: bytes, target: Target, on_error: ErrorHandler | None = None) -> None:
        self.sent.append((data, target))

    def messages(self) -> list[SipMessage]:
        return [parse_message(d) for d, _ in self.sent]

    def responses(self, method: str | None = None) -> list[SipResponse]:
        return [m for m in self.messages() if isinstance(m, SipResponse)
                and (method is None or m.cseq.method == method)]

    def requests(self, method: str) -> list[SipRequest]:
        return [m for m in self.messages() if isinstance(m, SipRequest) and m.method == method]

    def statuses(self, method: str | None = None) -> list[int]:
        return [r.status for r in self.responses(method)]


class Rig:
    def __init__(self, **settings: object) -> None:
        self.clock = ManualClock()
        self.metrics = Metrics(CollectorRegistry())
        self.media: list[FakeMedia] = []
        self.handlers: list[RecordingHandler] = []
        self.infos: list[CallInfo] = []
        self.refuse: CallRefused | None = None
        self.media_error: Exception | None = None
        self.wire = MemoryTransport(lambda m, s: self.endpoint.receive(m, s), self.clock,
                                    self.metrics)
        self.endpoint = SipEndpoint(EndpointSettings(**settings),  # type: ignore[arg-type]
                                    transport=self.wire, handler_factory=self.make_handler,
                                    media_factory=self.open_media, clock=self.clock,
                                    metrics=self.metrics)

    def make_handler(self, info: CallInfo) -> RecordingHandler:
        self.infos.append(info)
        if self.refuse is not None:
            raise self.refuse
        handler = RecordingHandler()
        self.handlers.append(handler)
        return handler

    async def open_media(self, params: MediaParams) -> FakeMedia:
        if self.media_error is not None:
            raise self.media_error
        media = FakeMedia(params, 30000 + 2 * len(self.media))
        self.media.append(media)
        return media

    def send(self, text: str, source: Source = CALLER) -> None:
        self.wire.deliver(text.replace("\n", "\r\n").encode(), source)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    async def close(self) -> None:
        """Shut down; unanswered BYEs end by Timer F on the manual clock."""
        task = asyncio.create_task(self.endpoint.shutdown(timeout=5))
        for _ in range(40):
            await settle()
            if task.done():
                break
            self.clock.advance(1.0)
        await asyncio.wait_for(task, 1)


def msg(method: str, *, cseq: int = 1, branch: str = "z9hG4bKb1", to_tag: str = "",
        call_id: str = "c1", body: str = "", ctype: str = "application/sdp",
        extra: str = "", uri: str = "sip:echo@127.0.0.1:5060") -> str:
    to = f";tag={to_tag}" if to_tag else ""
    head = (
        f"{method} {uri} SIP/2.0\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5062;branch={branch};rport\n"
        "From: \"sipp\" <sip:alice@127.0.0.1:5062>;tag=a1\n"
        f"To: <sip:echo@127.0.0.1:5060>{to}\n"
        f"Call-ID: {call_id}\n"
        f"CSeq: {cseq} {'INVITE' if method == 'ACK' and cseq == 0 else method}\n"
        "Contact: <sip:alice@127.0.0.1:5062>\n"
        "Max-Forwards: 70\n"
        f"{extra}"
    )
    body = body.replace("\r\n", "\n")
    if body:
        head += f"Content-Type: {ctype}\n"
    return head + f"Content-Length: {len(body.replace(chr(10), chr(13) + chr(10)))}\n\n{body}"


def invite(direction: str = "sendrecv", **kw: object) -> str:
    kw.setdefault("body", PCMU_OFFER.format(direction=direction))
    return msg("INVITE", **kw)  # type: ignore[arg-type]


async def answered(rig: Rig, **kw: object) -> str:
    """INVITE, 200, ACK; returns our tag."""
    rig.send(invite(**kw))
    await settle()
    ok = rig.wire.responses("INVITE")[-1]
    assert ok.status == 200
    tag = ok.to_addr.tag
    assert tag
    rig.send(msg("ACK", to_tag=tag, branch="z9hG4bKack", call_id=str(kw.get("call_id", "c1"))))
    await settle()
    return tag


@pytest.fixture
async def rig():  # type: ignore[no-untyped-def]
    r = Rig()
    yield r
    await r.close()


# -- out of dialog ------------------------------------------------------------------------


async def test_malformed_request_gets_400_with_reason(rig: Rig) -> None:
    rig.send(msg("OPTIONS").replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE"))
    (bad,) = rig.wire.responses()
    assert bad.status == 400 and "CSeq method" in bad.reason
    rig.send("this is not SIP at all\n\n")  # cannot be answered: dropped, nothing raised
    assert len(rig.wire.sent) == 1


async def test_options_200_with_capabilities(rig: Rig) -> None:
    rig.send(msg("OPTIONS"))
    (ok,) = rig.wire.responses()
    assert ok.status == 200
    assert ok.header("Allow") == "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, NOTIFY"
    assert ok.header("Accept") == "application/sdp" and "Supported" in ok.headers
    assert rig.sample("switchboard_sip_requests_total", method="OPTIONS") == 1


async def test_options_503_when_full_or_stopping() -> None:
    rig = Rig(max_calls=1)
    await answered(rig)
    rig.send(msg("OPTIONS", branch="z9hG4bKo1", call_id="o1"))
    assert rig.wire.responses("OPTIONS")[-1].status == 503
    assert rig.wire.responses("OPTIONS")[-1].header("Retry-After") == "5"
    await rig.close()
    rig.send(msg("OPTIONS", branch="z9hG4bKo2", call_id="o2"))
    assert rig.wire.statuses("OPTIONS") == [503, 503]


async def test_unknown_method_405_and_counted_as_other(rig: Rig) -> None:
    rig.send(msg("FROBNICATE"))
    (resp,) = rig.wire.responses()
    assert resp.status == 405 and resp.header("Allow", ).startswith("INVITE")  # type: ignore[union-attr]
    assert rig.sample("switchboard_sip_requests_total", method="other") == 1


async def test_requests_for_unknown_dialogs_get_481(rig: Rig) -> None:
    rig.send(msg("BYE", to_tag="nope", cseq=2))
    rig.send(msg("INFO", branch="z9hG4bKb2", cseq=3))
    rig.send(msg("CANCEL", branch="z9hG4bKnone"))
    assert rig.wire.statuses() == [481, 481, 481]


async def test_untrusted_source_is_forbidden(rig: Rig) -> None:
    rig.send(invite(), STRANGER)
    assert rig.wire.statuses() == [100, 403]
    assert rig.sample("switchboard_calls_rejected_total", transport="sip", reason="forbidden") == 1


async def test_options_is_open_to_untrusted_sources(rig: Rig) -> None:
    rig.send(msg("OPTIONS"), STRANGER)  # a load balancer outside trusted_networks
    rig.send(msg("INFO", branch="z9hG4bKi1"), STRANGER)
    assert rig.wire.statuses() == [200, 403]


# -- digest-authenticated callers -----------------------------------------------------------

PASSWORD = "s3cret-Pa55"
AUTH_URI = "sip:echo@127.0.0.1:5060"


def auth_rig(**settings: object) -> Rig:
    return Rig(callers={"alice": PASSWORD, "bob": "other"}, **settings)


def authorization(challenge: SipResponse, *, user: str = "alice", password: str = PASSWORD,
                  algorithm: str = "SHA-256", nc: int = 1, uri: str = AUTH_URI,
                  nonce: str | None = None) -> str:
    """The Authorization line a client sends to answer `challenge` (a 401)."""
    offered = parse_challenges(challenge.headers.get_lines("WWW-Authenticate"))
    chosen = next(c for c in offered if c.algorithm == algorithm)
    if nonce is not None:
        chosen = replace(chosen, nonce=nonce)
    credentials = authorize(chosen, username=user, password=password, method="INVITE",
                            uri=uri, cnonce="0a4f113b", nc=nc)
    return f"Authorization: {credentials}\n"


async def challenge(rig: Rig, call_id: str = "c1") -> SipResponse:
    """An INVITE without credentials from outside: 401, which the caller ACKs."""
    rig.send(invite(call_id=call_id, branch=f"z9hG4bK{call_id}-1"), STRANGER)
    await settle()
    resp = rig.wire.responses("INVITE")[-1]
    assert resp.status == 401, resp.status
    rig.send(msg("ACK", to_tag=resp.to_addr.tag or "", branch=f"z9hG4bK{call_id}-1",
                 call_id=call_id), STRANGER)
    return resp


async def retry(rig: Rig, auth: str, call_id: str = "c1", cseq: int = 2,
                **kw: object) -> SipResponse:
    """The INVITE again, with credentials; its final response."""
    rig.send(invite(call_id=call_id, cseq=cseq, branch=f"z9hG4bK{call_id}-{cseq}",
                    extra=auth, **kw), STRANGER)
    await settle()
    return rig.wire.responses("INVITE")[-1]


def rejected(rig: Rig, reason: str) -> float:
    return rig.sample("switchboard_calls_rejected_total", transport="sip", reason=reason) or 0


async def test_untrusted_invite_is_challenged_when_callers_are_configured() -> None:
    rig = auth_rig()
    resp = await challenge(rig)
    lines = resp.headers.get_lines("WWW-Authenticate")
    offered = parse_challenges(lines)
    assert [c.algorithm for c in offered] == ["SHA-256", "MD5"]  # strongest first
    assert {c.realm for c in offered} == {"switchboard"} and len({c.nonce for c in offered}) == 1
    assert all(c.qop == ("auth",) and not c.stale for c in offered)
    assert 'qop="auth"' in lines[0]
    assert rig.wire.statuses() == [100, 401]  # the ACK was absorbed by the transaction
    assert rig.media == [] and rig.infos == []
    assert rejected(rig, "unauthorized") == 1 and rejected(rig, "forbidden") == 0
    await rig.close()


async def test_challenge_order_and_realm_are_configurable() -> None:
    rig = auth_rig(auth_algorithms=("MD5", "SHA-256"), auth_realm="voice.example")
    offered = parse_challenges((await challenge(rig)).headers.get_lines("WWW-Authenticate"))
    assert [(c.algorithm, c.realm) for c in offered] == [
        ("MD5", "voice.example"), ("SHA-256", "voice.example")]
    await rig.close()


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
async def test_good_credentials_are_answered(algorithm: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    rig = auth_rig()
    ok = await retry(rig, authorization(await challenge(rig), algorithm=algorithm))
    assert ok.status == 200 and ok.cseq.seq == 2
    assert len(rig.endpoint.calls) == 1 and len(rig.media) == 1
    assert rig.infos[0].params["auth_user"] == "alice"
    assert rejected(rig, "unauthorized") == 1 and rejected(rig, "forbidden") == 0
    assert PASSWORD not in caplog.text and "response=" not in caplog.text
    await rig.close()


async def test_wrong_password_and_unknown_user_are_forbidden(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    rig = auth_rig()
    wrong = await retry(rig, authorization(await challenge(rig), password="guess"))
    assert wrong.status == 403
    unknown = await retry(rig, authorization(await challenge(rig, "c2"), user="mallory",
                                             password=PASSWORD), "c2")
    assert unknown.status == 403
    # Another caller's password does not open alice's account.
    swapped = await retry(rig, authorization(await challenge(rig, "c3"), password="other"), "c3")
    assert swapped.status == 403
    assert rig.media == [] and rig.infos == [] and rig.endpoint.calls == {}
    assert rejected(rig, "forbidden") == 3 and rejected(rig, "unauthorized") == 3
    assert "bad-response for user 'mallory'" in caplog.text
    assert PASSWORD not in caplog.text and "response=" not in caplog.text
    await rig.close()


async def test_replayed_nonce_count_is_refused() -> None:
    rig = auth_rig()
    resp = await challenge(rig)
    auth = authorization(resp)
    assert (await retry(rig, auth)).status == 200
    # The same credentials on a new call: nc did not go up, so a replay.
    assert (await retry(rig, auth, call_id="c2")).status == 403
    # The nonce may be reused with a higher nc (RFC 7616 3.4).
    assert (await retry(rig, authorization(resp, nc=2), call_id="c3")).status == 200
    assert rejected(rig, "forbidden") == 1 and len(rig.endpoint.calls) == 2
    await rig.close()


async def test_stale_nonce_is_challenged_again_with_stale_true() -> None:
    rig = auth_rig(nonce_ttl=60.0)
    resp = await challenge(rig)
    rig.clock.advance(61.0)
    again = await retry(rig, authorization(resp))
    assert again.status == 401
    offered = parse_challenges(again.headers.get_lines("WWW-Authenticate"))
    first = parse_challenges(resp.headers.get_lines("WWW-Authenticate"))[0]
    assert all(c.stale for c in offered) and offered[0].nonce != first.nonce
    assert rejected(rig, "unauthorized") == 2 and rejected(rig, "forbidden") == 0
    rig.send(msg("ACK", to_tag=again.to_addr.tag or "", branch="z9hG4bKc1-2"), STRANGER)
    ok = await retry(rig, authorization(again), cseq=3)
    assert ok.status == 200
    await rig.close()


async def test_stale_nonce_with_a_wrong_password_is_forbidden() -> None:
    rig = auth_rig(nonce_ttl=60.0)
    resp = await challenge(rig)
    rig.clock.advance(61.0)
    assert (await retry(rig, authorization(resp, password="guess"))).status == 403
    await rig.close()


async def test_credentials_must_name_the_request_uri_and_our_realm() -> None:
    rig = auth_rig()
    resp = await challenge(rig)
    other_target = authorization(resp, uri="sip:admin@127.0.0.1:5060")
    assert (await retry(rig, other_target)).status == 403
    assert (await retry(rig, "Authorization: Digest username=alice\n", "c2")).status == 403
    # Credentials for another realm answer someone else's challenge: we challenge.
    elsewhere = authorization(resp).replace('realm="switchboard"', 'realm="proxy.example"')
    assert (await retry(rig, elsewhere, "c3")).status == 401
    # A nonce we never issued (another process's secret, or forged), rightly answered.
    nonce = parse_challenges(resp.headers.get_lines("WWW-Authenticate"))[0].nonce
    forged = authorization(resp, nonce="A" * len(nonce))
    assert (await retry(rig, forged, "c4")).status == 403
    assert rig.media == []
    await rig.close()


async def test_trusted_source_needs_no_credentials() -> None:
    rig = auth_rig()
    rig.send(invite())  # from 127.0.0.1, inside the default trusted_networks
    await settle()
    assert rig.wire.statuses() == [100, 200]
    assert "auth_user" not in rig.infos[0].params
    await rig.close()


async def test_only_invite_is_challenged() -> None:
    rig = auth_rig(trusted_networks=("192.0.2.0/24",))
    rig.send(msg("INFO"), STRANGER)
    rig.send(msg("OPTIONS", branch="z9hG4bKo1"), CALLER)
    assert rig.wire.statuses() == [403, 200]
    await rig.close()


def test_settings_repr_hides_the_passwords_and_secret() -> None:
    settings = EndpointSettings(callers={"alice": PASSWORD}, auth_secret=b"k" * 32)
    assert PASSWORD not in repr(settings) and "kkkk" not in repr(settings)


# -- INVITE ---------------------------------------------------------------------------------


async def test_call_answered_acked_and_ended_by_bye(rig: Rig) -> None:
    rig.send(invite())
    await settle()
    assert rig.wire.statuses() == [100, 200]
    ok = rig.wire.responses()[-1]
    sdp = SessionDescription.parse(ok.body)
    assert sdp.media[0].formats == ("0", "101") and sdp.media[0].port == 30000
    assert sdp.direction_of(sdp.media[0]) == "sendrecv"
    assert str(ok.contacts[0].uri) == "sip:switchboard@127.0.0.1:5060"
    assert "BYE" in (ok.header("Allow") or "")
    (media,) = rig.media
    assert (media.params.remote_host, media.params.remote_port) == ("127.0.0.1", 6000)
    assert media.params.codec == "PCMU" and media.params.dtmf_payload_type == 101
    assert rig.sample("switchboard_calls_active", transport="sip") == 1
    # No ACK yet: the 200 is retransmitted over UDP.
    await run_clock(rig.clock, 1.6, rig.wire)
    assert rig.wire.statuses() == [100, 200, 200, 200]
    tag = ok.to_addr.tag
    rig.send(msg("ACK", to_tag=tag or "", branch="z9hG4bKack"))
    await settle()
    assert rig.handlers[0].events == ["start"]
    await run_clock(rig.clock, 10.0, rig.wire)
    assert rig.wire.statuses() == [100, 200, 200, 200]  # the ACK stopped them
    rig.send(msg("BYE", to_tag=tag or "", cseq=2, branch="z9hG4bKbye"))
    await settle()
    assert rig.wire.statuses("BYE") == [200]
    assert rig.handlers[0].events == ["start", "end:remote_bye"]
    assert media.closed == 1 and rig.endpoint.calls == {}
    assert rig.sample("switchboard_calls_total", transport="sip", outcome="remote_bye") == 1
    assert rig.sample("switchboard_calls_active", transport="sip") == 0
    assert rig.wire.requests("BYE") == []


async def test_no_common_codec_488(rig: Rig) -> None:
    rig.send(msg("INVITE", body=G729_OFFER))
    await settle()
    assert rig.wire.statuses() == [100, 488]
    assert rig.wire.responses()[-1].header("Warning", ).startswith("304 ")  # type: ignore[union-attr]
    assert rig.media == [] and rig.handlers == []  # refused before any port or handler
    assert rig.sample("switchboard_calls_rejected_total", transport="sip", reason="codec") == 1
    tag = rig.wire.responses()[-1].to_addr.tag
    rig.send(msg("ACK", to_tag=tag or "", cseq=1))  # same branch: absorbed by the transaction
    assert rig.sample("switchboard_sip_requests_total", method="ACK") is None


async def test_non_sdp_body_415(rig: Rig) -> None:
    rig.send(msg("INVITE", body="hello", ctype="text/plain"))
    await settle()
    assert rig.wire.statuses() == [100, 415]
    assert rig.wire.responses()[-1].header("Accept") == "application/sdp"


async def test_503_with_retry_after_at_the_call_limit() -> None:
    rig = Rig(max_calls=1)
    await answered(rig)
    rig.send(invite(call_id="c2", branch="z9hG4bKc2"))
    await settle()
    busy = rig.wire.responses("INVITE")[-1]
    assert busy.status == 503 and busy.header("Retry-After") == "5"
    assert rig.sample("switchboard_calls_rejected_total", transport="sip", reason="busy") == 1
    await rig.close()


async def test_486_when_configured() -> None:
    rig = Rig(max_calls=1, limit_status=486)
    await answered(rig)
    rig.send(invite(call_id="c2", branch="z9hG4bKc2"))
    await settle()
    assert rig.wire.responses("INVITE")[-1].status == 486
    await rig.close()


async def test_refused_by_handler_factory_and_no_ports(rig: Rig) -> None:
    rig.refuse = CallRefused(503, "agent not available", "unavailable", retry_after=30)
    rig.send(invite())
    await settle()
    assert rig.wire.responses()[-1].status == 503
    assert rig.wire.responses()[-1].header("Retry-After") == "30"
    rig.refuse = None
    rig.media_error = PortsExhaustedError(20000, 20010, 5)
    rig.send(invite(call_id="c2", branch="z9hG4bKc2"))
    await settle()
    assert rig.wire.responses()[-1].status == 503
    assert rig.sample("switchboard_calls_rejected_total", transport="sip", reason="no_media") == 1


async def test_cancel_while_ringing() -> None:
    rig = Rig(ring_seconds=2.0)
    rig.send(invite())
    await settle()
    assert rig.wire.statuses() == [100, 180]
    tag = rig.wire.responses()[-1].to_addr.tag
    rig.send(msg("CANCEL", branch="z9hG4bKb1"))  # the INVITE's branch
    await settle()
    assert rig.wire.statuses("CANCEL") == [200]
    final = rig.wire.responses("INVITE")[-1]
    assert final.status == 487 and final.to_addr.tag == tag
    assert rig.media[0].closed == 1 and rig.endpoint.calls == {}
    await run_clock(rig.clock, 3.0, rig.wire)
    assert 200 not in rig.wire.statuses("INVITE")
    assert rig.sample("switchboard_calls_rejected_total", transport="sip", reason="cancelled") == 1
    await rig.close()


async def test_cancel_after_answer_changes_nothing(rig: Rig) -> None:
    await answered(rig)
    rig.send(msg("CANCEL", branch="z9hG4bKb1"))
    assert rig.wire.statuses("CANCEL") == [200]
    assert len(rig.endpoint.calls) == 1


async def test_require_unknown_extension_420(rig: Rig) -> None:
    rig.send(invite(extra="Require: 100rel\n"))
    await settle()
    resp = rig.wire.responses()[-1]
    assert resp.status == 420 and resp.header("Unsupported") == "100rel"


# -- in dialog ------------------------------------------------------------------------------


async def test_info_dtmf_reaches_the_handler(rig: Rig) -> None:
    tag = await answered(rig)
    rig.send(msg("INFO", to_tag=tag, cseq=2, branch="z9hG4bKi1",
                 body="Signal=5\nDuration=160\n", ctype="application/dtmf-relay"))
    rig.send(msg("INFO", to_tag=tag, cseq=3, branch="z9hG4bKi2", body="hi",
                 ctype="text/plain"))
    assert rig.wire.statuses("INFO") == [200, 415]
    assert rig.handlers[0].events == ["start", "dtmf:5"]


def test_parse_dtmf_relay() -> None:
    assert parse_dtmf_relay(b"Signal=#\r\nDuration=250\r\n", "application/dtmf-relay") == "#"
    assert parse_dtmf_relay(b"Signal= 11\r\n", "application/dtmf-relay") == "#"
    assert parse_dtmf_relay(b"7", "application/dtmf") == "7"
    assert parse_dtmf_relay(b"Signal=Z", "application/dtmf-relay") is None
    assert parse_dtmf_relay(b"Duration=100", "application/dtmf-relay") is None


async def test_hold_and_resume_by_reinvite(rig: Rig) -> None:
    tag = await answered(rig)
    media = rig.media[0]
    rig.send(invite("sendonly", to_tag=tag, cseq=2, branch="z9hG4bKr1"))
    await settle()
    ok = rig.wire.responses("INVITE")[-1]
    assert ok.status == 200 and b"a=recvonly" in ok.body
    first_version = SessionDescription.parse(rig.wire.responses("INVITE")[1].body).origin.version
    assert SessionDescription.parse(ok.body).origin.version == first_version + 1
    assert media.params.direction == "recvonly"
    rig.send(msg("ACK", to_tag=tag, cseq=2, branch="z9hG4bKack2"))
    rig.send(invite("sendrecv", to_tag=tag, cseq=3, branch="z9hG4bKr2"))
    await settle()
    ok = rig.wire.responses("INVITE")[-1]
    assert b"a=sendrecv" in ok.body and media.params.direction == "sendrecv"
    rig.send(msg("ACK", to_tag=tag, cseq=3, branch="z9hG4bKack3"))
    before = len(rig.wire.sent)
    await run_clock(rig.clock, 5.0, rig.wire)
    assert len(rig.wire.sent) == before  # both re-INVITE 2xx were ACKed
    assert rig.handlers[0].events == ["start"]


async def test_reinvite_without_common_codec_leaves_the_call_alone(rig: Rig) -> None:
    tag = await answered(rig)
    rig.send(msg("INVITE", to_tag=tag, cseq=2, branch="z9hG4bKr1", body=G729_OFFER))
    await settle()
    assert rig.wire.responses("INVITE")[-1].status == 488
    assert rig.media[0].updates == [] and len(rig.endpoint.calls) == 1


async def test_reinvite_glare_491_and_old_cseq_500(rig: Rig) -> None:
    rig.send(invite())
    await settle()
    tag = rig.wire.responses()[-1].to_addr.tag or ""
    # Our 200 has not been ACKed yet: a new offer now is glare.
    rig.send(invite("sendonly", to_tag=tag, cseq=2, branch="z9hG4bKr1"))
    await settle()
    assert rig.wire.responses("INVITE")[-1].status == 491
    rig.send(msg("ACK", to_tag=tag, branch="z9hG4bKack"))
    rig.send(msg("INFO", to_tag=tag, cseq=2, branch="z9hG4bKi1"))
    last = rig.wire.responses("INFO")[-1]
    assert last.status == 500 and last.header("Retry-After") is not None


async def test_invite_without_sdp_gets_offer_answer_in_ack(rig: Rig) -> None:
    rig.send(msg("INVITE"))
    await settle()
    ok = rig.wire.responses()[-1]
    assert ok.status == 200
    offer = SessionDescription.parse(ok.body)
    assert offer.media[0].formats == ("0", "8", "111", "101")
    assert rig.media[0].params.remote_host is None
    answer = PCMU_OFFER.format(direction="sendrecv").replace("RTP/AVP 0 101", "RTP/AVP 8 101")
    answer = answer.replace("rtpmap:0 PCMU", "rtpmap:8 PCMA")
    rig.send(msg("ACK", to_tag=ok.to_addr.tag or "", branch="z9hG4bKack", body=answer))
    await settle()
    params = rig.media[0].params
    assert (params.remote_host, params.remote_port, params.codec) == ("127.0.0.1", 6000, "PCMA")
    assert rig.handlers[0].events == ["start"]


async def test_ack_timeout_ends_the_call_with_bye(rig: Rig) -> None:
    rig.send(invite())
    await settle()
    await run_clock(rig.clock, 32.0, rig.wire, step=0.25)
    (bye,) = rig.wire.requests("BYE")
    assert bye.to_addr.tag == "a1" and str(bye.uri) == "sip:alice@127.0.0.1:5062"
    assert rig.wire.sent[-1][1] == Target("udp", "127.0.0.1", 5062)


async def test_shutdown_byes_calls_and_refuses_new_ones() -> None:
    rig = Rig()
    tag = await answered(rig)
    task = asyncio.create_task(rig.endpoint.shutdown(timeout=5))
    await settle()
    (bye,) = rig.wire.requests("BYE")
    rig.send(invite(call_id="c2", branch="z9hG4bKc2"))
    await settle()
    assert rig.wire.responses("INVITE")[-1].status == 503
    answer = SipResponse(200, "OK", bye.headers).without("Contact")
    rig.wire.deliver(bytes(replace(answer, headers=answer.headers)), CALLER)
    await asyncio.wait_for(task, 2)
    assert rig.handlers[0].events == ["start", "end:shutdown"]
    assert tag and rig.endpoint.calls == {}
