"""RTP data packets (RFC 3550 §5.1): parse and build, with CSRCs, header extension and padding.

This runs for every packet of every call, so the common case (version 2, no padding, no
extension, no CSRCs) takes a short path: one precompiled unpack and one slice.

Padding octets other than the final count are rebuilt as zeros; RFC 3550 leaves their
value open but every sender we know of writes zeros, so `bytes(RtpPacket.parse(b)) == b`
holds for them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["RtpError", "RtpExtension", "RtpPacket", "is_rtcp", "plain_packet"]

RTP_VERSION = 2
HEADER_SIZE = 12
MAX_CSRCS = 15

_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")
_CSRCS = tuple(struct.Struct(f"!{n}I") for n in range(MAX_CSRCS + 1))

_PLAIN_V2 = 0x80  # first octet of a version-2 packet with no P, X or CC


class RtpError(ValueError):
    """A malformed RTP packet, or fields that cannot be encoded."""


@dataclass(frozen=True, slots=True)
class RtpExtension:
    """The RFC 3550 §5.3.1 header extension, kept raw.

    `profile` is the 16-bit "defined by profile" word (0xBEDE for RFC 8285 one-byte
    elements, 0x100x for two-byte ones); `data` is a whole number of 32-bit words.
    """

    profile: int
    data: bytes


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: RtpExtension | None = None
    # Number of padding octets including the final count octet; 0 = P bit clear.
    padding: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        if type(data) is not bytes:
            data = bytes(data)
        size = len(data)
        if size < HEADER_SIZE:
            raise RtpError(f"RTP packet too short: {size} bytes, the fixed header needs 12")
        b0, b1, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        if b0 == _PLAIN_V2 and cls is RtpPacket:
            return _plain_packet(b1, sequence, timestamp, ssrc, data[HEADER_SIZE:])

        version = b0 >> 6
        if version != RTP_VERSION:
            raise RtpError(f"RTP version must be 2, got {version}")
        offset = HEADER_SIZE
        csrcs: tuple[int, ...] = ()
        count = b0 & 0x0F
        if count:
            end = offset + 4 * count
            if end > size:
                raise RtpError(
                    f"RTP CSRC list runs past the end: CC={count} needs {end} bytes, "
                    f"packet has {size}"
                )
            csrcs = _CSRCS[count].unpack_from(data, offset)
            offset = end

        extension = None
        if b0 & 0x10:
            if offset + 4 > size:
                raise RtpError(
                    f"RTP header extension header runs past the end: needs {offset + 4} "
                    f"bytes, packet has {size}"
                )
            profile, words = _EXT_HEADER.unpack_from(data, offset)
            start = offset + 4
            offset = start + 4 * words
            if offset > size:
                raise RtpError(
                    f"RTP header extension length runs past the end: {words} words need "
                    f"{offset} bytes, packet has {size}"
                )
            extension = RtpExtension(profile, data[start:offset])

        padding = 0
        end = size
        if b0 & 0x20:
            padding = data[-1]
            if padding == 0:
                raise RtpError("RTP padding count is 0")
            if padding > size - offset:
                raise RtpError(
                    f"RTP padding count {padding} is larger than the {size - offset} bytes "
                    "after the header"
                )
            end = size - padding
        return cls(
            b1 & 0x7F,
            sequence,
            timestamp,
            ssrc,
            data[offset:end],
            b1 > 0x7F,
            csrcs,
            extension,
            padding,
        )

    def __bytes__(self) -> bytes:
        pt = self.payload_type
        if not 0 <= pt <= 0x7F:
            raise RtpError(f"RTP payload type must be 0..127, got {pt}")
        if not 0 <= self.sequence <= 0xFFFF:
            raise RtpError(f"RTP sequence must be 0..65535, got {self.sequence}")
        if not 0 <= self.timestamp <= 0xFFFFFFFF:
            raise RtpError(f"RTP timestamp must be a 32-bit unsigned value, got {self.timestamp}")
        if not 0 <= self.ssrc <= 0xFFFFFFFF:
            raise RtpError(f"RTP SSRC must be a 32-bit unsigned value, got {self.ssrc}")
        b1 = pt | 0x80 if self.marker else pt
        csrcs = self.csrcs
        extension = self.extension
        padding = self.padding
        if not csrcs and extension is None and not padding:
            return (
                _HEADER.pack(_PLAIN_V2, b1, self.sequence, self.timestamp, self.ssrc) + self.payload
            )

        count = len(csrcs)
        if count > MAX_CSRCS:
            raise RtpError(f"RTP allows at most 15 CSRCs, got {count}")
        if not 0 <= padding <= 0xFF:
            raise RtpError(f"RTP padding must be 0..255 bytes, got {padding}")
        b0 = _PLAIN_V2 | count
        if padding:
            b0 |= 0x20
        if extension is not None:
            b0 |= 0x10
        parts = [_HEADER.pack(b0, b1, self.sequence, self.timestamp, self.ssrc)]
        if count:
            try:
                parts.append(_CSRCS[count].pack(*csrcs))
            except struct.error as exc:
                raise RtpError(f"RTP CSRCs must be 32-bit unsigned values: {csrcs}") from exc
        if extension is not None:
            parts.append(_pack_extension(extension))
        parts.append(self.payload)
        if padding:
            parts.append(bytes(padding - 1) + bytes((padding,)))
        return b"".join(parts)


# The frozen dataclass __init__ costs about as much as the whole parse, so the common
# case fills the slots directly through their descriptors: roughly half the time.
_new = object.__new__
_set_payload_type = RtpPacket.payload_type.__set__  # type: ignore[attr-defined]
_set_sequence = RtpPacket.sequence.__set__  # type: ignore[attr-defined]
_set_timestamp = RtpPacket.timestamp.__set__  # type: ignore[attr-defined]
_set_ssrc = RtpPacket.ssrc.__set__  # type: ignore[attr-defined]
_set_payload = RtpPacket.payload.__set__  # type: ignore[attr-defined]
_set_marker = RtpPacket.marker.__set__  # type: ignore[attr-defined]
_set_csrcs = RtpPacket.csrcs.__set__  # type: ignore[attr-defined]
_set_extension = RtpPacket.extension.__set__  # type: ignore[attr-defined]
_set_padding = RtpPacket.padding.__set__  # type: ignore[attr-defined]


def _plain_packet(b1: int, sequence: int, timestamp: int, ssrc: int, payload: bytes) -> RtpPacket:
    packet = _new(RtpPacket)
    _set_payload_type(packet, b1 & 0x7F)
    _set_sequence(packet, sequence)
    _set_timestamp(packet, timestamp)
    _set_ssrc(packet, ssrc)
    _set_payload(packet, payload)
    _set_marker(packet, b1 > 0x7F)
    _set_csrcs(packet, ())
    _set_extension(packet, None)
    _set_padding(packet, 0)
    return packet


def plain_packet(
    payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes
) -> RtpPacket:
    """RtpPacket(payload_type, sequence, timestamp, ssrc, payload) (no marker, CSRCs,
    extension or padding) without the dataclass __init__: the stream doors make one per
    20 ms frame. payload_type must be 0..127."""
    return _plain_packet(payload_type, sequence, timestamp, ssrc, payload)


def _pack_extension(extension: RtpExtension) -> bytes:
    if not 0 <= extension.profile <= 0xFFFF:
        raise RtpError(f"RTP extension profile must be 16 bits, got {extension.profile}")
    length = len(extension.data)
    if length % 4:
        raise RtpError(f"RTP extension data must be whole 32-bit words, got {length} bytes")
    if length > 4 * 0xFFFF:
        raise RtpError(f"RTP extension data too long: {length} bytes")
    return _EXT_HEADER.pack(extension.profile, length // 4) + extension.data


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 §4 demultiplexing of RTP and RTCP on one port.

    The RTCP packet type sits where RTP has marker + payload type; RTCP types are
    192..223 (SR=200, RR=201, SDES, BYE, APP, RTPFB, PSFB, XR, ...), which RTP could only
    produce with a payload type of 64..95, which RFC 5761 forbids when multiplexing.
    """
    return len(data) >= 2 and 192 <= data[1] <= 223


def _benchmark() -> None:
    """`python -m media.rtp`: µs per parse and per build of a 172-byte PCMU packet."""
    import statistics
    import timeit

    packet = RtpPacket(0, 1234, 567_890, 0xDEADBEEF, b"\xff" * 160, marker=True)
    data = bytes(packet)
    full = RtpPacket(96, 1, 2, 3, b"\xff" * 160, False, (4, 5), RtpExtension(0xBEDE, bytes(8)), 4)
    full_data = bytes(full)
    number = 100_000
    cases = [
        ("parse 172-byte PCMU", lambda: RtpPacket.parse(data)),
        ("build 172-byte PCMU", lambda: bytes(packet)),
        (f"parse {len(full_data)}-byte CSRC+ext+padding", lambda: RtpPacket.parse(full_data)),
        (f"build {len(full_data)}-byte CSRC+ext+padding", lambda: bytes(full)),
    ]
    for name, func in cases:
        runs = [t / number * 1e6 for t in timeit.repeat(func, number=number, repeat=7)]
        print(f"{name:36s} best {min(runs):.3f} µs  median {statistics.median(runs):.3f} µs")


if __name__ == "__main__":
    _benchmark()
