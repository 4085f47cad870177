"""Asterisk AudioSocket framing: kind (1 byte), payload length (2 bytes, big-endian), payload.

Kinds: 0x00 hang-up, 0x01 the call's UUID (16 bytes), 0x03 one ASCII DTMF digit,
0x10..0x16 signed linear 16-bit little-endian audio at 8, 12, 16, 24, 32, 44.1 and 48 kHz
(the dialplan application always sends 0x10; the channel driver may use the others),
0xff error with an optional application-specific code.

Pure: bytes in, frames out. FrameReader cuts a TCP byte stream into frames and refuses
an unknown kind or an over-long payload as soon as the 3-byte header is in, so a broken
or hostile peer never makes us buffer more than one frame's worth.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "AUDIO_RATES",
    "DTMF_DIGITS",
    "HEADER",
    "MAX_PAYLOAD",
    "AudioSocketError",
    "Frame",
    "FrameReader",
    "FrameTooLongError",
    "Kind",
    "PayloadError",
    "TruncatedFrameError",
    "UnknownKindError",
    "audio_frame",
    "audio_header",
    "dtmf_frame",
    "error_frame",
    "hangup_frame",
    "kind_for_rate",
    "uuid_frame",
]

HEADER = struct.Struct(">BH")
MAX_PAYLOAD = 0xFFFF  # what a 2-byte length can say
DTMF_DIGITS = frozenset("0123456789*#ABCD")


class AudioSocketError(ValueError):
    """A byte stream that is not valid AudioSocket."""


class UnknownKindError(AudioSocketError):
    def __init__(self, kind: int) -> None:
        super().__init__(f"unknown AudioSocket frame kind 0x{kind:02x}")
        self.kind = kind


class FrameTooLongError(AudioSocketError):
    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"AudioSocket payload of {length} bytes exceeds the {limit}-byte limit")
        self.length = length
        self.limit = limit


class PayloadError(AudioSocketError):
    """A payload that its kind does not allow (a 15-byte UUID, an odd audio length, ...)."""


class TruncatedFrameError(AudioSocketError):
    """Frame.parse was given fewer (or more) bytes than the header announces."""


class Kind(IntEnum):
    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    SLIN_8K = 0x10
    SLIN_12K = 0x11
    SLIN_16K = 0x12
    SLIN_24K = 0x13
    SLIN_32K = 0x14
    SLIN_44K = 0x15
    SLIN_48K = 0x16
    ERROR = 0xFF


AUDIO_RATES: dict[Kind, int] = {
    Kind.SLIN_8K: 8000,
    Kind.SLIN_12K: 12000,
    Kind.SLIN_16K: 16000,
    Kind.SLIN_24K: 24000,
    Kind.SLIN_32K: 32000,
    Kind.SLIN_44K: 44100,
    Kind.SLIN_48K: 48000,
}
_RATE_KINDS = {rate: kind for kind, rate in AUDIO_RATES.items()}
_KINDS: dict[int, Kind] = {int(k): k for k in Kind}


def kind_for_rate(rate: int) -> Kind:
    kind = _RATE_KINDS.get(rate)
    if kind is None:
        raise PayloadError(f"AudioSocket has no audio kind for {rate} Hz")
    return kind


def _check_payload(kind: Kind, payload: bytes) -> None:
    n = len(payload)
    if kind is Kind.UUID:
        if n != 16:
            raise PayloadError(f"AudioSocket UUID payload must be 16 bytes, got {n}")
    elif kind is Kind.DTMF:
        if n != 1 or chr(payload[0]) not in DTMF_DIGITS:
            raise PayloadError(f"AudioSocket DTMF must be one digit 0-9*#A-D, got {payload[:8]!r}")
    elif kind is Kind.HANGUP:
        if n:
            raise PayloadError(f"AudioSocket hang-up carries no payload, got {n} bytes")
    elif kind in AUDIO_RATES and n % 2:
        raise PayloadError(f"AudioSocket audio must be whole 16-bit samples, got {n} bytes")


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    payload: bytes = b""

    def __post_init__(self) -> None:
        if len(self.payload) > MAX_PAYLOAD:
            raise FrameTooLongError(len(self.payload), MAX_PAYLOAD)
        _check_payload(self.kind, self.payload)

    @classmethod
    def parse(cls, data: bytes) -> Frame:
        """Exactly one whole frame."""
        if len(data) < HEADER.size:
            raise TruncatedFrameError(f"AudioSocket frame needs a 3-byte header, got {len(data)}")
        code, length = HEADER.unpack_from(data)
        kind = _KINDS.get(code)
        if kind is None:
            raise UnknownKindError(code)
        if len(data) - HEADER.size != length:
            raise TruncatedFrameError(
                f"AudioSocket header announces {length} payload bytes, "
                f"{len(data) - HEADER.size} follow"
            )
        return cls(kind, bytes(data[HEADER.size:]))

    def __bytes__(self) -> bytes:
        return HEADER.pack(self.kind, len(self.payload)) + self.payload

    @property
    def rate(self) -> int | None:
        """The sample rate of an audio frame; None for other kinds."""
        return AUDIO_RATES.get(self.kind)

    @property
    def uuid(self) -> uuid.UUID:
        if self.kind is not Kind.UUID:
            raise PayloadError(f"a {self.kind.name} frame carries no UUID")
        return uuid.UUID(bytes=self.payload)

    @property
    def digit(self) -> str:
        if self.kind is not Kind.DTMF:
            raise PayloadError(f"a {self.kind.name} frame carries no DTMF digit")
        return chr(self.payload[0])

    @property
    def error_code(self) -> int | None:
        """The first byte of an error frame's payload, when there is one."""
        if self.kind is not Kind.ERROR:
            raise PayloadError(f"a {self.kind.name} frame carries no error code")
        return self.payload[0] if self.payload else None


