"""chan_websocket control messages: both spellings of the documented events parse to the
same thing, commands are built the way Asterisk reads them, and bad input raises
ControlMessageError only."""

from __future__ import annotations

import json
import random

import pytest

from streams.asterisk_ws_messages import (
    COMMANDS,
    MAX_COMMAND_CHARS,
    MAX_TEXT_CHARS,
    Command,
    ControlMessageError,
    build_command,
    dtmf_digit,
    media_start,
    parse_command,
    parse_event,
)

CONN = "e226e283-c90a-4ea9-9e37-389000b9ef47"
PLAIN_START = (f"MEDIA_START connection_id:{CONN} channel:WebSocket/switchboard/0x7f3a "
               "channel_id:pbx1-1712345678.42 format:ulaw optimal_frame_size:160 ptime:20")
JSON_START = json.dumps({
    "event": "MEDIA_START", "connection_id": CONN, "channel": "WebSocket/switchboard/0x7f3a",
    "channel_id": "pbx1-1712345678.42", "format": "ulaw", "optimal_frame_size": 160,
    "ptime": 20, "channel_variables": {"MEDIA_WEBSOCKET_CONNECTION_ID": CONN,
                                       "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": "160",
                                       "SB_LANG": "en", "DEPTH": 3},
}, indent=2)  # JSON may be pretty-printed over several lines


def test_media_start_in_both_spellings() -> None:
    plain, js = media_start(parse_event(PLAIN_START)), media_start(parse_event(JSON_START))
    for start in (plain, js):
        assert (start.connection_id, start.channel_id) == (CONN, "pbx1-1712345678.42")
        assert start.channel == "WebSocket/switchboard/0x7f3a"
        assert (start.format, start.codec, start.rate) == ("ulaw", "PCMU", 8000)
        assert (start.optimal_frame_size, start.ptime) == (160, 20)
    assert not plain.json and plain.variables == {}
    assert js.json and js.variables["SB_LANG"] == "en" and js.variables["DEPTH"] == "3"


@pytest.mark.parametrize(("fmt", "size", "codec", "rate"), [
    ("ulaw", 160, "PCMU", 8000), ("alaw", 160, "PCMA", 8000),
    ("slin", 320, "L16", 8000), ("slin16", 640, "L16", 16000),
])
def test_media_start_formats(fmt: str, size: int, codec: str, rate: int) -> None:
    start = media_start(parse_event(
        f"MEDIA_START connection_id:c1 channel:WebSocket/c1/0x1 format:{fmt} "
        f"optimal_frame_size:{size}"))  # the first releases sent no ptime or channel_id
    assert (start.codec, start.rate, start.ptime, start.channel_id) == (codec, rate, 20, "")


@pytest.mark.parametrize(("text", "match"), [
    ("MEDIA_START connection_id:c format:opus optimal_frame_size:0", "not one of"),
    ("MEDIA_START connection_id:c format:slin24 optimal_frame_size:960", "not one of"),
    ("MEDIA_START connection_id:c format:ulaw optimal_frame_size:240 ptime:30", "20 ms"),
    ("MEDIA_START connection_id:c format:slin16 optimal_frame_size:320", "640 bytes"),
    ("MEDIA_START connection_id:c format:ulaw optimal_frame_size:lots", "whole number"),
    ("MEDIA_START connection_id:c format:ulaw optimal_frame_size:\u00b2", "whole number"),
    ("MEDIA_START format:ulaw optimal_frame_size:160", "neither"),
    ("DTMF_END digit:1", "expected MEDIA_START"),
])
def test_media_start_refusals(text: str, match: str) -> None:
    with pytest.raises(ControlMessageError, match=match):
        media_start(parse_event(text))


def test_other_events() -> None:
    for text in ("DTMF_END digit:5 channel_id:17.3",
                 '{"event":"DTMF_END","channel_id":"17.3","digit":"5"}'):
        event = parse_event(text)
        assert (event.name, dtmf_digit(event), event.get("channel_id")) == ("DTMF_END", "5", "17.3")
    assert dtmf_digit(parse_event("DTMF_END digit:#")) == "#"
    assert dtmf_digit(parse_event('{"event":"DTMF_END","digit":"a"}')) == "A"
    for bad in ("DTMF_END digit:12", "DTMF_END digit:x", "DTMF_END"):
        with pytest.raises(ControlMessageError, match="not a DTMF digit"):
            dtmf_digit(parse_event(bad))
    assert parse_event("MEDIA_XOFF").name == "MEDIA_XOFF"
    assert parse_event('{"event":"MEDIA_XON","channel_id":"1.2"}').get("channel_id") == "1.2"
    for text in ("MEDIA_MARK_PROCESSED sb7",
                 '{"event":"MEDIA_MARK_PROCESSED","channel_id":"1.2","correlation_id":"sb7"}'):
        assert parse_event(text).get("correlation_id") == "sb7"
    assert parse_event("MEDIA_BUFFERING_COMPLETED").get("correlation_id") == ""
    assert parse_event("MEDIA_BUFFERING_COMPLETED b1").get("correlation_id") == "b1"
    status = parse_event("STATUS channel_id:1.2 queue_length:43 xon_level:800 xoff_level:900 "
                         "queue_full:false bulk_media:true media_paused:false")
    assert status.get("queue_length") == "43" and status.get("bulk_media") == "true"
    js_status = parse_event('{"event":"STATUS","queue_length":43,"queue_full":false}')
    assert js_status.get("queue_length") == "43" and js_status.get("queue_full") == "false"
    error = parse_event("ERROR channel_id:1.2 error_text:FLUSH_MEDIA not supported: passthrough")
    assert error.get("error_text") == "FLUSH_MEDIA not supported: passthrough"
    assert parse_event("SOME_FUTURE_EVENT level:3").fields == {"level": "3"}  # read, not refused


