"""RTCP (RFC 3550 §6): SR, RR, SDES and BYE packets, compound packets, reception statistics.

Packet types we do not interpret (APP, RTPFB, PSFB, XR, ...) are kept raw as RtcpUnknown
so a compound packet survives a parse/build round trip. RTCP padding (P bit) is removed
on parse and never written on build.

ReceptionStats is the receiver side of RFC 3550 Appendix A.1 (sequence validation with
probation and restart), A.3 (expected, cumulative and fractional loss) and A.8
(interarrival jitter, integer form).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from media.seqnum import SEQ_MASK, SEQ_MOD, TS_MASK, ts_diff

__all__ = [
    "Bye",
    "ReceiverReport",
    "ReceptionStats",
    "ReportBlock",
    "RtcpError",
    "RtcpPacket",
    "RtcpUnknown",
    "Sdes",
    "SdesChunk",
    "SenderReport",
    "build_compound",
    "ntp_from_unix",
    "ntp_middle",
    "parse_compound",
]

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
SDES_CNAME = 1

_COMMON = struct.Struct("!BBH")  # V/P/count, packet type, length in words minus one
_SSRC = struct.Struct("!I")
_SENDER_INFO = struct.Struct("!IQIII")  # SSRC, NTP timestamp, RTP timestamp, counts
_BLOCK = struct.Struct("!IIIIII")
_SSRCS = tuple(struct.Struct(f"!{n}I") for n in range(32))
NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01


class RtcpError(ValueError):
    """A malformed RTCP packet, or fields that cannot be encoded."""


def _header(packet_type: int, count: int, body_len: int, padded: bool = False) -> bytes:
    if not 0 <= count <= 31:
        raise RtcpError(f"RTCP count field must be 0..31, got {count}")
    if body_len % 4:
        raise RtcpError(f"RTCP body must be whole 32-bit words, got {body_len} bytes")
    words = body_len // 4  # total length in words minus one = body words
    if words > 0xFFFF:
        raise RtcpError(f"RTCP packet too long: {body_len + 4} bytes")
    return _COMMON.pack(0xA0 | count if padded else 0x80 | count, packet_type, words)


def _split(data: bytes, expected_type: int | None = None) -> tuple[int, int, bytes]:
    """Check one whole RTCP packet; return (count, packet type, body without padding)."""
    size = len(data)
    if size < 4:
        raise RtcpError(f"RTCP packet too short: {size} bytes, the header needs 4")
    b0, packet_type, words = _COMMON.unpack_from(data)
    if b0 >> 6 != 2:
        raise RtcpError(f"RTCP version must be 2, got {b0 >> 6}")
    if expected_type is not None and packet_type != expected_type:
        raise RtcpError(f"expected RTCP packet type {expected_type}, got {packet_type}")
    length = 4 * (words + 1)
    if length != size:
        raise RtcpError(f"RTCP length field says {length} bytes, packet has {size}")
    end = size
    if b0 & 0x20:
        padding = data[-1]
        if padding == 0:
            raise RtcpError("RTCP padding count is 0")
        if padding > size - 4:
            raise RtcpError(f"RTCP padding count {padding} is larger than the {size - 4}-byte body")
        end -= padding
    return b0 & 0x1F, packet_type, data[4:end]


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report (RFC 3550 §6.4.1)."""

    ssrc: int
    fraction_lost: int  # lost fraction since the last report, times 256
    cumulative_lost: int  # signed 24 bit: duplicates can make it negative
    highest_sequence: int  # extended highest sequence number received
    jitter: int  # interarrival jitter, RTP timestamp units
    lsr: int = 0  # middle 32 bits of the NTP timestamp of the last SR received
    dlsr: int = 0  # delay since that SR, in 1/65536 s

    SIZE: ClassVar[int] = 24

    @classmethod
    def parse(cls, data: bytes) -> ReportBlock:
        if len(data) != cls.SIZE:
            raise RtcpError(f"RTCP report block must be 24 bytes, got {len(data)}")
        return _unpack_block(data, 0)

    def __bytes__(self) -> bytes:
        if not 0 <= self.fraction_lost <= 0xFF:
            raise RtcpError(f"fraction lost must be 0..255, got {self.fraction_lost}")
        if not -0x800000 <= self.cumulative_lost <= 0x7FFFFF:
            raise RtcpError(f"cumulative lost must fit 24 signed bits, got {self.cumulative_lost}")
        loss = (self.fraction_lost << 24) | (self.cumulative_lost & 0xFFFFFF)
        try:
            return _BLOCK.pack(
                self.ssrc, loss, self.highest_sequence, self.jitter, self.lsr, self.dlsr
            )
        except struct.error as exc:
            raise RtcpError(f"report block field out of 32-bit range: {self}") from exc


