"""SDP parsing/serialization and offer/answer (sip.sdp)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.sdp import (
    Codec,
    Connection,
    NoCommonCodec,
    SdpError,
    SdpSession,
    SessionDescription,
)


def sdp(*lines: str) -> SessionDescription:
    return SessionDescription.parse("\r\n".join(lines) + "\r\n")


def offer(*media_lines: str, conn: str = "IN IP4 203.0.113.5") -> SessionDescription:
    return sdp(
        "v=0",
        "o=carrier 1000 1000 IN IP4 203.0.113.5",
        "s=call",
        f"c={conn}",
        "t=0 0",
        *media_lines,
    )


AUDIO_OFFER = (
    "m=audio 30000 RTP/AVP 8 0 109 96",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:109 opus/48000/2",
    "a=fmtp:109 useinbandfec=1;maxplaybackrate=16000",
    "a=rtpmap:96 telephone-event/8000",
    "a=fmtp:96 0-15",
    "a=ptime:20",
)


def session(**kwargs: object) -> SdpSession:
    params: dict[str, object] = {"address": "192.0.2.10", "port": 40000, "session_id": 555}
    params.update(kwargs)
    return SdpSession(**params)  # type: ignore[arg-type]


# --- the wire format -------------------------------------------------------------------

TYPICAL = (
    "v=0\r\n"
    "o=- 3724394400 3724394401 IN IP4 192.0.2.10\r\n"
    "s=-\r\n"
    "i=a call\r\n"
    "c=IN IP4 192.0.2.10\r\n"
    "b=AS:84\r\n"
    "t=0 0\r\n"
    "a=group:BUNDLE 0\r\n"
    "m=audio 40000 RTP/AVP 0 8 111 101\r\n"
    "c=IN IP6 2001:db8::10\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "a=fmtp:111 useinbandfec=1\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=rtcp:40011 IN IP4 192.0.2.10\r\n"
    "a=ptime:20\r\n"
    "a=x-unknown\r\n"
    "a=sendonly\r\n"
    "m=video 0 RTP/AVP 31\r\n"
)


def test_parse_typical() -> None:
    parsed = SessionDescription.parse(TYPICAL.encode())
    assert parsed.origin.session_id == "3724394400" and parsed.origin.version == 3724394401
    assert parsed.connection == Connection("192.0.2.10")
    assert parsed.other == (("i", "a call"), ("b", "AS:84"))
    audio, video = parsed.media
    assert (audio.media, audio.port, audio.proto) == ("audio", 40000, "RTP/AVP")
    assert audio.formats == ("0", "8", "111", "101")
    assert audio.codecs() == (
        Codec(0, "PCMU", 8000),
        Codec(8, "PCMA", 8000),  # static, no rtpmap needed
        Codec(111, "opus", 48000, 2, "useinbandfec=1"),
        Codec(101, "telephone-event", 8000, 1, "0-16"),
    )
    assert audio.connection == Connection("2001:db8::10", "IN", "IP6")
    assert parsed.connection_of(audio) == audio.connection
    assert audio.rtcp_port == 40011 and audio.ptime == 20 and audio.attribute("x-unknown") == ""
    assert audio.maxptime is None
    assert parsed.direction_of(audio) == "sendonly" and parsed.direction_of(video) == "sendrecv"
    assert video.port == 0


def test_round_trip_keeps_unknown_lines_in_rfc_order() -> None:
    parsed = SessionDescription.parse(TYPICAL)
    assert str(parsed) == TYPICAL
    shuffled = TYPICAL.replace("b=AS:84\r\n", "").replace("s=-\r\n", "s=-\r\nb=AS:84\r\n")
    assert str(SessionDescription.parse(shuffled)) == TYPICAL
    lf_only = SessionDescription.parse(TYPICAL.replace("\r\n", "\n") + "\n\n")
    assert lf_only == parsed


def test_multicast_connection_and_port_count() -> None:
    parsed = offer("m=audio 49170/2 RTP/AVP 0", conn="IN IP4 224.2.1.1/127/3")
    assert parsed.connection is not None and parsed.connection.address == "224.2.1.1"
    assert parsed.media[0].port_count == 2 and "m=audio 49170/2 RTP/AVP 0" in str(parsed)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "must start with v=0"),
        ("v=1\r\n", "must start with v=0"),
        ("v=0\r\ns=-\r\n", "no o= line"),
        ("v=0\r\no=- 1 x IN IP4 h\r\n", "session version"),
        ("v=0\r\no=- 1 2 IN IP4\r\n", "6 fields"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\nc=IN IP4\r\n", "3 fields"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 70000 RTP/AVP 0\r\n", "m= port"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\nm=audio\r\n", "m= needs"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\nbogus\r\n", "malformed SDP line"),
    ],
)
def test_parse_errors(text: str, reason: str) -> None:
    with pytest.raises(SdpError, match=reason):
        SessionDescription.parse(text)


SDP_LINE = st.builds(
    "{}={}".format,
    st.sampled_from("vosicbtamkx"),
    st.sampled_from(["audio 0 RTP/AVP 0", "rtpmap:0 PCMU/8000", "IN IP4 0.0.0.0", "ptime:"])
    | st.text(max_size=30),
)


@given(st.lists(SDP_LINE, max_size=12) | st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_fuzz_only_sdp_errors(body: list[str] | bytes) -> None:
    head = b"v=0\r\no=- 1 1 IN IP4 h\r\n"
    data = head + body if isinstance(body, bytes) else head + "\r\n".join(body).encode()
    try:
        parsed = SessionDescription.parse(data)
        for media in parsed.media:
            media.codecs(), media.ptime, media.rtcp_port, parsed.direction_of(media)
        assert str(SessionDescription.parse(str(parsed))) == str(parsed)
        session().receive_offer(parsed)
    except SdpError:
        pass


# --- answering -------------------------------------------------------------------------


def test_answer_picks_callers_first_allowed_codec_and_their_event_type() -> None:
    ours = session(codecs=["PCMU", "PCMA", "opus"])
    answer, media = ours.receive_offer(offer(*AUDIO_OFFER))
    assert media.codec == Codec(8, "PCMA", 8000)  # the caller listed PCMA first
    assert media.telephone_event == Codec(96, "telephone-event", 8000, 1, "0-15")
    assert (media.recv_payload_type, media.recv_event_type) == (8, 96)
    assert (media.remote_address, media.remote_port, media.remote_rtcp_port) == (
        "203.0.113.5",
        30000,
        30001,
    )
    assert media.direction == "sendrecv" and media.send and media.recv and media.ptime == 20
    assert str(answer) == (
        "v=0\r\n"
        "o=switchboard 555 555 IN IP4 192.0.2.10\r\n"
        "s=-\r\n"
        "c=IN IP4 192.0.2.10\r\n"
        "t=0 0\r\n"
        "m=audio 40000 RTP/AVP 8 96\r\n"
        "a=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:96 telephone-event/8000\r\n"
        "a=fmtp:96 0-16\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    )


def test_answer_with_dynamic_opus() -> None:
    ours = session(codecs=["opus"], dtmf=False, rtcp_port=40001)
    answer, media = ours.receive_offer(offer(*AUDIO_OFFER))
    assert media.codec == Codec(109, "opus", 48000, 2, "useinbandfec=1;maxplaybackrate=16000")
    assert media.telephone_event is None
    audio = answer.media[0]
    assert audio.formats == ("109",) and audio.attribute("fmtp") == "109 useinbandfec=1"
    assert audio.rtcp_port == 40001


def test_telephone_event_prefers_the_codec_clock_rate() -> None:
    lines = (
        "m=audio 30000 RTP/AVP 109 101 100",
        "a=rtpmap:109 opus/48000/2",
        "a=rtpmap:101 telephone-event/8000",
        "a=rtpmap:100 telephone-event/48000",
    )
    _, media = session(codecs=["opus"]).receive_offer(offer(*lines))
    assert media.telephone_event is not None and media.telephone_event.payload_type == 100


@pytest.mark.parametrize(
    ("offered", "answered"),
    [
        ("sendrecv", "sendrecv"),
        ("sendonly", "recvonly"),
        ("recvonly", "sendonly"),
        ("inactive", "inactive"),
    ],
)
def test_answer_direction_mirrors_the_offer(offered: str, answered: str) -> None:
    answer, media = session().receive_offer(offer(*AUDIO_OFFER, f"a={offered}"))
    assert answer.direction_of(answer.media[0]) == answered == media.direction
    session_level = sdp(
        "v=0",
        "o=c 1 1 IN IP4 h",
        "s=-",
        "c=IN IP4 203.0.113.5",
        "t=0 0",
        f"a={offered}",
        *AUDIO_OFFER,
    )
    assert session().receive_offer(session_level)[1].direction == answered


def test_null_connection_is_hold() -> None:
    _, media = session().receive_offer(offer(*AUDIO_OFFER, conn="IN IP4 0.0.0.0"))
    assert media.direction == "recvonly" and not media.send


def test_our_own_direction_limits_the_answer() -> None:
    _, media = session(direction="sendonly").receive_offer(offer(*AUDIO_OFFER))
    assert media.direction == "sendonly"
    _, media = session(direction="sendonly").receive_offer(offer(*AUDIO_OFFER, "a=sendonly"))
    assert media.direction == "inactive"


def test_non_audio_and_extra_streams_are_rejected_with_port_zero() -> None:
    video_first = offer(
        "m=video 30002 RTP/AVP 31",
        "a=rtpmap:31 H261/90000",
        "m=audio 30000 RTP/SAVP 0",
        "m=audio 30004 RTP/AVP 0",
        "m=audio 30006 RTP/AVP 0",
        "m=application 9 TCP/BFCP *",
    )
    answer, media = session().receive_offer(video_first)
    assert [(m.media, m.port, m.formats) for m in answer.media] == [
        ("video", 0, ("31",)),
        ("audio", 0, ("0",)),
        ("audio", 40000, ("0",)),
        ("audio", 0, ("0",)),
        ("application", 0, ("*",)),
    ]
    assert media.remote_port == 30004
    assert "m=video 0 RTP/AVP 31\r\nm=audio 0 RTP/SAVP 0\r\n" in str(answer)


@pytest.mark.parametrize(
    "lines",
    [
        ("m=audio 30000 RTP/AVP 18 3", "a=rtpmap:18 G729/8000"),
        ("m=audio 30000 RTP/SAVP 0 8",),
        ("m=audio 0 RTP/AVP 0 8",),
        ("m=video 30000 RTP/AVP 31",),
        ("m=audio 30000 RTP/AVP 97", "a=rtpmap:97 PCMU/16000"),  # PCMU, but not at 8 kHz
        (),
    ],
)
def test_no_common_codec_is_488(lines: tuple[str, ...]) -> None:
    ours = session()
    with pytest.raises(NoCommonCodec, match="no common codec") as info:
        ours.receive_offer(offer(*lines))
    assert info.value.status == 488
    assert ours.local is None and ours.negotiated is None


def test_audio_without_address_is_an_error() -> None:
    bare = sdp("v=0", "o=c 1 1 IN IP4 h", "s=-", "t=0 0", *AUDIO_OFFER)
    with pytest.raises(SdpError, match="no c= address"):
        session().receive_offer(bare)


def test_rtcp_attribute_and_ptime_from_the_offer() -> None:
    parsed = offer(*AUDIO_OFFER[:-1], "a=ptime:30", "a=maxptime:60", "a=rtcp:31111")
    assert parsed.media[0].maxptime == 60
    _, media = session().receive_offer(parsed)
    assert media.ptime == 30 and media.remote_rtcp_port == 31111


# --- re-offers from the far end --------------------------------------------------------


def test_remote_hold_resume_and_codec_change_bump_our_version_only_on_change() -> None:
    ours = session(codecs=["PCMU", "PCMA"])
    first, media = ours.receive_offer(offer(*AUDIO_OFFER))
    assert first.origin.version == 555 and media.codec.name == "PCMA"

    again, _ = ours.receive_offer(offer(*AUDIO_OFFER))  # session refresh: nothing changed
    assert again == first

    held, media = ours.receive_offer(offer(*AUDIO_OFFER, "a=sendonly"))
    assert held.origin.version == 556 and media.direction == "recvonly" and not media.send

    resumed, media = ours.receive_offer(offer(*AUDIO_OFFER, "a=sendrecv"))
    assert resumed.origin.version == 557 and media.direction == "sendrecv"

    changed, media = ours.receive_offer(
        offer("m=audio 30000 RTP/AVP 0 96", "a=rtpmap:96 telephone-event/8000")
    )
    assert changed.origin.version == 558 and media.codec.name == "PCMU"
    assert changed.origin.session_id == "555"


# --- our offers ------------------------------------------------------------------------


def test_offer_lists_our_codecs() -> None:
    ours = session(codecs=["PCMU", "PCMA", "opus"])
    assert str(ours.create_offer()) == (
        "v=0\r\n"
        "o=switchboard 555 555 IN IP4 192.0.2.10\r\n"
        "s=-\r\n"
        "c=IN IP4 192.0.2.10\r\n"
        "t=0 0\r\n"
        "m=audio 40000 RTP/AVP 0 8 111 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:111 opus/48000/2\r\n"
        "a=fmtp:111 useinbandfec=1\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-16\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    )
    assert ours.offer_pending


def test_ipv6_offer() -> None:
    text = str(session(address="2001:db8::10", codecs=["PCMU"]).create_offer())
    assert "o=switchboard 555 555 IN IP6 2001:db8::10\r\n" in text
    assert "c=IN IP6 2001:db8::10\r\n" in text


def test_answer_to_our_offer_uses_their_payload_numbers_to_send() -> None:
    ours = session(codecs=["opus", "PCMU"])
    ours.create_offer()
    answer = sdp(
        "v=0",
        "o=far 9 9 IN IP4 198.51.100.7",
        "s=-",
        "c=IN IP4 198.51.100.7",
        "t=0 0",
        "m=audio 20000 RTP/AVP 96 97",
        "a=rtpmap:96 opus/48000/2",
        "a=rtpmap:97 telephone-event/8000",
        "a=ptime:40",
    )
    media = ours.receive_answer(answer)
    assert media.codec.payload_type == 96 and media.recv_payload_type == 111
    assert media.telephone_event is not None and media.telephone_event.payload_type == 97
    assert media.recv_event_type == 101
    assert (media.remote_address, media.remote_port, media.ptime) == ("198.51.100.7", 20000, 40)
    assert not ours.offer_pending and ours.remote == answer
    with pytest.raises(SdpError, match="no offer pending"):
        ours.receive_answer(answer)


def test_rejected_or_foreign_answers() -> None:
    ours = session(codecs=["PCMU"])
    ours.create_offer()
    with pytest.raises(NoCommonCodec, match="rejected our audio"):
        ours.receive_answer(offer("m=audio 0 RTP/AVP 0"))
    ours.create_offer()
    with pytest.raises(NoCommonCodec, match="no codec we offered"):
        ours.receive_answer(offer("m=audio 20000 RTP/AVP 8"))
    ours.create_offer()
    with pytest.raises(SdpError, match="different number of m= lines"):
        ours.receive_answer(offer("m=audio 20000 RTP/AVP 0", "m=video 0 RTP/AVP 31"))


def test_we_hold_and_resume() -> None:
    ours = session(codecs=["PCMU"])
    first = ours.create_offer()
    ours.receive_answer(offer("m=audio 20000 RTP/AVP 0"))
    assert ours.create_offer() == first  # unchanged re-offer keeps its version

    ours.direction = "sendonly"
    hold = ours.create_offer()
    assert hold.origin.version == first.origin.version + 1
    assert hold.direction_of(hold.media[0]) == "sendonly"
    media = ours.receive_answer(offer("m=audio 20000 RTP/AVP 0", "a=recvonly"))
    assert media.direction == "sendonly" and media.send and not media.recv

    ours.direction = "sendrecv"
    resume = ours.create_offer()
    assert resume.origin.version == first.origin.version + 2
    assert ours.receive_answer(offer("m=audio 20000 RTP/AVP 0")).direction == "sendrecv"


def test_config_errors() -> None:
    with pytest.raises(SdpError, match="unknown codecs"):
        session(codecs=["PCMU", "AMR"])
    with pytest.raises(SdpError, match="bad direction"):
        session(direction="sideways")


def test_answer_listing_telephone_event_first_still_picks_the_audio_codec():
    from sip.sdp import SdpSession, SessionDescription

    ours = SdpSession("127.0.0.1", 20000, session_id=1)
    ours.create_offer()
    answer = SessionDescription.parse(
        b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=audio 30000 RTP/AVP 101 8\r\na=rtpmap:101 telephone-event/8000\r\n"
        b"a=rtpmap:8 PCMA/8000\r\n"
    )
    negotiated = ours.receive_answer(answer)
    assert negotiated.codec.name == "PCMA"
    assert negotiated.telephone_event is not None
