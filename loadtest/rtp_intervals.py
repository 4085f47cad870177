"""Pacing quality of Switchboard's outbound RTP, from a capture of what it sent.

A stream is one (source port, destination port, SSRC). Within a stream, each captured
packet is compared with the previous one of the stream: when the sequence number moved
on by k (1 normally, more after a loss), the packet should have followed k * ptime
later, and |interval - k * ptime| is its jitter. k - 1 packets are counted lost, a
sequence number that does not move forward is counted as reordered (or duplicated) and
skipped. The jitter of all streams is pooled into p50/p95/p99/max.

The capture is a classic pcap on an Ethernet link (Linux `lo` captured by dumpcap -P);
frames may be cut short by a snap length, since only the IPv4, UDP and first 12 RTP
bytes are read. RTCP, non-UDP and non-RTP frames are skipped and counted.

Pure: bytes or values in, a report out; no I/O.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from loadtest.pcap import PcapError, read_pcap
from media.seqnum import seq_diff

__all__ = [
    "CaptureError",
    "IntervalAnalyzer",
    "IntervalReport",
    "analyse_frames",
    "analyse_pcap",
    "rtp_fields",
]

PTIME = 0.020
_ETH = struct.Struct("!12xH")  # destination and source MAC skipped, ethertype
_IPV4 = struct.Struct("!B8xB")  # version/IHL, ..., protocol
_UDP_PORTS = struct.Struct("!HH")
_RTP = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC
_ETHERTYPE_IPV4 = 0x0800
_PROTO_UDP = 17
_UDP_HEADER = 8
_RTP_HEADER = 12
_RTCP_TYPES = range(200, 205)  # SR, RR, SDES, BYE, APP: second byte of an RTCP packet
_MAX_GAP = 1000  # a jump further than this is a new stream's numbering, not a loss

StreamKey = tuple[int, int, int]  # source port, destination port, SSRC


class CaptureError(PcapError):
    """A capture that cannot be read as classic Ethernet pcap, or a bad argument."""


def rtp_fields(frame: bytes) -> tuple[int, int, int, int] | None:
    """(source port, destination port, SSRC, sequence) of an Ethernet/IPv4/UDP/RTP frame;
    None for anything else (RTCP, other protocols, a frame too short for the headers)."""
    if len(frame) < _ETH.size + 20:
        return None
    (ethertype,) = _ETH.unpack_from(frame)
    if ethertype != _ETHERTYPE_IPV4:
        return None
    ver_ihl, proto = _IPV4.unpack_from(frame, _ETH.size)
    if ver_ihl >> 4 != 4 or proto != _PROTO_UDP:
        return None
    udp = _ETH.size + (ver_ihl & 0x0F) * 4
    rtp = udp + _UDP_HEADER
    if len(frame) < rtp + _RTP_HEADER:
        return None
    src, dst = _UDP_PORTS.unpack_from(frame, udp)
    b0, b1, seq, _, ssrc = _RTP.unpack_from(frame, rtp)
    if b0 >> 6 != 2 or b1 in _RTCP_TYPES:
        return None
    return src, dst, ssrc, seq


@dataclass(frozen=True, slots=True)
class IntervalReport:
    """Pooled over every stream. Times in milliseconds; None when there was no interval."""

    streams: int
    packets: int  # RTP packets of the analysed streams (inside the window, if any)
    intervals: int  # packet pairs judged
    skipped_frames: int  # RTCP, non-RTP, or outside the port range
    lost: int  # sequence numbers never captured
    gaps: int  # places where at least one was missing
    reordered: int  # packets whose sequence number did not move forward
    jitter_p50_ms: float | None
    jitter_p95_ms: float | None
    jitter_p99_ms: float | None
    jitter_max_ms: float | None
    mean_interval_ms: float | None  # per sequence step, should be ptime
    over_10ms: int  # intervals more than 10 ms off
    worst_stream_p99_ms: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


class _Stream:
    __slots__ = ("deviations", "elapsed", "last_seq", "last_time", "packets", "steps")

    def __init__(self) -> None:
        self.deviations = array("d")
        self.last_seq: int | None = None
        self.last_time = 0.0
        self.packets = 0
        self.steps = 0  # sequence steps covered by the judged intervals
        self.elapsed = 0.0  # the time those intervals took


class IntervalAnalyzer:
    """Feed packets in capture order with add() or add_frame(); report() at the end.

    `window` (start, end) keeps only packets captured inside it, in the capture's own
    time base; `src_ports` (low, high) keeps only packets sent from those ports.
    """

    def __init__(
        self,
        ptime: float = PTIME,
        *,
        window: tuple[float, float] | None = None,
        src_ports: tuple[int, int] | None = None,
    ) -> None:
        if not ptime > 0:
            raise CaptureError(f"ptime must be positive, got {ptime}")
        if window is not None and window[1] < window[0]:
            raise CaptureError(f"window ends ({window[1]}) before it starts ({window[0]})")
        self.ptime = ptime
        self.window = window
        self.src_ports = src_ports
        self._streams: dict[StreamKey, _Stream] = {}
        self._skipped = self._lost = self._gaps = self._reordered = 0

    def add_frame(self, time: float, frame: bytes) -> bool:
        """One captured Ethernet frame; False when it was not an RTP packet we judge."""
        fields = rtp_fields(frame)
        if fields is None:
            self._skipped += 1
            return False
        src, dst, ssrc, seq = fields
        return self.add(time, src, dst, ssrc, seq)

    def add(self, time: float, src_port: int, dst_port: int, ssrc: int, seq: int) -> bool:
        """One RTP packet, by its capture time and identity."""
        ports = self.src_ports
        if ports is not None and not ports[0] <= src_port <= ports[1]:
            self._skipped += 1
            return False
        window = self.window
        if window is not None and not window[0] <= time <= window[1]:
            return False
        key = (src_port, dst_port, ssrc)
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream()
        stream.packets += 1
        if stream.last_seq is not None:
            step = seq_diff(seq, stream.last_seq)
            if step <= 0:
                self._reordered += 1
                return True
            if step <= _MAX_GAP:
                interval = time - stream.last_time
                stream.deviations.append(abs(interval - step * self.ptime))
                stream.steps += step
                stream.elapsed += interval
                if step > 1:
                    self._lost += step - 1
                    self._gaps += 1
        stream.last_seq, stream.last_time = seq, time
        return True

    def report(self) -> IntervalReport:
        streams = list(self._streams.values())
        pooled = np.concatenate(
            [np.frombuffer(s.deviations, dtype=np.float64) for s in streams]
        ) if streams else np.empty(0)
        per_stream = [
            float(np.percentile(np.frombuffer(s.deviations), 99)) * 1e3
            for s in streams if len(s.deviations)
        ]
        steps = sum(s.steps for s in streams)

        def pct(q: float) -> float | None:
            return float(np.percentile(pooled, q)) * 1e3 if pooled.size else None

        return IntervalReport(
            streams=len(streams),
            packets=sum(s.packets for s in streams),
            intervals=int(pooled.size),
            skipped_frames=self._skipped,
            lost=self._lost,
            gaps=self._gaps,
            reordered=self._reordered,
            jitter_p50_ms=pct(50),
            jitter_p95_ms=pct(95),
            jitter_p99_ms=pct(99),
            jitter_max_ms=float(pooled.max()) * 1e3 if pooled.size else None,
            mean_interval_ms=sum(s.elapsed for s in streams) / steps * 1e3 if steps else None,
            over_10ms=int(np.count_nonzero(pooled > 0.010)),
            worst_stream_p99_ms=max(per_stream) if per_stream else None,
        )


def analyse_frames(
    records: Iterable[tuple[float, bytes]],
    ptime: float = PTIME,
    *,
    window: tuple[float, float] | None = None,
    src_ports: tuple[int, int] | None = None,
) -> IntervalReport:
    """The report for (capture time, Ethernet frame) pairs in capture order."""
    analyzer = IntervalAnalyzer(ptime, window=window, src_ports=src_ports)
    for time, frame in records:
        analyzer.add_frame(time, frame)
    return analyzer.report()


def analyse_pcap(
    data: bytes,
    ptime: float = PTIME,
    *,
    window: tuple[float, float] | None = None,
    src_ports: tuple[int, int] | None = None,
) -> IntervalReport:
    """The report for a whole classic pcap held in memory."""
    try:
        return analyse_frames(
            ((rec.time, rec.frame) for rec in read_pcap(data)),
            ptime, window=window, src_ports=src_ports,
        )
    except CaptureError:
        raise
    except PcapError as e:
        raise CaptureError(f"cannot read the capture: {e}") from None
