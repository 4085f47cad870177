"""Twilio Media Streams messages, as typed values.

Twilio -> us: `connected`, `start`, `media`, `dtmf`, `mark`, `stop` (JSON text frames).
parse_message() turns one frame into one of the frozen classes below or raises a
TwilioMessageError that names the field; untrusted JSON is never indexed raw. Numbers
Twilio sends as strings (sequenceNumber, chunk, timestamp) come out as ints. An event
we do not know raises UnknownEventError, so a door can ignore it and carry on.

Us -> Twilio: `media`, `mark`, `clear`, built by OutboundMessages, which escapes the
stream SID once per stream and then only splices base64 text into a template.

Each inbound class also has to_json(), the exact wire shape, for tests and replays.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "Connected",
    "Dtmf",
    "Mark",
    "Media",
    "MediaFormat",
    "OutboundMessages",
    "Start",
    "Stop",
    "TwilioMessage",
    "TwilioMessageError",
    "UnknownEventError",
    "media_fields",
    "parse_message",
]

_DIGITS = frozenset("0123456789*#ABCD")
_MAX_TEXT = 1024  # longest SID, track, mark name or parameter we accept
_MAX_NUMBER = 10**12  # sequence numbers and timestamps: ~30 years of milliseconds


class TwilioMessageError(ValueError):
    """A frame that is not a valid Twilio Media Streams message."""


class UnknownEventError(TwilioMessageError):
    """Well-formed JSON with an `event` we do not handle (ignorable)."""

    def __init__(self, event: str) -> None:
        super().__init__(f"unknown Twilio event {event[:40]!r}")
        self.event = event


# -- typed access to untrusted JSON ---------------------------------------------------


def _obj(d: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = d.get(key)
    if not isinstance(value, dict):
        raise TwilioMessageError(f"{where}.{key} must be an object, got {_kind(value)}")
    return value


def _str(d: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = d.get(key, default)
    if not isinstance(value, str):
        raise TwilioMessageError(f"{where}.{key} must be a string, got {_kind(value)}")
    if len(value) > _MAX_TEXT:
        raise TwilioMessageError(f"{where}.{key} is longer than {_MAX_TEXT} characters")
    return value


def _int(d: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    """A non-negative integer, sent as a decimal string (Twilio's way) or a number."""
    value = d.get(key, default)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 13:
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise TwilioMessageError(f"{where}.{key} must be a decimal integer, got {_kind(value)}")
    if not 0 <= number < _MAX_NUMBER:
        raise TwilioMessageError(f"{where}.{key} out of range: {number}")
    return number


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    return type(value).__name__


def _sid(d: Mapping[str, Any], body: Mapping[str, Any], event: str) -> str:
    """streamSid sits at the top level; older `start` frames also put it inside."""
    if "streamSid" in d:
        return _str(d, "streamSid", event)
    return _str(body, "streamSid", f"{event}.{event}", "")


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


# -- Twilio -> us ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str = "Call"
    version: str = "1.0.0"

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> Connected:
        return cls(_str(d, "protocol", "connected", ""), _str(d, "version", "connected", ""))

    def to_json(self) -> str:
        return _dumps({"event": "connected", "protocol": self.protocol, "version": self.version})


@dataclass(frozen=True, slots=True)
class MediaFormat:
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    channels: int = 1

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> MediaFormat:
        w = "start.mediaFormat"
        return cls(_str(d, "encoding", w), _int(d, "sampleRate", w), _int(d, "channels", w, 1))


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    sequence_number: int = 1
    tracks: tuple[str, ...] = ("inbound",)
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    media_format: MediaFormat = MediaFormat()

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> Start:
        body = _obj(d, "start", "start")
        w = "start.start"
        tracks_raw = body.get("tracks", ["inbound"])
        if not (isinstance(tracks_raw, list) and all(isinstance(t, str) for t in tracks_raw)):
            raise TwilioMessageError(f"{w}.tracks must be a list of strings")
        params_raw = body.get("customParameters", {})
        if not isinstance(params_raw, dict):
            raise TwilioMessageError(f"{w}.customParameters must be an object")
        params: dict[str, str] = {}
        for key, value in params_raw.items():
            if not isinstance(value, str) or len(key) > _MAX_TEXT or len(value) > _MAX_TEXT:
                raise TwilioMessageError(
                    f"{w}.customParameters[{key[:40]!r}] must be a string of at most "
                    f"{_MAX_TEXT} characters"
                )
            params[key] = value
        fmt = body.get("mediaFormat")
        sid = _sid(d, body, "start")
        if not sid:
            raise TwilioMessageError("start has no streamSid")
        return cls(
            stream_sid=sid,
            call_sid=_str(body, "callSid", w),
            account_sid=_str(body, "accountSid", w),
            sequence_number=_int(d, "sequenceNumber", "start", 1),
            tracks=tuple(tracks_raw),
            custom_parameters=MappingProxyType(params),
            media_format=(
                MediaFormat() if fmt is None else MediaFormat.parse(_obj(body, "mediaFormat", w))
            ),
        )

    def to_json(self) -> str:
        f = self.media_format
        return _dumps({
            "event": "start",
            "sequenceNumber": str(self.sequence_number),
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": list(self.tracks),
                "customParameters": dict(self.custom_parameters),
                "mediaFormat": {
                    "encoding": f.encoding, "sampleRate": f.sample_rate, "channels": f.channels,
                },
            },
            "streamSid": self.stream_sid,
        })


