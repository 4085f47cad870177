"""Twilio Media Streams message models: the documented frames, specific errors, fuzz."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.twilio_messages import (
    Connected,
    Dtmf,
    Mark,
    Media,
    MediaFormat,
    OutboundMessages,
    Start,
    Stop,
    TwilioMessageError,
    UnknownEventError,
    _parse_json,
    media_fields,
    parse_message,
)

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL = "CA5e2e3cbd4fcdee1b7f8f6f8a4f0f0f0f"
ACCOUNT = "AC00000000000000000000000000000000"

# Frames as Twilio documents them (strings for the numbers).
DOCUMENTED = [
    '{"event":"connected","protocol":"Call","version":"1.0.0"}',
    json.dumps({
        "event": "start", "sequenceNumber": "1",
        "start": {
            "accountSid": ACCOUNT, "streamSid": SID, "callSid": CALL, "tracks": ["inbound"],
            "customParameters": {"From": "+15550001111", "agent": "sales"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
        "streamSid": SID,
    }),
    json.dumps({
        "event": "media", "sequenceNumber": "3",
        "media": {"track": "inbound", "chunk": "1", "timestamp": "5",
                  "payload": base64.b64encode(b"\xff" * 160).decode()},
        "streamSid": SID,
    }),
    json.dumps({"event": "dtmf", "streamSid": SID, "sequenceNumber": "5",
                "dtmf": {"track": "inbound_track", "digit": "1"}}),
    json.dumps({"event": "mark", "sequenceNumber": "4", "streamSid": SID,
                "mark": {"name": "my label"}}),
    json.dumps({"event": "stop", "sequenceNumber": "5",
                "stop": {"accountSid": ACCOUNT, "callSid": CALL}, "streamSid": SID}),
]


def test_documented_frames_parse() -> None:
    connected, start, media, dtmf, mark, stop = (parse_message(f) for f in DOCUMENTED)
    assert connected == Connected("Call", "1.0.0")
    assert isinstance(start, Start)
    assert (start.stream_sid, start.call_sid, start.account_sid) == (SID, CALL, ACCOUNT)
    assert start.custom_parameters == {"From": "+15550001111", "agent": "sales"}
    assert start.media_format == MediaFormat("audio/x-mulaw", 8000, 1)
    assert start.tracks == ("inbound",)
    assert media == Media(SID, 3, 1, 5, b"\xff" * 160, "inbound")
    assert dtmf == Dtmf(SID, 5, "1", "inbound_track")
    assert mark == Mark(SID, 4, "my label")
    assert stop == Stop(SID, 5, ACCOUNT, CALL)


def test_to_json_round_trips_and_matches_the_wire_shape() -> None:
    for frame in DOCUMENTED:
        message = parse_message(frame)
        assert parse_message(message.to_json()) == message
        assert json.loads(message.to_json()) == json.loads(frame)


def test_bytes_input_and_integer_numbers() -> None:
    raw = json.dumps({"event": "mark", "sequenceNumber": 9, "streamSid": SID,
                      "mark": {"name": "x"}}).encode()
    assert parse_message(raw) == Mark(SID, 9, "x")


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "must be a JSON object, got list"),
        ('{"event": 5}', "no string 'event', got int"),
        ('{"event":"media","streamSid":"s","sequenceNumber":"1"}',
         "media.media must be an object, got nothing"),
        ('{"event":"media","streamSid":"s","sequenceNumber":"1","media":{"chunk":"1",'
         '"timestamp":"0","payload":"!!!"}}', "media.media.payload is not valid base64"),
        ('{"event":"media","streamSid":"s","sequenceNumber":"1","media":{"chunk":"1",'
         '"timestamp":"0","payload":""}}', "media.media.payload is empty"),
        ('{"event":"media","streamSid":"s","sequenceNumber":"-1","media":{"chunk":"1",'
         '"timestamp":"0","payload":"/w=="}}', "media.sequenceNumber must be a decimal integer"),
        ('{"event":"media","streamSid":"s","sequenceNumber":"1","media":{"chunk":true,'
         '"timestamp":"0","payload":"/w=="}}', "media.media.chunk must be a decimal integer"),
        ('{"event":"dtmf","streamSid":"s","sequenceNumber":"1","dtmf":{"digit":"x"}}',
         "dtmf.dtmf.digit must be one of"),
        ('{"event":"mark","streamSid":"s","sequenceNumber":"1","mark":{}}',
         "mark.mark.name must be a string, got nothing"),
        ('{"event":"start","sequenceNumber":"1","start":{"callSid":"c","accountSid":"a"}}',
         "start has no streamSid"),
        ('{"event":"start","streamSid":"s","start":{"callSid":"c","accountSid":"a",'
         '"customParameters":{"k":1}}}', r"customParameters\['k'\] must be a string"),
        ('{"event":"start","streamSid":"s","start":{"callSid":"c","accountSid":"a",'
         '"tracks":"inbound"}}', "tracks must be a list of strings"),
        ('{"event":"stop","streamSid":"s","stop":[]}', "stop.stop must be an object"),
        ('{"event":"mark","sequenceNumber":"1","mark":{"name":"x"},"streamSid":"' + "s" * 2000
         + '"}', "mark.streamSid is longer than 1024"),
        ("[" * 100000 + "]" * 100000, "not JSON"),
    ],
    ids=lambda value: value[:40],
)
def test_errors_name_the_field(frame: str, message: str) -> None:
    with pytest.raises(TwilioMessageError, match=message):
        parse_message(frame)


def test_unknown_event_is_its_own_error() -> None:
    with pytest.raises(UnknownEventError) as info:
        parse_message('{"event":"someFutureThing","streamSid":"s"}')
    assert info.value.event == "someFutureThing"


def test_outbound_builders() -> None:
    out = OutboundMessages(SID)
    assert json.loads(out.media(b"\x00\x7f\xff")) == {
        "event": "media", "streamSid": SID, "media": {"payload": "AH//"},
    }
    assert json.loads(out.mark('say "hi"\n')) == {
        "event": "mark", "streamSid": SID, "mark": {"name": 'say "hi"\n'},
    }
    assert json.loads(out.clear()) == {"event": "clear", "streamSid": SID}
    # A hostile SID cannot break out of the JSON string.
    evil = OutboundMessages('x","event":"stop')
    assert json.loads(evil.clear())["streamSid"] == 'x","event":"stop'


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "other"]),
    st.dictionaries(
        st.sampled_from(["streamSid", "sequenceNumber", "start", "media", "dtmf", "mark",
                         "stop", "protocol"]),
        _json, max_size=6,
    ),
)
def test_fuzz_structured_raises_only_its_own_errors(event: str, body: dict) -> None:
    try:
        parse_message(json.dumps({"event": event, **body}))
    except TwilioMessageError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_bytes_raise_only_its_own_errors(data: bytes) -> None:
    try:
        parse_message(data)
    except TwilioMessageError:
        pass


# -- the fast path for media in Twilio's exact layout ------------------------------------

B64 = base64.b64encode(bytes(range(160))).decode()
EXACT = ('{"event":"media","sequenceNumber":"7","media":{"track":"inbound","chunk":"6",'
         f'"timestamp":"100","payload":"{B64}"}},"streamSid":"{SID}"}}')


def test_media_in_twilios_layout_takes_the_fast_path_and_agrees_with_json() -> None:
    fields = media_fields(EXACT)
    assert fields == (SID, "inbound", 100, bytes(range(160)), 7, 6)
    assert parse_message(EXACT) == _parse_json(EXACT)
    printed = Media(SID, 1, 2, 3, b"\x01\x02\x03").to_json()  # what replays send
    assert media_fields(printed) is not None


@pytest.mark.parametrize("frame", [
    EXACT.replace('":"', '": "'),  # spaces: valid JSON, another layout
    EXACT.replace('"sequenceNumber":"7",', "").replace('"}}', '"},"sequenceNumber":"7"}'),
    EXACT.replace(SID, "MZ\\u0041"),  # an escape in the SID
    EXACT.replace('"7"', '"1234567890123"'),  # 13 digits: the full parser's range check
    EXACT.replace('"7"', '"99999999999999"'),
    EXACT.replace(B64, "A==="),  # base64 characters, but not valid base64
    EXACT.replace(B64, "===="),  # decodes to nothing
    EXACT.replace(B64, ""),
    EXACT + " ",
    EXACT.replace("}", "},", 1).replace('"streamSid"', '"x":1,"streamSid"'),
    EXACT.encode(),  # bytes: json.loads takes those
])
def test_anything_else_goes_through_the_full_parser_with_the_same_result(
        frame: str | bytes) -> None:
    if isinstance(frame, str):
        assert media_fields(frame) is None
    try:
        expected: object = _parse_json(frame)
    except TwilioMessageError as exc:
        expected = (type(exc), str(exc))
    try:
        got: object = parse_message(frame)
    except TwilioMessageError as exc:
        got = (type(exc), str(exc))
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(seq=st.integers(0, 10**13), chunk=st.integers(0, 10**13), ts=st.integers(0, 10**13),
       payload=st.binary(max_size=400), track=st.sampled_from(["inbound", "outbound", "x_y"]),
       sid=st.text("MZaz09_-", max_size=40))
def test_the_fast_path_never_disagrees_with_json(seq: int, chunk: int, ts: int,
                                                 payload: bytes, track: str, sid: str) -> None:
    frame = json.dumps({
        "event": "media", "sequenceNumber": str(seq),
        "media": {"track": track, "chunk": str(chunk), "timestamp": str(ts),
                  "payload": base64.b64encode(payload).decode()},
        "streamSid": sid,
    }, separators=(",", ":"))
    fields = media_fields(frame)
    if fields is not None:
        got = Media(fields[0], fields[4], fields[5], fields[2], fields[3], fields[1])
        assert got == _parse_json(frame)