def _unpack_block(data: bytes, offset: int) -> ReportBlock:
    ssrc, loss, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, offset)
    lost = loss & 0xFFFFFF
    if lost & 0x800000:
        lost -= 0x1000000
    return ReportBlock(ssrc, loss >> 24, lost, highest, jitter, lsr, dlsr)


def _parse_blocks(body: bytes, offset: int, count: int, kind: str) -> tuple[ReportBlock, ...]:
    end = offset + count * ReportBlock.SIZE
    if end > len(body):
        raise RtcpError(
            f"RTCP {kind} with {count} report blocks needs a {end}-byte body, has {len(body)}"
        )
    return tuple(_unpack_block(body, offset + i * ReportBlock.SIZE) for i in range(count))


def _pack_blocks(reports: tuple[ReportBlock, ...]) -> bytes:
    return b"".join(bytes(block) for block in reports)


def _check_extension(extension: bytes, kind: str) -> bytes:
    if len(extension) % 4:
        raise RtcpError(
            f"RTCP {kind} profile extension must be whole 32-bit words, got {len(extension)} bytes"
        )
    return extension


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp_timestamp: int  # 64-bit NTP time: seconds since 1900 << 32 | fraction
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""  # profile-specific extension, kept raw

    PACKET_TYPE: ClassVar[int] = RTCP_SR

    @classmethod
    def parse(cls, data: bytes) -> SenderReport:
        count, _, body = _split(data, RTCP_SR)
        if len(body) < _SENDER_INFO.size:
            raise RtcpError(f"RTCP SR body too short: {len(body)} bytes, sender info needs 24")
        ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(body)
        reports = _parse_blocks(body, _SENDER_INFO.size, count, "SR")
        extension = _check_extension(body[_SENDER_INFO.size + count * ReportBlock.SIZE :], "SR")
        return cls(ssrc, ntp, rtp_ts, packets, octets, reports, extension)

    def __bytes__(self) -> bytes:
        _check_extension(self.extension, "SR")
        try:
            info = _SENDER_INFO.pack(
                self.ssrc,
                self.ntp_timestamp,
                self.rtp_timestamp,
                self.packet_count,
                self.octet_count,
            )
        except struct.error as exc:
            raise RtcpError(f"RTCP SR field out of range: {exc}") from exc
        body = info + _pack_blocks(self.reports) + self.extension
        return _header(RTCP_SR, len(self.reports), len(body)) + body


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    PACKET_TYPE: ClassVar[int] = RTCP_RR

    @classmethod
    def parse(cls, data: bytes) -> ReceiverReport:
        count, _, body = _split(data, RTCP_RR)
        if len(body) < 4:
            raise RtcpError(f"RTCP RR body too short: {len(body)} bytes, the SSRC needs 4")
        (ssrc,) = _SSRC.unpack_from(body)
        reports = _parse_blocks(body, 4, count, "RR")
        return cls(ssrc, reports, _check_extension(body[4 + count * ReportBlock.SIZE :], "RR"))

    def __bytes__(self) -> bytes:
        _check_extension(self.extension, "RR")
        try:
            ssrc = _SSRC.pack(self.ssrc)
        except struct.error as exc:
            raise RtcpError(f"RTCP RR SSRC out of range: {self.ssrc}") from exc
        body = ssrc + _pack_blocks(self.reports) + self.extension
        return _header(RTCP_RR, len(self.reports), len(body)) + body