@dataclass(frozen=True, slots=True)
class Media:
    stream_sid: str
    sequence_number: int
    chunk: int
    timestamp: int  # milliseconds since the stream started
    payload: bytes  # μ-law 8 kHz, decoded from base64
    track: str = "inbound"

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> Media:
        body = _obj(d, "media", "media")
        w = "media.media"
        encoded = body.get("payload")
        if not isinstance(encoded, str):
            raise TwilioMessageError(f"{w}.payload must be a base64 string, got {_kind(encoded)}")
        try:
            payload = binascii.a2b_base64(encoded, strict_mode=True)
        except ValueError as exc:  # binascii.Error, or a non-ASCII character in the string
            raise TwilioMessageError(f"{w}.payload is not valid base64: {exc}") from None
        if not payload:
            raise TwilioMessageError(f"{w}.payload is empty")
        return cls(
            stream_sid=_str(d, "streamSid", "media"),
            sequence_number=_int(d, "sequenceNumber", "media"),
            chunk=_int(body, "chunk", w),
            timestamp=_int(body, "timestamp", w),
            payload=payload,
            track=_str(body, "track", w, "inbound"),
        )

    def to_json(self) -> str:
        return _dumps({
            "event": "media",
            "sequenceNumber": str(self.sequence_number),
            "media": {
                "track": self.track,
                "chunk": str(self.chunk),
                "timestamp": str(self.timestamp),
                "payload": binascii.b2a_base64(self.payload, newline=False).decode("ascii"),
            },
            "streamSid": self.stream_sid,
        })


@dataclass(frozen=True, slots=True)
class Dtmf:
    stream_sid: str
    sequence_number: int
    digit: str
    track: str = "inbound_track"

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> Dtmf:
        body = _obj(d, "dtmf", "dtmf")
        digit = _str(body, "digit", "dtmf.dtmf")
        if digit not in _DIGITS:
            raise TwilioMessageError(f"dtmf.dtmf.digit must be one of 0-9*#A-D, got {digit[:8]!r}")
        return cls(
            stream_sid=_str(d, "streamSid", "dtmf"),
            sequence_number=_int(d, "sequenceNumber", "dtmf"),
            digit=digit,
            track=_str(body, "track", "dtmf.dtmf", "inbound_track"),
        )

    def to_json(self) -> str:
        return _dumps({
            "event": "dtmf",
            "streamSid": self.stream_sid,
            "sequenceNumber": str(self.sequence_number),
            "dtmf": {"track": self.track, "digit": self.digit},
        })


@dataclass(frozen=True, slots=True)
class Mark:
    stream_sid: str
    sequence_number: int
    name: str

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> Mark:
        return cls(
            stream_sid=_str(d, "streamSid", "mark"),
            sequence_number=_int(d, "sequenceNumber", "mark"),
            name=_str(_obj(d, "mark", "mark"), "name", "mark.mark"),
        )

    def to_json(self) -> str:
        return _dumps({
            "event": "mark",
            "sequenceNumber": str(self.sequence_number),
            "streamSid": self.stream_sid,
            "mark": {"name": self.name},
        })