def uuid_frame(value: uuid.UUID | str) -> Frame:
    u = value if isinstance(value, uuid.UUID) else uuid.UUID(value)
    return Frame(Kind.UUID, u.bytes)


def audio_frame(pcm_le: bytes, rate: int = 8000) -> Frame:
    return Frame(kind_for_rate(rate), pcm_le)


def audio_header(rate: int, length: int) -> bytes:
    """The 3-byte header of an audio frame (the hot path: no Frame object per send)."""
    return HEADER.pack(kind_for_rate(rate), length)


def dtmf_frame(digit: str) -> Frame:
    if len(digit) != 1 or digit not in DTMF_DIGITS:
        raise PayloadError(f"not a DTMF digit: {digit!r}")
    return Frame(Kind.DTMF, digit.encode("ascii"))


def hangup_frame() -> Frame:
    return Frame(Kind.HANGUP)


def error_frame(code: int | None = None) -> Frame:
    if code is None:
        return Frame(Kind.ERROR)
    if not 0 <= code <= 255:
        raise PayloadError(f"AudioSocket error code must be one byte, got {code}")
    return Frame(Kind.ERROR, bytes((code,)))


class FrameReader:
    """Cuts a byte stream into frames. After an error the stream cannot be trusted to be
    in step again, so every later feed() raises too."""

    def __init__(self, max_payload: int = 4096) -> None:
        if not 0 < max_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_payload must be 1..{MAX_PAYLOAD}, got {max_payload}")
        self.max_payload = max_payload
        self._buffer = bytearray()
        self._failed: AudioSocketError | None = None

    @property
    def pending(self) -> int:
        """Bytes held back: the start of a frame not yet complete."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed is not None:
            raise AudioSocketError(f"AudioSocket stream already failed: {self._failed}")
        buf = self._buffer
        buf += data
        frames: list[Frame] = []
        pos = 0
        try:
            while len(buf) - pos >= HEADER.size:
                code, length = HEADER.unpack_from(buf, pos)
                kind = _KINDS.get(code)
                if kind is None:
                    raise UnknownKindError(code)
                if length > self.max_payload:
                    raise FrameTooLongError(length, self.max_payload)
                end = pos + HEADER.size + length
                if len(buf) < end:
                    break
                frames.append(Frame(kind, bytes(buf[pos + HEADER.size:end])))
                pos = end
        except AudioSocketError as exc:
            self._failed = exc
            buf.clear()
            raise
        del buf[:pos]
        return frames