@dataclass(frozen=True, slots=True)
class SdesChunk:
    ssrc: int
    items: tuple[tuple[int, bytes], ...] = ()  # (item type, value); CNAME is type 1


@dataclass(frozen=True, slots=True)
class Sdes:
    chunks: tuple[SdesChunk, ...] = ()

    PACKET_TYPE: ClassVar[int] = RTCP_SDES

    @classmethod
    def cname(cls, ssrc: int, cname: str) -> Sdes:
        """The SDES every compound RTCP packet must carry (RFC 3550 §6.1)."""
        return cls((SdesChunk(ssrc, ((SDES_CNAME, cname.encode()),)),))

    @classmethod
    def parse(cls, data: bytes) -> Sdes:
        count, _, body = _split(data, RTCP_SDES)
        chunks = []
        offset = 0
        size = len(body)
        for _ in range(count):
            if offset + 4 > size:
                raise RtcpError(f"RTCP SDES chunk at byte {offset} runs past the end")
            (ssrc,) = _SSRC.unpack_from(body, offset)
            offset += 4
            items = []
            while True:
                if offset >= size:
                    raise RtcpError("RTCP SDES chunk has no END item")
                item_type = body[offset]
                if item_type == 0:
                    offset = (offset + 4) & ~3  # END, then null octets to the word boundary
                    break
                if offset + 2 > size or offset + 2 + body[offset + 1] > size:
                    raise RtcpError(f"RTCP SDES item at byte {offset} runs past the end")
                length = body[offset + 1]
                items.append((item_type, body[offset + 2 : offset + 2 + length]))
                offset += 2 + length
            chunks.append(SdesChunk(ssrc, tuple(items)))
        return cls(tuple(chunks))

    def __bytes__(self) -> bytes:
        parts = []
        for chunk in self.chunks:
            try:
                parts.append(_SSRC.pack(chunk.ssrc))
            except struct.error as exc:
                raise RtcpError(f"RTCP SDES SSRC out of range: {chunk.ssrc}") from exc
            length = 0
            for item_type, value in chunk.items:
                if not 1 <= item_type <= 0xFF or len(value) > 0xFF:
                    raise RtcpError(f"bad SDES item: type {item_type}, {len(value)} bytes")
                parts.append(bytes((item_type, len(value))) + value)
                length += 2 + len(value)
            parts.append(bytes(4 - length % 4))  # END plus null padding, 1..4 octets
        body = b"".join(parts)
        return _header(RTCP_SDES, len(self.chunks), len(body)) + body


@dataclass(frozen=True, slots=True)
class Bye:
    sources: tuple[int, ...]
    reason: bytes = b""  # UTF-8 text; empty means no reason given

    PACKET_TYPE: ClassVar[int] = RTCP_BYE

    @classmethod
    def parse(cls, data: bytes) -> Bye:
        count, _, body = _split(data, RTCP_BYE)
        end = 4 * count
        if end > len(body):
            raise RtcpError(f"RTCP BYE with {count} sources needs {end} bytes, has {len(body)}")
        sources = _SSRCS[count].unpack_from(body)
        reason = b""
        if end < len(body):
            length = body[end]
            if end + 1 + length > len(body):
                raise RtcpError(f"RTCP BYE reason of {length} bytes runs past the end")
            reason = body[end + 1 : end + 1 + length]
        return cls(sources, reason)

    def __bytes__(self) -> bytes:
        count = len(self.sources)
        if count > 31 or len(self.reason) > 0xFF:
            raise RtcpError(f"RTCP BYE: {count} sources / {len(self.reason)}-byte reason")
        try:
            body = _SSRCS[count].pack(*self.sources)
        except struct.error as exc:
            raise RtcpError(f"RTCP BYE SSRC out of range: {self.sources}") from exc
        if self.reason:
            text = bytes((len(self.reason),)) + self.reason
            body += text + bytes(-len(text) % 4)
        return _header(RTCP_BYE, count, len(body)) + body


