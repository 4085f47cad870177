"""Asterisk chan_websocket control messages: pure parsing and building, no I/O.

chan_websocket (Asterisk 20.16+, 21.11+, 22.6+, 23) carries media in BINARY frames and
control in TEXT frames. Events come from Asterisk, commands go to it. Each call uses one
of two spellings, chosen in Asterisk (chan_websocket.conf `control_message_format`, or
the dial string's `f(json)` / `f(plain-text)`):

- plain text, one line: the name, then `key:value` words
  (`MEDIA_START connection_id:... channel:WebSocket/c1/0x1 channel_id:17.3 format:ulaw
  optimal_frame_size:160 ptime:20`); a few carry one bare word, the correlation id
  (`MEDIA_MARK_PROCESSED m1`, `STOP_MEDIA_BUFFERING m1`); ERROR's `error_text:` runs to
  the end of the line.
- JSON, one object per frame: `{"event": "MEDIA_START", ...}` from Asterisk (with a
  `channel_variables` object), `{"command": "MARK_MEDIA", "correlation_id": "m1"}` to it.

We answer in whichever spelling MEDIA_START arrived in. Everything here raises
ControlMessageError, and only that, on input it cannot read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "COMMANDS", "FORMATS", "MAX_COMMAND_CHARS", "MAX_TEXT_CHARS", "Command",
    "ControlMessageError", "Event", "MediaStart", "build_command", "dtmf_digit",
    "media_start", "parse_command", "parse_event",
]

# Commands Asterisk understands (all case-sensitive).
COMMANDS = frozenset({
    "ANSWER", "HANGUP", "START_MEDIA_BUFFERING", "STOP_MEDIA_BUFFERING", "MARK_MEDIA",
    "FLUSH_MEDIA", "PAUSE_MEDIA", "CONTINUE_MEDIA", "GET_STATUS", "REPORT_QUEUE_DRAINED",
})
_TAKES_ID = frozenset({"STOP_MEDIA_BUFFERING", "MARK_MEDIA"})
# Events whose plain-text form ends in a bare correlation id.
_BARE_ID_EVENTS = frozenset({"MEDIA_MARK_PROCESSED", "MEDIA_BUFFERING_COMPLETED"})

# Channel formats the door decodes: Asterisk name -> (our codec, sample rate).
FORMATS: Mapping[str, tuple[str, int]] = MappingProxyType({
    "ulaw": ("PCMU", 8000), "alaw": ("PCMA", 8000),
    "slin": ("L16", 8000), "slin16": ("L16", 16000),
})

MAX_TEXT_CHARS = 65536  # a MEDIA_START with many channel variables still fits
MAX_COMMAND_CHARS = 128  # Asterisk ignores longer TEXT commands
_MAX_FIELDS = 256
_MAX_VALUE = 4096
_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:#@+-]{1,64}")


class ControlMessageError(ValueError):
    """A control message that cannot be read (or a command that cannot be written)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One control message from Asterisk. `fields` are flat strings (numbers as decimal,
    booleans as true/false); `variables` are the JSON form's channel_variables."""

    name: str
    fields: Mapping[str, str] = field(default_factory=dict)
    variables: Mapping[str, str] = field(default_factory=dict)
    json: bool = False

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)


@dataclass(frozen=True, slots=True)
class MediaStart:
    """MEDIA_START, checked: what the door needs to open the call."""

    connection_id: str
    channel: str
    channel_id: str
    format: str  # a key of FORMATS
    codec: str  # "PCMU", "PCMA" or "L16"
    rate: int
    optimal_frame_size: int  # bytes per ptime in `format`
    ptime: int  # ms
    variables: Mapping[str, str] = field(default_factory=dict)
    json: bool = False


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    correlation_id: str | None = None
    json: bool = False


def _text_value(value: object) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = ""
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if len(text) > _MAX_VALUE:
        raise ControlMessageError(f"a value of {len(text)} characters (at most {_MAX_VALUE})")
    return text


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise ControlMessageError("a control message must be text")
    if len(text) > MAX_TEXT_CHARS:
        raise ControlMessageError(f"{len(text)} characters (at most {MAX_TEXT_CHARS})")
    stripped = text.strip()
    if not stripped:
        raise ControlMessageError("an empty control message")
    return stripped