@pytest.mark.parametrize(("text", "match"), [
    ("", "empty"),
    ("   \n", "empty"),
    ("media_start connection_id:x", "upper-case"),
    ("{not json", "not JSON"),
    ("[1, 2]", "upper-case"),  # not JSON (no "{"): read as plain text
    ('["MEDIA_START"]', "upper-case"),
    ('{"event": 5}', "upper-case"),
    ('{"command": "HANGUP"}', "upper-case"),  # a command is not an event
    ('{"event":"MEDIA_START","channel_variables":[1]}', "channel_variables"),
    ("MEDIA_XOFF stray words", "unexpected words"),
    ("MEDIA_MARK_PROCESSED a b", "unexpected words"),
    ("DTMF_END digit:1 digit:2", "twice"),
    ("MEDIA_START connection_id:a\nDTMF_END digit:1", "one line"),
    ("[" * 100000, "characters"),
    ('{"event":"X","v":"' + "y" * 5000 + '"}', "characters"),
    ('{"a":' * 5000 + "1" + "}" * 5000, "not JSON"),  # nesting deep enough to recurse
])
def test_bad_events(text: str, match: str) -> None:
    with pytest.raises(ControlMessageError, match=match):
        parse_event(text)


def test_commands_both_spellings() -> None:
    assert build_command("FLUSH_MEDIA", json_format=False) == "FLUSH_MEDIA"
    assert json.loads(build_command("FLUSH_MEDIA", json_format=True)) == {"command": "FLUSH_MEDIA"}
    assert build_command("MARK_MEDIA", json_format=False, correlation_id="sb1") == "MARK_MEDIA sb1"
    assert json.loads(build_command("MARK_MEDIA", json_format=True, correlation_id="sb1")) == {
        "command": "MARK_MEDIA", "correlation_id": "sb1"}
    for name in sorted(COMMANDS):
        for js in (False, True):
            text = build_command(name, json_format=js)
            assert len(text) <= MAX_COMMAND_CHARS
            assert parse_command(text) == Command(name, None, js)
    long_id = "m" * 64
    for js in (False, True):
        text = build_command("STOP_MEDIA_BUFFERING", json_format=js, correlation_id=long_id)
        assert len(text) <= MAX_COMMAND_CHARS
        assert parse_command(text) == Command("STOP_MEDIA_BUFFERING", long_id, js)


@pytest.mark.parametrize(("name", "cid", "match"), [
    ("SKIP_MEDIA", None, "not a chan_websocket command"),
    ("hangup", None, "not a chan_websocket command"),
    ("HANGUP", "x", "takes no correlation id"),
    ("MARK_MEDIA", "has space", "correlation id"),
    ("MARK_MEDIA", "", "correlation id"),
    ("MARK_MEDIA", "x" * 65, "correlation id"),
])
def test_bad_commands(name: str, cid: str | None, match: str) -> None:
    with pytest.raises(ControlMessageError, match=match):
        build_command(name, json_format=True, correlation_id=cid)


@pytest.mark.parametrize("text", [
    "NOT_A_COMMAND", '{"command":"ANSWER","correlation_id":1}', "ANSWER now",
    '{"command":"MARK_MEDIA","correlation_id":"' + "x" * 100 + '"}', "{}",
])
def test_bad_commands_parsed(text: str) -> None:
    with pytest.raises(ControlMessageError):
        parse_command(text)


def test_random_garbage_raises_only_control_message_error() -> None:
    """A small in-test fuzz: mutations of real messages
    either parse or raise ControlMessageError, never anything else."""
    rng = random.Random(5)
    seeds = [PLAIN_START, JSON_START, "DTMF_END digit:5 channel_id:1.2", "MEDIA_XOFF",
             '{"event":"MEDIA_MARK_PROCESSED","correlation_id":"sb1"}', "MARK_MEDIA sb1",
             "ERROR channel_id:1 error_text:bad thing"]
    alphabet = ' :{}[]",\\\n\x00é0123456789abcdefABCDEF_-.' + "\u00b2\ud7ff"
    for _ in range(3000):
        text = list(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(text) + 1)
            op = rng.random()
            if op < 0.4 and text:
                del text[min(pos, len(text) - 1)]
            elif op < 0.8:
                text.insert(pos, rng.choice(alphabet))
            else:
                text[pos:pos] = text[: rng.randint(0, 20)]
        mutated = "".join(text)
        for parse in (parse_event, parse_command):
            try:
                event = parse(mutated)
            except ControlMessageError:
                continue
            if parse is parse_event:
                for step in (media_start, dtmf_digit):
                    try:
                        step(event)  # type: ignore[arg-type]
                    except ControlMessageError:
                        pass
    assert len(PLAIN_START) < MAX_TEXT_CHARS
