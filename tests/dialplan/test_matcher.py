"""Routing: each door's CallInfo (as the door builds it) against each pattern kind; first
match wins; the default; an explicit agent; no route."""

from __future__ import annotations

import pytest

from dialplan import NoRoute, choose, load_text
from dialplan.matcher import pattern_matches
from dialplan.model import parse_pattern
from pipeline.leg import CallInfo
from sip.invite import call_info
from sip.message import SipRequest
from sip.routing import Source
from streams.asterisk_ws import call_info as ws_call_info
from streams.asterisk_ws_messages import media_start, parse_event
from streams.freeswitch import parse_metadata

PLAN = load_text("""
agents:
  clinic: {kind: echo}
  support: {kind: echo}
  vip: {kind: echo}
  closed: {kind: echo}
  holiday: {kind: echo}
  asterisk: {kind: echo}
  fallback: {kind: echo}
routes:
  - match: {callee: "+15551230001"}
    agent: clinic
  - match: {callee: {prefix: "+1555123"}, transport: [sip, twilio]}
    agent: support
  - match: {caller: {regex: "^\\\\+44(20|161)"}}
    agent: vip
  - match: {sip_header: {X-Queue: [support, help], request_uri: {regex: "@pbx\\\\.test"}}}
    agent: support
  - match: {sip_header: {P-Asserted-Identity: {regex: "<sip:\\\\+4420"}}}
    agent: closed
  - match: {twilio_param: {mode: closed}}
    agent: closed
  - match: {twilio_param: {From: {prefix: "+1999"}}}
    agent: vip
  - match: {freeswitch: {queue: holiday}}
    agent: holiday
  - match: {audiosocket_uuid: {prefix: "00000000-0000-0000-0000-"}}
    agent: asterisk
""", "plan.yaml")
WITH_DEFAULT = load_text("agents: {a: {kind: echo}, b: {kind: echo}}\nroutes:\n"
                         "  - {match: {callee: '1'}, agent: b}\ndefault: a\n", "d.yaml")


def sip_info(user: str, caller: str = "alice", *headers: str, host: str = "pbx.test"
             ) -> CallInfo:
    """The CallInfo the SIP door builds for this INVITE (sip.invite.call_info)."""
    extra = "".join(f"{h}\r\n" for h in headers)
    text = (f"INVITE sip:{user}@{host} SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
            f"From: <sip:{caller}@192.0.2.1>;tag=1\r\nTo: <sip:{user}@{host}>\r\n"
            f"Call-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:{caller}@192.0.2.1>\r\n{extra}"
            "Content-Length: 0\r\n\r\n")
    request = SipRequest.parse(text.encode())
    return call_info(request, Source("udp", ("192.0.2.1", 5060), ("192.0.2.2", 5060)))


def twilio_info(to: str, frm: str = "+15550001111", **custom: str) -> CallInfo:
    """As streams.twilio builds it from the start message: custom parameters (From, To,
    CallSid and the webhook's query) plus the stream's ids."""
    params = {"From": frm, "To": to, "CallSid": "CA1", **custom,
              "callSid": "CA1", "streamSid": "MZ1", "accountSid": "AC1"}
    return CallInfo("CA1", "twilio", caller=frm, callee=to, params=params)


def freeswitch_info(metadata: str) -> CallInfo:
    """As streams.freeswitch builds it from the metadata text frame."""
    params = parse_metadata(metadata)
    callee = next((params[k] for k in ("callee", "to", "destination_number") if k in params), "")
    caller = next((params[k] for k in ("caller", "from", "caller_id_number") if k in params), "")
    return CallInfo(params.get("uuid", "u"), "freeswitch", caller, callee, params)


def audiosocket_info(uuid: str) -> CallInfo:
    return CallInfo(uuid, "audiosocket", params={"uuid": uuid, "peer": "127.0.0.1"})


