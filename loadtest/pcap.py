"""Classic pcap files of RTP streams, for SIPp's `play_pcap_audio` and load tests.

SIPp replays the UDP payloads of a capture with the capture's timing, from its own media
port to the far end's, so only the payloads and timestamps matter; the Ethernet, IPv4
and UDP headers just have to be well formed (SIPp checks the link type and the IP and
UDP lengths). Classic pcap (not pcapng), link type 1 (Ethernet), microsecond timestamps.

Pure helpers (bytes in, bytes out) plus `write_pcap`/`read_pcap` on a binary file, and
`pcm_to_rtp` that cuts 8 kHz PCM into 20 ms G.711 RTP packets.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from media.g711 import alaw_encode, ulaw_encode
from media.rtp import RtpPacket

__all__ = [
    "PcapError",
    "PcapRecord",
    "pcm_to_rtp",
    "read_pcap",
    "udp_frame",
    "write_pcap",
    "write_rtp_pcap",
]

LINKTYPE_ETHERNET = 1
_MAGIC = 0xA1B2C3D4
_GLOBAL = struct.Struct("<IHHiIII")  # magic, major, minor, thiszone, sigfigs, snaplen, network
_RECORD = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len
_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_ETHERTYPE_IPV4 = 0x0800
_PROTO_UDP = 17
_SNAPLEN = 65535
_SRC_MAC = bytes.fromhex("020000000001")  # locally administered
_DST_MAC = bytes.fromhex("020000000002")


class PcapError(ValueError):
    """A malformed capture, or a frame that cannot be encoded."""


@dataclass(frozen=True, slots=True)
class PcapRecord:
    time: float  # seconds since the epoch of the capture (only differences matter)
    frame: bytes  # the link-layer frame (Ethernet)


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(
    payload: bytes,
    src: tuple[str, int] = ("192.0.2.1", 6000),
    dst: tuple[str, int] = ("192.0.2.2", 7000),
) -> bytes:
    """An Ethernet/IPv4/UDP frame carrying `payload` (UDP checksum 0: not computed)."""
    udp_len = _UDP.size + len(payload)
    total = _IPV4.size + udp_len
    if total > 0xFFFF:
        raise PcapError(f"UDP payload of {len(payload)} bytes does not fit one IPv4 packet")
    src_ip = ipaddress.IPv4Address(src[0]).packed
    dst_ip = ipaddress.IPv4Address(dst[0]).packed
    ip = _IPV4.pack(0x45, 0, total, 0, 0x4000, 64, _PROTO_UDP, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    udp = _UDP.pack(src[1], dst[1], udp_len, 0)
    return _ETH.pack(_DST_MAC, _SRC_MAC, _ETHERTYPE_IPV4) + ip + udp + payload


def udp_payload(frame: bytes) -> bytes:
    """The UDP payload of an Ethernet/IPv4/UDP frame (the inverse of udp_frame)."""
    if len(frame) < _ETH.size + _IPV4.size + _UDP.size:
        raise PcapError(f"frame of {len(frame)} bytes is too short for Ethernet/IPv4/UDP")
    _, _, ethertype = _ETH.unpack_from(frame)
    if ethertype != _ETHERTYPE_IPV4:
        raise PcapError(f"ethertype 0x{ethertype:04x} is not IPv4")
    ver_ihl, _, total, _, _, _, proto, _, _, _ = _IPV4.unpack_from(frame, _ETH.size)
    ihl = (ver_ihl & 0x0F) * 4
    if proto != _PROTO_UDP:
        raise PcapError(f"IP protocol {proto} is not UDP")
    start = _ETH.size + ihl
    _, _, udp_len, _ = _UDP.unpack_from(frame, start)
    end = start + udp_len
    if udp_len < _UDP.size or end > len(frame) or _ETH.size + total > len(frame):
        raise PcapError(f"UDP length {udp_len} runs past the {len(frame)}-byte frame")
    return frame[start + _UDP.size:end]


def write_pcap(out: BinaryIO, records: Iterable[PcapRecord]) -> int:
    """Write a classic little-endian pcap; returns the number of records written."""
    out.write(_GLOBAL.pack(_MAGIC, 2, 4, 0, 0, _SNAPLEN, LINKTYPE_ETHERNET))
    count = 0
    for rec in records:
        if rec.time < 0:
            raise PcapError(f"pcap timestamps cannot be negative, got {rec.time}")
        micros = round(rec.time * 1_000_000)
        sec, usec = divmod(micros, 1_000_000)
        size = len(rec.frame)
        out.write(_RECORD.pack(sec, usec, min(size, _SNAPLEN), size))
        out.write(rec.frame[:_SNAPLEN])
        count += 1
    return count


def read_pcap(data: bytes) -> Iterator[PcapRecord]:
    """Records of a classic pcap (either byte order, microsecond resolution, Ethernet)."""
    if len(data) < _GLOBAL.size:
        raise PcapError(f"pcap too short for its {_GLOBAL.size}-byte global header")
    (magic,) = struct.unpack_from("<I", data)
    if magic == _MAGIC:
        order = "<"
    elif magic == 0xD4C3B2A1:
        order = ">"
    else:
        raise PcapError(f"not a classic microsecond pcap (magic 0x{magic:08x})")
    glob = struct.Struct(order + "IHHiIII")
    rec = struct.Struct(order + "IIII")
    network = glob.unpack_from(data)[6]
    if network != LINKTYPE_ETHERNET:
        raise PcapError(f"link type {network} is not Ethernet (1)")
    offset = glob.size
    while offset < len(data):
        if offset + rec.size > len(data):
            raise PcapError(f"record header at byte {offset} is truncated")
        sec, usec, incl, _ = rec.unpack_from(data, offset)
        offset += rec.size
        if offset + incl > len(data):
            raise PcapError(f"record at byte {offset} claims {incl} bytes past the end")
        yield PcapRecord(sec + usec / 1_000_000, data[offset:offset + incl])
        offset += incl


def pcm_to_rtp(
    pcm: bytes,
    codec: str = "PCMU",
    *,
    ssrc: int = 0x5EED0001,
    first_sequence: int = 1,
    first_timestamp: int = 0,
) -> list[RtpPacket]:
    """Cut 8 kHz int16 mono PCM into 20 ms G.711 packets (the last one padded with
    silence); the first packet carries the marker bit (start of a talk spurt)."""
    encode = {"PCMU": ulaw_encode, "PCMA": alaw_encode}.get(codec)
    if encode is None:
        raise PcapError(f"codec {codec!r} is not PCMU or PCMA")
    payload_type = 0 if codec == "PCMU" else 8
    frame = 320  # 160 samples of int16
    if len(pcm) % frame:
        pcm += bytes(frame - len(pcm) % frame)
    packets = []
    for n in range(len(pcm) // frame):
        packets.append(RtpPacket(
            payload_type,
            (first_sequence + n) & 0xFFFF,
            (first_timestamp + 160 * n) & 0xFFFFFFFF,
            ssrc,
            encode(pcm[n * frame:(n + 1) * frame]),
            marker=n == 0,
        ))
    return packets


def write_rtp_pcap(
    path: str | Path,
    packets: Iterable[RtpPacket],
    *,
    ptime: float = 0.020,
    start: float = 1_700_000_000.0,
    src: tuple[str, int] = ("192.0.2.1", 6000),
    dst: tuple[str, int] = ("192.0.2.2", 7000),
) -> int:
    """Write RTP packets one `ptime` apart as a pcap SIPp can play; returns the count."""
    records = (
        PcapRecord(start + n * ptime, udp_frame(bytes(p), src, dst))
        for n, p in enumerate(packets)
    )
    with open(path, "wb") as out:
        return write_pcap(out, records)