@dataclass(frozen=True, slots=True)
class RtcpUnknown:
    """Any other packet type (APP, RTPFB, PSFB, XR, ...), kept raw. A body that is not
    whole words (only possible after padding was removed) is padded again on build."""

    packet_type: int
    count: int  # the 5-bit field: report count, subtype or FMT
    body: bytes

    @classmethod
    def parse(cls, data: bytes) -> RtcpUnknown:
        count, packet_type, body = _split(data)
        return cls(packet_type, count, body)

    def __bytes__(self) -> bytes:
        if not 0 <= self.packet_type <= 0xFF:
            raise RtcpError(f"RTCP packet type must be 0..255, got {self.packet_type}")
        body = self.body
        padding = -len(body) % 4
        if not padding:
            return _header(self.packet_type, self.count, len(body)) + body
        body += bytes(padding - 1) + bytes((padding,))
        return _header(self.packet_type, self.count, len(body), padded=True) + body


RtcpPacket = SenderReport | ReceiverReport | Sdes | Bye | RtcpUnknown

_PARSERS = {
    RTCP_SR: SenderReport.parse,
    RTCP_RR: ReceiverReport.parse,
    RTCP_SDES: Sdes.parse,
    RTCP_BYE: Bye.parse,
}


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Split a compound RTCP packet (one UDP datagram) and parse each part."""
    data = bytes(data)
    if not data:
        raise RtcpError("empty RTCP packet")
    packets: list[RtcpPacket] = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise RtcpError(f"RTCP header at byte {offset} is truncated")
        _, packet_type, words = _COMMON.unpack_from(data, offset)
        end = offset + 4 * (words + 1)
        if end > len(data):
            raise RtcpError(
                f"RTCP packet at byte {offset} says {end - offset} bytes, "
                f"only {len(data) - offset} left"
            )
        parser = _PARSERS.get(packet_type, RtcpUnknown.parse)
        packets.append(parser(data[offset:end]))
        offset = end
    return packets


def build_compound(packets: list[RtcpPacket] | tuple[RtcpPacket, ...]) -> bytes:
    return b"".join(bytes(packet) for packet in packets)


def ntp_from_unix(unix_seconds: float) -> int:
    """64-bit NTP timestamp for a wall-clock time the caller read (we never read it here)."""
    seconds = unix_seconds + NTP_UNIX_OFFSET
    whole = int(seconds // 1)
    fraction = round((seconds - whole) * (1 << 32))
    return ((whole << 32) + fraction) & 0xFFFF_FFFF_FFFF_FFFF


def ntp_middle(ntp_timestamp: int) -> int:
    """The middle 32 bits of an NTP timestamp: the LSR field of a report block."""
    return (ntp_timestamp >> 16) & 0xFFFFFFFF


class ReceptionStats:
    """Statistics about one source (SSRC) we receive, for our report block about it.

    `min_sequential` is A.1's MIN_SEQUENTIAL: packets in a row needed before a new
    source is accepted (the earlier ones are not counted). Pass 1 to accept the first
    packet at once.
    """

    MAX_DROPOUT = 3000
    MAX_MISORDER = 100

    def __init__(self, min_sequential: int = 2) -> None:
        self._min_sequential = max(1, min_sequential)
        self._seen = False  # any packet, valid or not
        self._valid = False  # past probation
        self._probation = self._min_sequential
        self._max_seq = 0
        self._cycles = 0  # counted in units of SEQ_MOD, as in A.1
        self._base_seq = 0
        self._bad_seq = SEQ_MOD + 1
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._transit: int | None = None
        self._jitter_q4 = 0  # jitter scaled by 16 (A.8 integer form)
        self._lsr = 0
        self._lsr_arrival: float | None = None

    def _init_seq(self, seq: int) -> None:
        self._base_seq = seq
        self._max_seq = seq
        self._bad_seq = SEQ_MOD + 1
        self._cycles = 0
        self._received = 0
        self._received_prior = 0
        self._expected_prior = 0
        self._transit = None  # a restarted sender restarts its timestamps too

    def _update_seq(self, seq: int) -> bool:
        """RFC 3550 A.1 update_seq(): False when the packet is not (yet) valid."""
        if not self._seen:
            self._seen = True
            self._init_seq(seq)
            self._max_seq = (seq - 1) & SEQ_MASK
            self._probation = self._min_sequential
        udelta = (seq - self._max_seq) & SEQ_MASK
        if self._probation:
            if seq == (self._max_seq + 1) & SEQ_MASK:
                self._probation -= 1
                self._max_seq = seq
                if self._probation == 0:
                    self._init_seq(seq)
                    self._valid = True
                    self._received += 1
                    return True
            else:
                self._probation = self._min_sequential - 1
                self._max_seq = seq
            return False
        if udelta < self.MAX_DROPOUT:
            if seq < self._max_seq:
                self._cycles += SEQ_MOD  # wrapped
            self._max_seq = seq
        elif udelta <= SEQ_MOD - self.MAX_MISORDER:
            if seq != self._bad_seq:
                self._bad_seq = (seq + 1) & SEQ_MASK
                return False
            self._init_seq(seq)  # two sequential packets after a big jump: restart
        # else: duplicate or reordered packet, counted as received (A.3)
        self._received += 1
        return True

    def update(self, seq: int, rtp_timestamp: int, arrival_seconds: float, clock_rate: int) -> bool:
        """Account for one received packet. Returns False if A.1 does not accept it yet
        (probation, or the first packet after a large sequence jump)."""
        if not self._update_seq(seq):
            return False
        arrival = round(arrival_seconds * clock_rate)
        transit = (arrival - rtp_timestamp) & TS_MASK
        if self._transit is not None:
            # A.8 on 32-bit wrapping integers, as the C code's unsigned arithmetic does.
            d = abs(ts_diff(transit, self._transit))
            self._jitter_q4 += d - ((self._jitter_q4 + 8) >> 4)
        self._transit = transit
        return True

    def note_sender_report(self, ntp_timestamp: int, arrival_seconds: float) -> None:
        """Record the source's latest SR, for the LSR and DLSR fields."""
        self._lsr = ntp_middle(ntp_timestamp)
        self._lsr_arrival = arrival_seconds

    @property
    def received(self) -> int:
        return self._received

    @property
    def extended_max(self) -> int:
        return self._cycles + self._max_seq if self._valid else 0

    @property
    def expected(self) -> int:
        if not self._valid:
            return 0
        return self._cycles + self._max_seq - self._base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative packets lost, clamped to 24 signed bits (negative with duplicates)."""
        return max(-0x800000, min(0x7FFFFF, self.expected - self._received))

    @property
    def fraction_lost(self) -> int:
        """Loss since the last report_block(), as a fraction times 256."""
        expected_interval = self.expected - self._expected_prior
        lost_interval = expected_interval - (self._received - self._received_prior)
        if expected_interval == 0 or lost_interval <= 0:
            return 0
        return (lost_interval << 8) // expected_interval

    @property
    def jitter(self) -> int:
        """Interarrival jitter in RTP timestamp units."""
        return self._jitter_q4 >> 4

    def report_block(self, ssrc: int, now: float | None = None) -> ReportBlock:
        """The report block about source `ssrc`; starts a new fraction-lost interval.
        `now` (same clock as the arrivals) gives DLSR; without it DLSR is 0."""
        fraction = self.fraction_lost
        self._expected_prior = self.expected
        self._received_prior = self._received
        dlsr = 0
        if now is not None and self._lsr_arrival is not None:
            dlsr = max(0, min(0xFFFFFFFF, round((now - self._lsr_arrival) * 65536)))
        return ReportBlock(
            ssrc=ssrc,
            fraction_lost=fraction,
            cumulative_lost=self.lost,
            highest_sequence=self.extended_max & 0xFFFFFFFF,
            jitter=min(self.jitter, 0xFFFFFFFF),
            lsr=self._lsr,
            dlsr=dlsr,
        )