@pytest.mark.parametrize("info, agent", [
    (sip_info("+15551230001"), "clinic"),  # exact callee
    (sip_info("+15551239999"), "support"),  # prefix, and the transport list
    (sip_info("100", "+442071234567"), "vip"),  # caller regex
    (sip_info("100", "bob", "X-Queue: help"), "support"),  # X- header (any case) + fact
    (sip_info("100", "bob", "x-queue: help"), "support"),
    (sip_info("100", "bob", "P-Asserted-Identity: <sip:+442000@carrier>"), "closed"),
    (twilio_info("+15551230001"), "clinic"),  # To is the callee on Twilio
    (twilio_info("+15557770000", mode="closed"), "closed"),  # a webhook query parameter
    (twilio_info("+15557770000", "+19995550000"), "vip"),  # From as a Twilio parameter
    (freeswitch_info('{"queue": "holiday", "caller_id_number": "100"}'), "holiday"),
    (freeswitch_info('{"destination_number": "+15551230001"}'), "clinic"),
    (audiosocket_info("00000000-0000-0000-0000-000000000042"), "asterisk"),
])
def test_each_door_and_pattern_kind(info: CallInfo, agent: str) -> None:
    assert choose(PLAN, info).agent == agent


@pytest.mark.parametrize("info", [
    sip_info("100", "bob", "X-Queue: help", host="other.test"),  # both conditions needed
    sip_info("100", "bob", "X-Queue: sales"),
    freeswitch_info('{"destination_number": "+15551239999"}'),  # prefix route is sip/twilio
    twilio_info("+15557770000", mode="open"),
    # Door-specific conditions hold only for their door, whatever the params say.
    CallInfo("x", "freeswitch", params={"mode": "closed", "x-queue": "help"}),
    CallInfo("x", "sip", params={"uuid": "00000000-0000-0000-0000-000000000042"}),
    audiosocket_info("11111111-0000-0000-0000-000000000042"),
])
def test_no_route_and_no_default_says_what_the_call_was(info: CallInfo) -> None:
    with pytest.raises(NoRoute, match=f"no route matches transport={info.transport}"):
        choose(PLAN, info)


def test_first_match_wins_then_the_default() -> None:
    both = sip_info("+15551230001", "+442071234567")  # routes 1 and 3 both match
    choice = choose(PLAN, both)
    assert (choice.agent, choice.route, choice.why) == ("clinic", 0, "route 1")
    assert choose(WITH_DEFAULT, CallInfo("x", "sip", callee="1")).agent == "b"
    d = choose(WITH_DEFAULT, CallInfo("x", "sip", callee="2"))
    assert (d.agent, d.route, d.why) == ("a", None, "default")


def test_an_explicit_agent_bypasses_routing() -> None:
    picked = choose(WITH_DEFAULT, CallInfo("x", "browser", callee="1", agent="a"))
    assert (picked.agent, picked.why) == ("a", "asked for by name")
    with pytest.raises(NoRoute, match="no agent named 'zzz' \\(agents: a, b\\)"):
        choose(WITH_DEFAULT, CallInfo("x", "browser", agent="zzz"))


@pytest.mark.parametrize("spec, value, hit", [
    ("600", "600", True), ("600", "6000", False),
    ({"exact": "600"}, "600", True),
    ({"prefix": "+44"}, "+4420", True), ({"prefix": "+44"}, "0044", False),
    ({"regex": "^6\\d\\d$"}, "612", True), ({"regex": "^6\\d\\d$"}, "6123", False),
    ({"regex": "support"}, "sip:support@pbx", True),  # searched, not anchored
])
def test_pattern_kinds(spec: object, value: str, hit: bool) -> None:
    assert pattern_matches(parse_pattern(spec), value) is hit


def test_asterisk_chan_websocket_calls_route_by_transport_and_uri_parameters() -> None:
    """The chan_websocket door's CallInfo: caller and callee from the dial string's v()."""
    plan = load_text("agents: {a: {kind: echo}, b: {kind: echo}}\nroutes:\n"
                     "  - {match: {transport: asterisk_ws, callee: '5200'}, agent: b}\n"
                     "default: a\n", "w.yaml")
    start = media_start(parse_event("MEDIA_START connection_id:c1 channel:WebSocket/c1/0x1 "
                                    "channel_id:17.3 format:ulaw optimal_frame_size:160"))
    assert choose(plan, ws_call_info(start, {"caller": "1001", "callee": "5200"})).agent == "b"
    assert choose(plan, ws_call_info(start, {"caller": "1001", "callee": "5201"})).agent == "a"
    assert choose(plan, CallInfo("x", "sip", callee="5200")).agent == "a"