def _load_object(text: str) -> dict[str, object]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ControlMessageError(f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(data, dict):
        raise ControlMessageError("a JSON control message must be an object")
    if len(data) > _MAX_FIELDS:
        raise ControlMessageError(f"{len(data)} keys (at most {_MAX_FIELDS})")
    return data


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ControlMessageError(f"{what} {str(value)[:40]!r} is not an upper-case name")
    return value


def _parse_json_event(text: str) -> Event:
    data = _load_object(text)
    name = _name(data.get("event"), "event")
    fields: dict[str, str] = {}
    variables: dict[str, str] = {}
    for key, value in data.items():
        if key == "event":
            continue
        if key == "channel_variables":
            if not isinstance(value, dict):
                raise ControlMessageError("channel_variables must be an object")
            if len(value) > _MAX_FIELDS:
                raise ControlMessageError(f"{len(value)} channel variables (at most {_MAX_FIELDS})")
            for var, var_value in value.items():
                if not var or len(var) > 128:
                    raise ControlMessageError(f"channel variable name {var[:40]!r}")
                variables[var] = _text_value(var_value)
            continue
        if len(key) > 64:
            raise ControlMessageError(f"key {key[:40]!r} is too long")
        fields[key] = _text_value(value)
    return Event(name, fields, variables, json=True)


def _parse_plain_event(text: str) -> Event:
    if "\n" in text or "\r" in text:
        raise ControlMessageError("a plain-text control message is one line")
    words = text.split()
    name = _name(words[0], "event")
    fields: dict[str, str] = {}
    bare: list[str] = []
    last = ""
    for word in words[1:]:
        key, colon, value = word.partition(":")
        if last == "error_text":  # the error text runs to the end of the line
            fields[last] += " " + word
        elif colon and _KEY.fullmatch(key):
            if key in fields:
                raise ControlMessageError(f"{key!r} given twice")
            fields[key] = value
            last = key
        else:
            bare.append(word)
        if len(fields) + len(bare) > _MAX_FIELDS:
            raise ControlMessageError(f"more than {_MAX_FIELDS} words")
    if bare:
        if name not in _BARE_ID_EVENTS or len(bare) > 1 or "correlation_id" in fields:
            raise ControlMessageError(f"{name}: unexpected words {' '.join(bare)[:60]!r}")
        fields["correlation_id"] = bare[0]
    for value in fields.values():
        if len(value) > _MAX_VALUE:
            raise ControlMessageError(f"a value of {len(value)} characters")
    return Event(name, fields)


def parse_event(text: str) -> Event:
    """One TEXT frame from Asterisk, in either spelling."""
    text = _check_text(text)
    return _parse_json_event(text) if text[0] == "{" else _parse_plain_event(text)


def _int_field(event: Event, key: str, default: int | None = None) -> int:
    raw = event.get(key)
    if not raw and default is not None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6:
        raise ControlMessageError(f"{event.name}: {key}={raw[:20]!r} is not a whole number")
    return int(raw)


def media_start(event: Event) -> MediaStart:
    """The MEDIA_START event, checked against what the door decodes: ulaw, alaw, slin or
    slin16 in 20 ms frames (the optimal frame size must say so too)."""
    if event.name != "MEDIA_START":
        raise ControlMessageError(f"expected MEDIA_START first, got {event.name}")
    fmt = event.get("format")
    if fmt not in FORMATS:
        raise ControlMessageError(
            f"format {fmt[:20]!r} is not one of {', '.join(FORMATS)}: set c(ulaw), c(alaw), "
            "c(slin) or c(slin16) in the dial string")
    codec, rate = FORMATS[fmt]
    ptime = _int_field(event, "ptime", default=20)  # older releases do not send it
    size = _int_field(event, "optimal_frame_size")
    expected = rate // 50 * (2 if codec == "L16" else 1)
    if ptime != 20 or size != expected:
        raise ControlMessageError(
            f"{fmt} with ptime {ptime} ms and optimal_frame_size {size}: "
            f"expected 20 ms frames of {expected} bytes")
    channel_id = event.get("channel_id")
    connection_id = event.get("connection_id")
    if not (channel_id or connection_id):
        raise ControlMessageError("MEDIA_START names neither channel_id nor connection_id")
    return MediaStart(
        connection_id=connection_id, channel=event.get("channel"), channel_id=channel_id,
        format=fmt, codec=codec, rate=rate, optimal_frame_size=size, ptime=ptime,
        variables=event.variables, json=event.json,
    )


def dtmf_digit(event: Event) -> str:
    """The digit of a DTMF_END event."""
    digit = event.get("digit")
    if len(digit) != 1 or digit not in "0123456789*#ABCDabcd":
        raise ControlMessageError(f"DTMF_END digit {digit[:10]!r} is not a DTMF digit")
    return digit.upper()


def build_command(name: str, *, json_format: bool, correlation_id: str | None = None) -> str:
    """A command for Asterisk, in the call's spelling; always under MAX_COMMAND_CHARS."""
    if name not in COMMANDS:
        raise ControlMessageError(f"{name[:40]!r} is not a chan_websocket command")
    if correlation_id is not None:
        if name not in _TAKES_ID:
            raise ControlMessageError(f"{name} takes no correlation id")
        if not _CORRELATION_ID.fullmatch(correlation_id):
            raise ControlMessageError(f"correlation id {correlation_id[:40]!r}: 1-64 of "
                                      "letters, digits and ._:#@+-")
    if json_format:
        body: dict[str, str] = {"command": name}
        if correlation_id is not None:
            body["correlation_id"] = correlation_id
        return json.dumps(body, separators=(",", ":"))
    return name if correlation_id is None else f"{name} {correlation_id}"


def parse_command(text: str) -> Command:
    """A command as Asterisk reads it (for tests and tools that play Asterisk's part)."""
    text = _check_text(text)
    if len(text) > MAX_COMMAND_CHARS:
        raise ControlMessageError(f"a command of {len(text)} characters is ignored by Asterisk")
    if text[0] == "{":
        data = _load_object(text)
        name = _name(data.get("command"), "command")
        raw_id = data.get("correlation_id")
        if raw_id is not None and not isinstance(raw_id, str):
            raise ControlMessageError("correlation_id must be a string")
        correlation_id, json_format = raw_id, True
    else:
        name_word, _, rest = text.partition(" ")
        name = _name(name_word, "command")
        correlation_id, json_format = rest.strip() or None, False
    if name not in COMMANDS:
        raise ControlMessageError(f"{name} is not a chan_websocket command")
    if correlation_id is not None and (
            name not in _TAKES_ID or not _CORRELATION_ID.fullmatch(correlation_id)):
        raise ControlMessageError(f"{name}: bad correlation id {correlation_id[:40]!r}")
    return Command(name, correlation_id, json_format)
