"""The media half of one SIP call: an RTP session on its own UDP port pair.

Inbound, every datagram is parsed (RTCP demuxed; garbage, wrong payload types and wrong
sources counted and dropped, never raised) and goes to the jitter buffer (audio) or the
RFC 4733 decoder (DTMF). Outbound, the shared pacer calls tick() every 20 ms: one 16 kHz
frame goes to the handler and one packet to the far end (silence when nothing is queued,
so the far end never times the call out). RTCP SR/RR every ~5 s.

Symmetric RTP with strict latching (RTP Bleed, CVE-2017-14099): we send to the SDP
address until media arrives. A source is learnt only in the first `latch_window` seconds
(of the call, or after a re-INVITE moves the address) or from the SDP address itself;
later, every other source is dropped and counted (reason "source"), unless the option
follow_rebinding accepts one that continues the current SSRC with the next few sequence
numbers (a NAT rebinding). So a stranger cannot steal or inject into the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from media import rtcp as rtcp_
from media.clock import Clock
from media.dtmf import DtmfDecoder, DtmfError, DtmfPacket, digit_to_event, encode_digit
from media.inbound import InboundMedia
from media.outbound import OutboundAudio
from media.pacer import Pacer
from media.rtp import RtpError, RtpPacket, is_rtcp
from media.seqnum import seq_diff, ts_diff
from pipeline.metrics import Metrics
from sip.media_params import (
    CODECS,
    PTIME_MS,
    CodecInfo,
    MediaParams,
    RtpOptions,
    RtpSessionError,
    RtpStats,
)
from sip.ports import PortAllocator

__all__ = [
    "CODECS", "CodecInfo", "MediaParams", "RtpOptions", "RtpSession", "RtpSessionError", "RtpStats"
]

logger = logging.getLogger(__name__)

MAX_LATCH_GAP = 10  # a moved source must continue within this many sequence numbers
DTMF_GAP_TICKS = 3  # 60 ms of audio between two sent digits
_TS_MASK = 0xFFFFFFFF
_EF_TOS = 0xB8  # DSCP EF (46): voice, so routers that honour it queue us first
Addr = tuple[str, int]
_DEFAULT_OPTIONS = RtpOptions()  # frozen, so one default is safely shared


class _RtcpProtocol(asyncio.DatagramProtocol):
    """The RTCP port (RTP + 1) when rtcp-mux is not in use; hands datagrams to the session."""

    def __init__(self, session: RtpSession) -> None:
        self.session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session._rtcp_transport = transport  # type: ignore[assignment]
        _mark_voice(transport)

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.session.rtcp_received(data, (addr[0], addr[1]))


class RtpSession(asyncio.DatagramProtocol):
    """One call's RTP/RTCP. Create with `await RtpSession.open(...)`; end with close().

    Callbacks (all on the event loop, none may block): on_frame(pcm) every tick with one
    16 kHz frame (silence before media starts or when the far end is silent), on_dtmf
    per digit, on_mark(mark, played), and on_failure(reason) once ("media_timeout",
    "handler_error"), after which the leg should hang up.
    """

    def __init__(
        self,
        params: MediaParams,
        *,
        local_host: str,
        local_port: int,
        clock: Clock,
        pacer: Pacer,
        metrics: Metrics,
        on_frame: Callable[[bytes], None] | None = None,
        on_dtmf: Callable[[str], None] | None = None,
        on_mark: Callable[[str, bool], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
        options: RtpOptions = _DEFAULT_OPTIONS,
        ports: PortAllocator | None = None,
        rng: random.Random | None = None,
        epoch_offset: float | None = None,
        cname: str | None = None,
    ) -> None:
        self.local_host, self.local_port = local_host, local_port
        self._clock, self._pacer, self._metrics, self._ports = clock, pacer, metrics, ports
        self.on_frame, self.on_dtmf, self.on_mark, self.on_failure = (
            on_frame, on_dtmf, on_mark, on_failure)
        self.options = options
        self._rng = rng or random.SystemRandom()
        # SR carries wall-clock (NTP) time: read the wall clock once, then follow `clock`.
        # RTCP SRs carry wall-clock NTP time: the one wall-clock read, injectable for tests.
        self._epoch = time.time() - clock.now() if epoch_offset is None else epoch_offset
        self._transport: asyncio.DatagramTransport | None = None
        self._rtcp_transport: asyncio.DatagramTransport | None = None
        self.closed = False
        self._failed: str | None = None
        # Our stream's identity: random initial values (RFC 3550 §5.1).
        self.ssrc = self._rng.getrandbits(32)
        self.cname = cname or f"switchboard-{self.ssrc:08x}"
        self._seq = self._rng.getrandbits(16)
        self._ts = self._rng.getrandbits(32)
        self._last_tick: int | None = None
        self._cleared_marks: list[str] = []
        self._dtmf_digits: deque[str] = deque()
        self._dtmf_packets: deque[DtmfPacket] = deque()
        self._dtmf_start = self._dtmf_gap = 0
        # Counters; the Prometheus ones are fed in batches once a second (_flush_metrics).
        self._packets_in = self._packets_out = 0
        self._payload_out = self._dtmf_in = self._dtmf_out = self._invalid = 0
        self._reported = {"in": 0, "out": 0, "lost": 0, "late": 0, "concealed": 0}
        self._retired = (0, 0, 0)  # lost, late, concealed of chains replaced by re-INVITEs
        self._remote_block: rtcp_.ReportBlock | None = None
        self._rtt: float | None = None
        now = clock.now()
        self._next_rtcp = now + self._rtcp_delay()
        self._next_sample = now + 1.0
        self._params = params
        self._apply(params, now, first=True)

    @classmethod
    async def open(
        cls, params: MediaParams, *, local_host: str, ports: PortAllocator, attempts: int = 8,
        **kwargs: object,
    ) -> RtpSession:
        """Allocate a port pair, bind it and join the pacer. A port some other program
        holds is skipped (it goes back to the end of the free list)."""
        loop = asyncio.get_running_loop()
        last_error: OSError | None = None
        for _ in range(attempts):
            port = ports.allocate()
            session = cls(params, local_host=local_host, local_port=port, ports=ports, **kwargs)  # type: ignore[arg-type]
            try:
                await loop.create_datagram_endpoint(lambda s=session: s, (local_host, port))
                if not params.rtcp_mux:
                    await loop.create_datagram_endpoint(
                        lambda s=session: _RtcpProtocol(s), (local_host, port + 1)
                    )
            except OSError as exc:
                last_error = exc
                session.close()
                continue
            session._pacer.add(session.tick)
            return session
        raise last_error or OSError(f"could not bind an RTP port on {local_host}")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        _mark_voice(transport)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the far end may not be listening yet.
        logger.debug("RTP socket error on port %d: %s", self.local_port, exc)

    def close(self) -> None:
        """Stop media and release the port pair. Idempotent; sends RTCP BYE if it can."""
        if self.closed:
            return
        if self._transport is not None:
            self._send_rtcp(self._clock.now(), bye=True)
        self.closed = True
        self._pacer.remove(self.tick)
        for transport in (self._transport, self._rtcp_transport):
            if transport is not None:
                transport.close()
        self._flush_metrics()
        if self._ports is not None:
            self._ports.release(self.local_port)

    @property
    def params(self) -> MediaParams:
        return self._params

    def update(self, params: MediaParams) -> None:
        """A re-INVITE (or the answer to our offer) changed the media description."""
        self._apply(params, self._clock.now(), first=False)

    def set_direction(self, direction: str) -> None:
        """Hold and resume: "recvonly"/"inactive" stop our audio, "sendrecv" resumes."""
        self.update(replace(self._params, direction=direction))

    def _apply(self, params: MediaParams, now: float, first: bool) -> None:
        info = params.check()
        old = self._params
        remote = (params.remote_host, params.remote_port) if params.remote_host else None
        moved = remote != (old.remote_host, old.remote_port) or params.rtcp_port != old.rtcp_port
        if first or moved:
            self._sdp_addr: Addr | None = remote
            self._latched: Addr | None = None
            self._rtcp_addr: Addr | None = None
            self._learn_until = now + self.options.latch_window
        if first or info != self._codec or params.payload_type != old.payload_type:
            if not first:  # keep the call's totals across the new chain
                self._retired = self._jitter_totals()
            self._codec = info
            self._frame_ticks = info.clock_rate * PTIME_MS // 1000
            self._inbound = InboundMedia(info.name, payload_type=params.payload_type)
            self._encoder, self._silence = info.encoder()
            if first or info.pcm_rate != self._outbound.wire_rate:
                if not first:
                    self._cleared_marks += self._outbound.clear()
                self._outbound = OutboundAudio(info.pcm_rate)
                self._pcm_silence = bytes(self._outbound.frame_bytes)
            self._peer_ssrc: int | None = None
            self._peer_seq = 0
            self._reception = rtcp_.ReceptionStats(min_sequential=1)
            self._talking = False
        if first or params.dtmf_payload_type != old.dtmf_payload_type:
            self._dtmf_decoder = DtmfDecoder()
        if params.receives and (first or not old.receives):
            self._last_rtp = now  # the media timeout counts from when we expect media
        if params.sends and not old.sends:
            self._talking = False  # resuming from hold starts a new talk spurt
        self._params = params
        self._pt = params.payload_type
        self._dtmf_pt = params.dtmf_payload_type

    def send_audio(self, pcm: bytes, rate: int, mark: str | None = None) -> None:
        self._outbound.push(pcm, rate, mark)

    def clear_audio(self) -> None:
        # The marks are reported on the next tick, not from inside the handler's call.
        self._cleared_marks += self._outbound.clear()
        self._talking = False

    def queued_seconds(self) -> float:
        return self._outbound.queued_seconds()

    def send_dtmf(self, digits: str) -> None:
        """Queue RFC 4733 events; they replace audio packets while they play."""
        if self._dtmf_pt is None:
            raise RtpSessionError("no telephone-event payload type was negotiated")
        for digit in digits:
            digit_to_event(digit)  # DtmfError on a bad digit, before anything is queued
        self._dtmf_digits.extend(digits)

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        if self.closed:
            return
        if len(data) > self.options.max_packet_bytes:
            self._drop("too_large")
            return
        if is_rtcp(data):  # RFC 5761: RTCP may share the RTP port
            self.rtcp_received(data, (addr[0], addr[1]))
            return
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            self._drop("malformed")
            return
        pt = packet.payload_type
        if pt != self._pt and pt != self._dtmf_pt:
            self._drop("payload_type")
            return
        now = self._clock.now()
        if not self._accept_source((addr[0], addr[1]), packet, now):
            self._drop("source")
            return
        if packet.ssrc != self._peer_ssrc:
            if self._peer_ssrc is not None:
                self._reception = rtcp_.ReceptionStats(min_sequential=1)
                self._dtmf_decoder.reset()
            self._peer_ssrc, self._peer_seq = packet.ssrc, packet.sequence
        elif seq_diff(packet.sequence, self._peer_seq) > 0:
            self._peer_seq = packet.sequence
        self._packets_in += 1
        self._last_rtp = now
        self._reception.update(packet.sequence, packet.timestamp, now, self._codec.clock_rate)
        self._inbound.push(packet, now)  # DTMF too: it only marks its sequence number
        if pt == self._pt:
            return
        try:
            digit = self._dtmf_decoder.push(packet.timestamp, packet.payload)
        except DtmfError:
            self._drop("dtmf")
            return
        if digit is not None:
            self._dtmf_in += 1
            self._metrics.dtmf_digits_total.labels("sip", "rfc4733").inc()
            if self.on_dtmf is not None:
                self.on_dtmf(digit)

    def _accept_source(self, source: Addr, packet: RtpPacket, now: float) -> bool:
        latched = self._latched
        if source == latched:
            return True
        learning = now < self._learn_until
        if latched is None:
            if not (learning or source == self._sdp_addr):
                return False
        elif not (
            # The peer moved (NAT rebinding, failover): same stream, next packets.
            self.options.follow_rebinding
            and packet.ssrc == self._peer_ssrc
            and 0 < seq_diff(packet.sequence, self._peer_seq) <= MAX_LATCH_GAP
        ) and not (learning and source == self._sdp_addr):
            return False
        logger.info("RTP port %d: media source latched to %s:%d", self.local_port, *source)
        self._latched = source
        return True

    def _drop(self, reason: str) -> None:
        self._invalid += 1
        self._metrics.rtp_packets_invalid_total.labels(reason).inc()

    def rtcp_received(self, data: bytes, source: Addr) -> None:
        if self.closed:
            return
        if len(data) > self.options.max_packet_bytes:
            self._drop("too_large")
            return
        try:
            packets = rtcp_.parse_compound(data)
        except rtcp_.RtcpError:
            self._drop("rtcp_malformed")
            return
        peer = self._latched or self._sdp_addr
        if peer is None or source[0] != peer[0]:
            self._drop("source")
            return
        if not self._params.rtcp_mux:
            self._rtcp_addr = source
        now = self._clock.now()
        for packet in packets:
            if isinstance(packet, rtcp_.SenderReport) and packet.ssrc == self._peer_ssrc:
                self._reception.note_sender_report(packet.ntp_timestamp, now)
            if isinstance(packet, rtcp_.SenderReport | rtcp_.ReceiverReport):
                for block in packet.reports:
                    if block.ssrc == self.ssrc:
                        self._on_report_block(block, now)

    def _on_report_block(self, block: rtcp_.ReportBlock, now: float) -> None:
        self._remote_block = block
        self._metrics.interarrival_jitter_seconds.observe(block.jitter / self._codec.clock_rate)
        if block.lsr:
            # RFC 3550 §6.4.1: RTT = arrival - LSR - DLSR, all in 1/65536 s.
            arrival = rtcp_.ntp_middle(rtcp_.ntp_from_unix(now + self._epoch))
            self._rtt = max(0, ts_diff(arrival, block.lsr + block.dlsr)) / 65536

    def tick(self, index: int) -> None:
        """The pacer's 20 ms tick: one frame to the handler, one packet to the far end."""
        if self.closed:
            return
        now = self._clock.now()
        if self._last_tick is not None:
            # Skipped ticks after a stall leave a timestamp gap, as real time passed.
            self._ts = (self._ts + (index - self._last_tick) * self._frame_ticks) & _TS_MASK
        self._last_tick = index
        if self._cleared_marks:
            marks, self._cleared_marks = self._cleared_marks, []
            self._report_marks(marks, played=False)
        frame = self._inbound.pull(now)  # always a frame: decoded, concealed or silence
        if self.on_frame is not None and self._failed is None:
            try:
                self.on_frame(frame)
            except Exception:
                # A handler bug must not silently stop the pacer calling us: end the call.
                logger.exception("call handler raised in on_frame on RTP port %d", self.local_port)
                self._fail("handler_error")
        if self._params.sends and not self.closed:  # a callback may have hung up
            self._send_next()
        if self._params.receives and now - self._last_rtp > self.options.media_timeout:
            self._fail("media_timeout")
        if self.closed:
            return
        if now >= self._next_sample:
            self._next_sample = now + 1.0
            self._metrics.jitter_delay_seconds.observe(self._inbound.stats.jitter.delay_seconds)
            self._flush_metrics()
        if now >= self._next_rtcp:
            self._next_rtcp = now + self._rtcp_delay()
            self._send_rtcp(now)

    def _send_next(self) -> None:
        if not self._dtmf_packets and self._dtmf_digits and not self._dtmf_gap:
            digit = self._dtmf_digits.popleft()
            duration = self.options.dtmf_duration_ms
            self._dtmf_packets.extend(encode_digit(digit, duration, self._codec.clock_rate))
            self._dtmf_start = self._ts
        if self._dtmf_packets:  # the event's packets replace audio; the queue waits
            event, marker, offset = self._dtmf_packets.popleft()
            ts = (self._dtmf_start + offset) & _TS_MASK
            self._send_rtp(self._dtmf_pt, ts, bytes(event), marker)  # type: ignore[arg-type]
            if not self._dtmf_packets:
                self._dtmf_out += 1
                self._dtmf_gap = DTMF_GAP_TICKS
                self._talking = False
            return
        if self._dtmf_gap:
            self._dtmf_gap -= 1
        frame, marks = self._outbound.pop()
        if frame is None:
            self._talking = False
            payload = self._silence or self._encoder(self._pcm_silence)
            self._send_rtp(self._pt, self._ts, payload, False)
        else:
            marker = not self._talking  # first packet of a talk spurt (RFC 3551 §4.1)
            self._talking = True
            self._send_rtp(self._pt, self._ts, self._encoder(frame), marker)
        if marks:
            self._report_marks(marks, played=True)

    def _send_rtp(self, pt: int, ts: int, payload: bytes, marker: bool) -> None:
        dest = self._latched or self._sdp_addr
        if dest is None or self._transport is None:
            return
        data = bytes(RtpPacket(pt, self._seq, ts, self.ssrc, payload, marker))
        self._seq = (self._seq + 1) & 0xFFFF
        self._transport.sendto(data, dest)
        self._packets_out += 1
        self._payload_out += len(payload)

    def _report_marks(self, marks: list[str], played: bool) -> None:
        if self.on_mark is not None:
            for mark in marks:
                self.on_mark(mark, played)

    def _fail(self, reason: str) -> None:
        if self._failed is None:
            self._failed = reason
            logger.info("RTP port %d: %s", self.local_port, reason)
            if self.on_failure is not None:
                self.on_failure(reason)

    def _rtcp_delay(self) -> float:
        # RFC 3550 §6.3.1: randomise over [0.5, 1.5] x interval so calls do not sync up.
        return self.options.rtcp_interval * (0.5 + self._rng.random())

    def _rtcp_dest(self) -> tuple[asyncio.DatagramTransport | None, Addr | None]:
        if self._params.rtcp_mux:
            return self._transport, self._latched or self._sdp_addr
        if self._rtcp_addr is not None:  # where the peer's RTCP comes from
            return self._rtcp_transport, self._rtcp_addr
        if self._latched is not None and self._latched != self._sdp_addr:
            return self._rtcp_transport, (self._latched[0], self._latched[1] + 1)
        if self._sdp_addr is None:
            return self._rtcp_transport, None
        port = self._params.rtcp_port or self._sdp_addr[1] + 1
        return self._rtcp_transport, (self._sdp_addr[0], port)

    def _send_rtcp(self, now: float, bye: bool = False) -> None:
        transport, dest = self._rtcp_dest()
        if transport is None or dest is None:
            return
        blocks: tuple[rtcp_.ReportBlock, ...] = ()
        if self._peer_ssrc is not None and self._reception.expected:
            blocks = (self._reception.report_block(self._peer_ssrc, now),)
        report: rtcp_.SenderReport | rtcp_.ReceiverReport = rtcp_.ReceiverReport(self.ssrc, blocks)
        if self._packets_out:
            ntp = rtcp_.ntp_from_unix(now + self._epoch)
            count, octets = self._packets_out & _TS_MASK, self._payload_out & _TS_MASK
            report = rtcp_.SenderReport(self.ssrc, ntp, self._ts, count, octets, blocks)
        parts: list[rtcp_.RtcpPacket] = [report, rtcp_.Sdes.cname(self.ssrc, self.cname)]
        if bye:
            parts.append(rtcp_.Bye((self.ssrc,)))
        transport.sendto(rtcp_.build_compound(parts), dest)

    def _jitter_totals(self) -> tuple[int, int, int]:
        j, (lost, late, concealed) = self._inbound.stats.jitter, self._retired
        return lost + j.lost, late + j.late, concealed + j.concealed

    def _flush_metrics(self) -> None:
        m, seen = self._metrics, self._reported
        lost, late, concealed = self._jitter_totals()
        for key, value, counter in (
            ("in", self._packets_in, m.rtp_packets_received_total),
            ("out", self._packets_out, m.rtp_packets_sent_total),
            ("lost", lost, m.rtp_packets_lost_total),
            ("late", late, m.jitter_late_total),
            ("concealed", concealed, m.jitter_concealed_frames_total),
        ):
            if value > seen[key]:
                counter.inc(value - seen[key])
                seen[key] = value

    @property
    def stats(self) -> RtpStats:
        block, rate = self._remote_block, self._codec.clock_rate
        lost, late, concealed = self._jitter_totals()
        return RtpStats(
            packets_in=self._packets_in, packets_out=self._packets_out,
            dtmf_in=self._dtmf_in, dtmf_out=self._dtmf_out, invalid=self._invalid,
            lost=lost, late=late, concealed=concealed,
            jitter_seconds=self._reception.jitter / rate,
            remote_fraction_lost=block.fraction_lost / 256 if block else None,
            remote_lost=block.cumulative_lost if block else None,
            remote_jitter_seconds=block.jitter / rate if block else None,
            rtt_seconds=self._rtt,
        )


def _mark_voice(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_INET:
        with contextlib.suppress(OSError):  # best effort: some hosts forbid setting TOS
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, _EF_TOS)