@dataclass(frozen=True, slots=True)
class Stop:
    stream_sid: str
    sequence_number: int
    account_sid: str = ""
    call_sid: str = ""

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> Stop:
        body = d.get("stop", {})
        if not isinstance(body, dict):
            raise TwilioMessageError(f"stop.stop must be an object, got {_kind(body)}")
        return cls(
            stream_sid=_sid(d, body, "stop"),
            sequence_number=_int(d, "sequenceNumber", "stop", 0),
            account_sid=_str(body, "accountSid", "stop.stop", ""),
            call_sid=_str(body, "callSid", "stop.stop", ""),
        )

    def to_json(self) -> str:
        return _dumps({
            "event": "stop",
            "sequenceNumber": str(self.sequence_number),
            "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            "streamSid": self.stream_sid,
        })


TwilioMessage = Connected | Start | Media | Dtmf | Mark | Stop

_PARSERS: dict[str, Any] = {
    "connected": Connected.parse,
    "start": Start.parse,
    "media": Media.parse,
    "dtmf": Dtmf.parse,
    "mark": Mark.parse,
    "stop": Stop.parse,
}


# A media message exactly as Twilio (and PROTOCOLS.md) lays it out: compact, keys in
# this order, plain values. Fifty of these a second per stream are most of what we
# parse, and matching this costs about half of json.loads plus the typed checks. Only
# values the full parser would accept the same way match (ASCII digits below
# _MAX_NUMBER, a plain track and SID, base64 characters); anything else (other key
# order, spaces, escapes, other fields) goes through the full parser, so the result
# never depends on which path ran.
_MEDIA_EXACT = re.compile(
    r'\{"event":"media","sequenceNumber":"([0-9]{1,12})","media":\{"track":"([a-z_]{1,32})",'
    r'"chunk":"([0-9]{1,12})","timestamp":"([0-9]{1,12})","payload":"([A-Za-z0-9+/=]{4,8192})"\},'
    r'"streamSid":"([A-Za-z0-9_-]{1,128})"\}'
)


def media_fields(data: str | bytes) -> tuple[str, str, int, bytes, int, int] | None:
    """The fields of a media message in Twilio's exact layout, without building a
    message: (stream_sid, track, timestamp, payload, sequence_number, chunk). None when
    `data` is not in that layout or its payload is not valid base64: parse_message
    decides those (and raises the precise error)."""
    if type(data) is not str:
        return None
    found = _MEDIA_EXACT.fullmatch(data)
    if found is None:
        return None
    seq, track, chunk, timestamp, encoded, sid = found.groups()
    try:
        payload = binascii.a2b_base64(encoded, strict_mode=True)
    except ValueError:
        return None
    if not payload:
        return None
    return sid, track, int(timestamp), payload, int(seq), int(chunk)


def parse_message(data: str | bytes) -> TwilioMessage:
    """One WebSocket text frame -> one message. Raises TwilioMessageError."""
    fields = media_fields(data)
    if fields is not None:
        sid, track, timestamp, payload, seq, chunk = fields
        return Media(sid, seq, chunk, timestamp, payload, track)
    return _parse_json(data)


def _parse_json(data: str | bytes) -> TwilioMessage:
    """The full parser: any layout JSON allows, every event, precise errors."""
    try:
        d = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8
        raise TwilioMessageError(f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(d, dict):
        raise TwilioMessageError(f"a Twilio message must be a JSON object, got {_kind(d)}")
    event = d.get("event")
    if not isinstance(event, str):
        raise TwilioMessageError(f"message has no string 'event', got {_kind(event)}")
    parse = _PARSERS.get(event)
    if parse is None:
        raise UnknownEventError(event)
    message: TwilioMessage = parse(d)
    return message


# -- us -> Twilio ---------------------------------------------------------------------------


class OutboundMessages:
    """Builds the frames we send on one stream."""

    __slots__ = ("_clear", "_mark", "_media", "stream_sid")

    def __init__(self, stream_sid: str) -> None:
        self.stream_sid = stream_sid
        sid = json.dumps(stream_sid)  # escaped once; SIDs come from the peer
        self._media = '{"event":"media","streamSid":' + sid + ',"media":{"payload":"'
        self._mark = '{"event":"mark","streamSid":' + sid + ',"mark":{"name":'
        self._clear = '{"event":"clear","streamSid":' + sid + "}"

    def media(self, ulaw: bytes) -> str:
        """One frame of μ-law 8 kHz audio (no header)."""
        return self._media + binascii.b2a_base64(ulaw, newline=False).decode("ascii") + '"}}'

    def mark(self, name: str) -> str:
        return self._mark + json.dumps(name) + "}}"

    def clear(self) -> str:
        return self._clear
