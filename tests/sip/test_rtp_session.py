"""RtpSession over real loopback UDP sockets, driven by a ManualClock and hand-run ticks."""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from media import g711
from media.clock import ManualClock
from media.dtmf import DtmfDecoder, DtmfEvent, encode_digit
from media.pacer import Pacer
from media.rtcp import (
    ReceiverReport,
    ReportBlock,
    Sdes,
    SenderReport,
    build_compound,
    ntp_from_unix,
    ntp_middle,
    parse_compound,
)
from media.rtp import RtpPacket
from pipeline.metrics import Metrics
from sip.ports import PortAllocator
from sip.rtp_session import MediaParams, RtpOptions, RtpSession, RtpSessionError

LOCAL = "127.0.0.1"
PCMU_SILENCE = g711.ULAW_SILENCE * 160


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCAL, 0))
    sock.setblocking(False)
    return sock


def recv_all(sock: socket.socket) -> list[bytes]:
    """Every datagram already queued on a peer socket (sends are synchronous on loopback)."""
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


def recv_rtp(sock: socket.socket) -> list[RtpPacket]:
    return [RtpPacket.parse(d) for d in recv_all(sock) if not 192 <= d[1] <= 223]


def tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 8000.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype("<i2")


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / len(samples))


async def until(cond: Callable[[], bool], tries: int = 500) -> None:
    """Yield to the event loop until `cond` holds (a datagram needs one select pass)."""
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not met after yielding to the event loop")


@dataclass
class Call:
    session: RtpSession
    peer: socket.socket
    rtcp_peer: socket.socket
    clock: ManualClock
    metrics: Metrics
    ports: PortAllocator
    frames: list[bytes] = field(default_factory=list)
    digits: list[str] = field(default_factory=list)
    marks: list[tuple[str, bool]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    index: int = 0
    seq: int = 1000
    ts: int = 5000

    @property
    def addr(self) -> tuple[str, int]:
        return (LOCAL, self.session.local_port)

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.clock.advance(0.02)
            self.index += 1
            self.session.tick(self.index)

    def packet(self, payload: bytes = PCMU_SILENCE, pt: int = 0, ssrc: int = 0x1234,
               marker: bool = False, advance: bool = True) -> bytes:
        data = bytes(RtpPacket(pt, self.seq, self.ts, ssrc, payload, marker))
        if advance:
            self.seq = (self.seq + 1) & 0xFFFF
            self.ts = (self.ts + 160) & 0xFFFFFFFF
        return data

    async def deliver(self, data: bytes, sock: socket.socket | None = None,
                      port: int | None = None) -> None:
        """Send from the peer (or `sock`) and wait until the session has handled it."""
        before = self.handled()
        (sock or self.peer).sendto(data, (LOCAL, port or self.session.local_port))
        await until(lambda: self.handled() > before)

    def handled(self) -> int:
        stats = self.session.stats
        return stats.packets_in + stats.invalid

    def invalid(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "switchboard_rtp_packets_invalid_total", {"reason": reason}
        )
        return value or 0.0


@pytest.fixture
async def make_call() -> AsyncIterator[Callable[..., object]]:
    created: list[Call] = []

    async def make(**overrides: object) -> Call:
        peer, rtcp_peer = udp_socket(), udp_socket()
        params = MediaParams(
            remote_host=LOCAL, remote_port=peer.getsockname()[1], codec="PCMU", payload_type=0,
            dtmf_payload_type=101, rtcp_port=rtcp_peer.getsockname()[1],
        )
        params = replace(params, **{k: v for k, v in overrides.items() if hasattr(params, k)})
        opts = replace(RtpOptions(), **{
            k: v for k, v in overrides.items() if hasattr(RtpOptions, k)
        })
        kwargs = {k: v for k, v in overrides.items()
                  if not hasattr(params, k) and not hasattr(RtpOptions, k)}
        clock = ManualClock(1000.0)
        metrics = Metrics(CollectorRegistry())
        ports = PortAllocator(41000, 41999)
        call = Call(None, peer, rtcp_peer, clock, metrics, ports)  # type: ignore[arg-type]
        options: dict[str, object] = {
            "clock": clock, "pacer": Pacer(clock), "metrics": metrics,
            "on_frame": call.frames.append, "on_dtmf": call.digits.append,
            "on_mark": lambda m, played: call.marks.append((m, played)),
            "on_failure": call.failures.append, "rng": random.Random(7),
            "options": replace(opts, rtcp_interval=overrides.get("rtcp_interval", 1000.0)),
            "epoch_offset": 1.7e9,
        }
        options.update(kwargs)
        call.session = await RtpSession.open(params, local_host=LOCAL, ports=ports, **options)
        created.append(call)
        return call

    yield make
    for call in created:
        call.session.close()
        call.peer.close()
        call.rtcp_peer.close()
    await asyncio.sleep(0)  # let the transports finish closing


# -- inbound audio -----------------------------------------------------------------------


async def test_pcmu_tone_in_becomes_16k_frames(make_call) -> None:
    call: Call = await make_call()
    pcm = tone(8000, 1.0)
    for i in range(50):
        payload = g711.ulaw_encode(pcm[i * 160 : (i + 1) * 160].tobytes())
        await call.deliver(call.packet(payload, marker=i == 0))
        call.tick()
    call.tick(10)  # drain the jitter buffer
    assert len(call.frames) == 60 and all(len(f) == 640 for f in call.frames)
    heard = np.frombuffer(b"".join(call.frames), dtype="<i2")
    voiced = heard[np.abs(heard) > 0]
    assert len(voiced) > 16000 * 0.8
    start = int(np.argmax(np.abs(heard) > 1000))
    assert dominant_hz(heard[start : start + 8000], 16000) == pytest.approx(440, abs=3)
    stats = call.session.stats
    assert stats.packets_in == 50 and stats.lost == 0 and stats.invalid == 0


async def test_handler_gets_a_frame_every_tick_before_media(make_call) -> None:
    call: Call = await make_call()
    call.tick(5)
    assert call.frames == [bytes(640)] * 5


# -- outbound audio ----------------------------------------------------------------------


async def test_silence_every_tick_when_idle(make_call) -> None:
    call: Call = await make_call()
    call.tick(5)
    packets = recv_rtp(call.peer)
    assert len(packets) == 5
    assert {p.payload for p in packets} == {PCMU_SILENCE}
    assert {p.payload_type for p in packets} == {0} and not any(p.marker for p in packets)
    assert len({p.ssrc for p in packets}) == 1 and packets[0].ssrc == call.session.ssrc
    for a, b in itertools.pairwise(packets):
        assert b.sequence == (a.sequence + 1) & 0xFFFF
        assert b.timestamp == (a.timestamp + 160) & 0xFFFFFFFF


async def test_queued_audio_goes_out_with_marker_and_marks(make_call) -> None:
    call: Call = await make_call()
    call.tick()
    pcm = tone(8000, 0.06, freq=1000)
    call.session.send_audio(pcm.tobytes(), 8000, mark="hello")
    assert call.session.queued_seconds() == pytest.approx(0.06)
    call.tick(2)
    assert call.marks == []
    call.tick()
    assert call.marks == [("hello", True)]
    call.tick(2)
    packets = recv_rtp(call.peer)
    assert [p.marker for p in packets] == [False, True, False, False, False, False]
    sent = b"".join(g711.ulaw_decode(p.payload) for p in packets[1:4])
    expected = g711.ulaw_decode(g711.ulaw_encode(pcm.tobytes()))
    assert sent == expected
    assert packets[4].payload == PCMU_SILENCE
    call.session.send_audio(pcm.tobytes(), 8000)
    call.tick()
    assert recv_rtp(call.peer)[0].marker  # a new talk spurt after silence


async def test_pipeline_rate_audio_is_resampled_to_the_wire(make_call) -> None:
    call: Call = await make_call()
    call.session.send_audio(tone(16000, 0.5, freq=600).tobytes(), 16000, mark="end")
    call.tick(30)
    audio = b"".join(g711.ulaw_decode(p.payload) for p in recv_rtp(call.peer))
    samples = np.frombuffer(audio, dtype="<i2")
    assert dominant_hz(samples[400:3600], 8000) == pytest.approx(600, abs=5)
    assert call.marks == [("end", True)]


async def test_clear_audio_reports_marks_next_tick(make_call) -> None:
    call: Call = await make_call()
    call.session.send_audio(bytes(3200), 8000, mark="a")
    call.session.send_audio(bytes(3200), 8000, mark="b")
    call.tick()
    call.session.clear_audio()
    assert call.marks == [] and call.session.queued_seconds() == 0
    call.tick()
    assert call.marks == [("a", False), ("b", False)]


async def test_lost_packets_are_concealed_counted_and_exported(make_call) -> None:
    call: Call = await make_call()
    pcm = tone(8000, 1.0)
    for i in range(50):
        payload = g711.ulaw_encode(pcm[i * 160 : (i + 1) * 160].tobytes())
        data = call.packet(payload)
        if i not in (20, 21, 35):
            await call.deliver(data)
        call.tick()
    call.tick(10)
    stats = call.session.stats
    assert stats.packets_in == 47 and stats.lost == 3 and stats.concealed >= 3
    call.session.close()
    sample = call.metrics.registry.get_sample_value
    assert sample("switchboard_rtp_packets_lost_total") == 3
    assert sample("switchboard_rtp_packets_received_total") == 47
    assert sample("switchboard_rtp_packets_sent_total") == 60
    assert sample("switchboard_jitter_concealed_frames_total") == stats.concealed


async def test_skipped_pacer_ticks_leave_a_timestamp_gap(make_call) -> None:
    call: Call = await make_call()
    call.session.tick(1)
    call.session.tick(5)  # the pacer skipped ticks 2-4 after a stall
    a, b = recv_rtp(call.peer)
    assert b.sequence == (a.sequence + 1) & 0xFFFF
    assert b.timestamp == (a.timestamp + 4 * 160) & 0xFFFFFFFF


# -- garbage, payload types, latching ------------------------------------------------------


async def test_garbage_and_wrong_payload_type_are_counted_and_dropped(make_call) -> None:
    call: Call = await make_call()
    await call.deliver(b"\x80")
    await call.deliver(b"\x40" + bytes(20))  # RTP version 1
    await call.deliver(b"\x90\x00" + bytes(10) + b"\x00\x01\x00\x09")  # extension past the end
    await call.deliver(call.packet(pt=8))  # PCMA was not negotiated
    await call.deliver(b"\x80\xc8\x00\x09")  # looks like RTCP, is not
    assert call.invalid("malformed") == 3
    assert call.invalid("payload_type") == 1
    assert call.invalid("rtcp_malformed") == 1
    await call.deliver(call.packet())
    stats = call.session.stats
    assert stats.packets_in == 1 and stats.invalid == 5


async def test_latches_to_early_source_and_sends_there(make_call) -> None:
    call: Call = await make_call()
    nat = udp_socket()
    try:
        await call.deliver(call.packet(), sock=nat)  # in the first 2 s: learnt
        call.tick()
        assert len(recv_rtp(nat)) == 1 and recv_rtp(call.peer) == []
        # A packet from the SDP address during the learning window wins it back.
        await call.deliver(call.packet())
        call.tick()
        assert len(recv_rtp(call.peer)) == 1 and recv_rtp(nat) == []
    finally:
        nat.close()


async def test_stranger_after_learning_window_is_dropped(make_call) -> None:
    call: Call = await make_call()
    await call.deliver(call.packet())
    call.tick(110)  # past the 2 s window
    await call.deliver(call.packet())
    stranger = udp_socket()
    try:
        # RTP Bleed: another SSRC, or the right SSRC with a far-off sequence number.
        await call.deliver(call.packet(ssrc=0x6666), sock=stranger)
        far = bytes(RtpPacket(0, (call.seq + 5000) & 0xFFFF, call.ts, 0x1234, PCMU_SILENCE))
        await call.deliver(far, sock=stranger)
        assert call.invalid("source") == 2
        recv_rtp(call.peer)
        call.tick()
        assert len(recv_rtp(call.peer)) == 1 and recv_rtp(stranger) == []
    finally:
        stranger.close()


async def test_moved_source_continuing_the_stream_is_latched(make_call) -> None:
    call: Call = await make_call(follow_rebinding=True)
    await call.deliver(call.packet())
    call.tick(110)
    moved = udp_socket()
    try:
        await call.deliver(call.packet(), sock=moved)  # same SSRC, next sequence number
        assert call.invalid("source") == 0
        recv_rtp(call.peer)
        call.tick()
        assert len(recv_rtp(moved)) == 1 and recv_rtp(call.peer) == []
        # The old address is now the stranger.
        await call.deliver(call.packet(ssrc=0x9999))
        assert call.invalid("source") == 1
    finally:
        moved.close()


async def test_after_window_only_the_sdp_address_can_start_media(make_call) -> None:
    call: Call = await make_call()
    call.tick(110)
    stranger = udp_socket()
    try:
        await call.deliver(call.packet(), sock=stranger)
        assert call.invalid("source") == 1
        await call.deliver(call.packet())
        assert call.session.stats.packets_in == 1
    finally:
        stranger.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=80),
    # Headers that get past the first checks: version 2, our payload types or RTCP types.
    st.tuples(st.sampled_from([0x80, 0x81, 0x90, 0xA0, 0xBF]),
              st.sampled_from([0, 101, 0x80, 0xE5, 200, 201, 202, 203]),
              st.binary(max_size=60)).map(lambda t: bytes(t[:2]) + t[2]),
), max_size=20))
def test_any_datagram_is_handled_without_raising(datagrams: list[bytes]) -> None:
    clock = ManualClock(5.0)
    metrics = Metrics(CollectorRegistry())
    session = RtpSession(
        MediaParams(LOCAL, 5000, dtmf_payload_type=101), local_host=LOCAL, local_port=6000,
        clock=clock, pacer=Pacer(clock), metrics=metrics, rng=random.Random(1),
    )
    for i, data in enumerate(datagrams):
        session.datagram_received(data, (LOCAL, 5000))
        session.rtcp_received(data, (LOCAL, 5001))
        clock.advance(0.02)
        session.tick(i)
    stats = session.stats
    assert stats.packets_in <= len(datagrams)
    session.close()


# -- DTMF -------------------------------------------------------------------------------


async def test_rfc4733_dtmf_in_reported_once(make_call) -> None:
    call: Call = await make_call()
    for digit in "5#":
        start = call.ts
        for event, marker, _ in encode_digit(digit):
            await call.deliver(call.packet(bytes(event), pt=101, marker=marker, advance=False))
            call.seq += 1
        call.ts = start + 1600
    assert call.digits == ["5", "#"]
    assert call.metrics.registry.get_sample_value(
        "switchboard_dtmf_digits_total", {"transport": "sip", "method": "rfc4733"}
    ) == 2
    await call.deliver(call.packet(b"\x01\x02", pt=101))
    assert call.invalid("dtmf") == 1


async def test_send_dtmf_replaces_audio(make_call) -> None:
    call: Call = await make_call()
    call.session.send_dtmf("1#")
    call.tick(40)
    packets = recv_rtp(call.peer)
    events = [p for p in packets if p.payload_type == 101]
    assert len(events) == 2 * 7  # 100 ms: 4 growing + 3 End packets each
    decoder = DtmfDecoder()
    digits = [decoder.push(p.timestamp, p.payload) for p in events]
    assert [d for d in digits if d] == ["1", "#"]
    first = [p for p in events if DtmfEvent.parse(p.payload).event == 1]
    assert len({p.timestamp for p in first}) == 1 and first[0].marker
    assert [DtmfEvent.parse(p.payload).end for p in first] == [False] * 4 + [True] * 3
    # One packet per tick, one sequence space, audio between the digits.
    assert len(packets) == 40
    assert all(b.sequence == (a.sequence + 1) & 0xFFFF for a, b in itertools.pairwise(packets))
    kinds = "".join("d" if p.payload_type == 101 else "a" for p in packets)
    assert kinds.startswith("d" * 7 + "aaa" + "d" * 7)
    assert call.session.stats.dtmf_out == 2


async def test_send_dtmf_without_telephone_event_raises(make_call) -> None:
    call: Call = await make_call(dtmf_payload_type=None)
    with pytest.raises(RtpSessionError, match="telephone-event"):
        call.session.send_dtmf("1")
    call2: Call = await make_call()
    with pytest.raises(ValueError, match="not a DTMF digit"):
        call2.session.send_dtmf("1x")


# -- RTCP -------------------------------------------------------------------------------


async def test_sender_report_sent_with_reception_block(make_call) -> None:
    call: Call = await make_call(rtcp_interval=1.0)
    for _ in range(100):
        await call.deliver(call.packet())
        call.tick()
    reports = [parse_compound(d) for d in recv_all(call.rtcp_peer)]
    assert 1 <= len(reports) <= 4
    sr, sdes = reports[0][0], reports[0][1]
    assert isinstance(sr, SenderReport) and isinstance(sdes, Sdes)
    assert sr.ssrc == call.session.ssrc and sr.packet_count > 0
    assert sr.octet_count == 160 * sr.packet_count
    last = reports[-1][0]
    assert isinstance(last, SenderReport)
    assert last.reports and last.reports[0].ssrc == 0x1234
    assert last.reports[0].cumulative_lost == 0


async def test_rtcp_mux_sends_reports_on_the_rtp_port(make_call) -> None:
    call: Call = await make_call(rtcp_interval=1.0, rtcp_mux=True)
    call.tick(100)
    datagrams = recv_all(call.peer)
    rtcp = [d for d in datagrams if 192 <= d[1] <= 223]
    assert rtcp and isinstance(parse_compound(rtcp[0])[0], SenderReport)
    assert recv_all(call.rtcp_peer) == []


async def test_incoming_receiver_report_updates_stats_and_metrics(make_call) -> None:
    call: Call = await make_call()
    await call.deliver(call.packet())
    now_ntp = ntp_from_unix(call.clock.now() + 1.7e9)
    block = ReportBlock(call.session.ssrc, 64, 3, 1000, 80, ntp_middle(now_ntp) - 6554, 3277)
    rr = build_compound([ReceiverReport(0x1234, (block,)), Sdes.cname(0x1234, "peer")])
    before = call.handled()
    call.rtcp_peer.sendto(rr, call.addr)  # RTCP may come to the RTP port too
    await until(lambda: call.session.stats.remote_lost is not None)
    assert call.handled() == before
    stats = call.session.stats
    assert stats.remote_lost == 3 and stats.remote_fraction_lost == 0.25
    assert stats.remote_jitter_seconds == pytest.approx(0.01)
    assert stats.rtt_seconds == pytest.approx(0.05, abs=0.001)
    assert call.metrics.registry.get_sample_value(
        "switchboard_rtp_interarrival_jitter_seconds_count") == 1


async def test_rtcp_from_unknown_host_is_dropped(make_call) -> None:
    call: Call = await make_call(remote_host="127.0.0.2")
    rr = bytes(ReceiverReport(0x1234, (ReportBlock(call.session.ssrc, 0, 1, 1, 1),)))
    call.peer.sendto(rr, (LOCAL, call.session.local_port + 1))
    await until(lambda: call.invalid("source") == 1)
    assert call.session.stats.remote_lost is None


# -- timeout, hold, re-INVITE, close -----------------------------------------------------


async def test_media_timeout_fires_once(make_call) -> None:
    call: Call = await make_call(media_timeout=1.0)
    await call.deliver(call.packet())
    call.tick(50)
    assert call.failures == []
    call.tick(5)
    assert call.failures == ["media_timeout"]
    call.tick(100)
    assert call.failures == ["media_timeout"]


async def test_no_media_timeout_while_we_expect_no_media(make_call) -> None:
    call: Call = await make_call(media_timeout=1.0, direction="sendonly")
    call.tick(100)
    assert call.failures == []
    call.session.set_direction("sendrecv")  # resumed: the timeout counts from now
    call.tick(45)
    assert call.failures == []
    call.tick(10)
    assert call.failures == ["media_timeout"]


async def test_hold_stops_sending_and_resume_continues_the_timeline(make_call) -> None:
    call: Call = await make_call()
    call.tick()
    (first,) = recv_rtp(call.peer)
    call.session.send_audio(bytes(320 * 3), 8000, mark="m")
    call.session.set_direction("inactive")
    call.tick(10)
    assert recv_rtp(call.peer) == [] and call.marks == []  # held audio waits
    call.session.set_direction("sendrecv")
    call.tick()
    (resumed,) = recv_rtp(call.peer)
    assert resumed.marker  # the first audio after hold starts a talk spurt
    assert resumed.sequence == (first.sequence + 1) & 0xFFFF
    assert resumed.timestamp == (first.timestamp + 11 * 160) & 0xFFFFFFFF
    call.session.set_direction("recvonly")
    call.tick(2)
    assert recv_rtp(call.peer) == []
    assert call.session.stats.packets_out == 2


async def test_reinvite_moves_the_remote_and_restarts_learning(make_call) -> None:
    call: Call = await make_call()
    await call.deliver(call.packet())
    call.tick(110)
    new_peer = udp_socket()
    try:
        params = replace(call.session.params, remote_port=new_peer.getsockname()[1])
        call.session.update(params)
        recv_rtp(call.peer)
        call.tick()
        assert len(recv_rtp(new_peer)) == 1 and recv_rtp(call.peer) == []
        await call.deliver(call.packet(ssrc=0x7777), sock=new_peer)
        assert call.invalid("source") == 0
    finally:
        new_peer.close()


async def test_reinvite_codec_change(make_call) -> None:
    call: Call = await make_call()
    for i in range(10):
        data = call.packet(b"\x10" * 160)
        if i != 4:
            await call.deliver(data)
        call.tick()
    call.tick(5)
    assert call.session.stats.lost == 1
    recv_rtp(call.peer)
    call.session.update(replace(call.session.params, codec="PCMA", payload_type=8))
    call.tick()
    (packet,) = recv_rtp(call.peer)
    assert packet.payload_type == 8 and packet.payload == g711.ALAW_SILENCE * 160
    await call.deliver(call.packet(pt=0))
    assert call.invalid("payload_type") == 1
    assert call.session.stats.lost == 1  # the call's totals survive the new decoder chain
    call.session.close()
    assert call.metrics.registry.get_sample_value("switchboard_rtp_packets_lost_total") == 1


async def test_bad_params_raise() -> None:
    for bad, message in [
        (MediaParams(LOCAL, 4000, codec="G729"), "unsupported codec"),
        (MediaParams(LOCAL, 4000, direction="sideways"), "direction"),
        (MediaParams(LOCAL, 4000, ptime=30), "ptime"),
        (MediaParams(LOCAL, 4000, payload_type=72), "payload type 72"),
        (MediaParams(LOCAL, 4000, dtmf_payload_type=0), "share payload type"),
    ]:
        with pytest.raises(RtpSessionError, match=message):
            bad.check()


async def test_close_is_idempotent_releases_port_and_says_bye(make_call) -> None:
    call: Call = await make_call()
    port = call.session.local_port
    assert call.ports.in_use == 1
    call.session.close()
    call.session.close()
    assert call.ports.in_use == 0 and call.session.closed
    (bye,) = [parse_compound(d) for d in recv_all(call.rtcp_peer)]
    assert type(bye[-1]).__name__ == "Bye"
    await asyncio.sleep(0)  # transports close on the next loop iteration
    for p in (port, port + 1):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((LOCAL, p))
        probe.close()
    call.tick()
    assert recv_rtp(call.peer) == []


async def test_handler_error_ends_the_call_but_not_the_media(make_call) -> None:
    def broken(frame: bytes) -> None:
        raise RuntimeError("handler bug")

    call: Call = await make_call(on_frame=broken)
    call.tick(3)
    assert call.failures == ["handler_error"]
    assert len(recv_rtp(call.peer)) == 3


async def test_hanging_up_from_a_callback_inside_the_tick(make_call) -> None:
    holder: list[RtpSession] = []
    call: Call = await make_call(on_frame=lambda frame: holder[0].close())
    holder.append(call.session)
    call.tick()
    assert call.session.closed and call.ports.in_use == 0
    rtp = recv_rtp(call.peer)
    assert rtp == []  # nothing sent after the hang-up, in that tick or later
    call.tick()
    assert recv_rtp(call.peer) == []


async def test_real_pacer_drives_the_session(make_call) -> None:
    clock = ManualClock(1000.0)
    pacer = Pacer(clock)
    call: Call = await make_call(clock=clock, pacer=pacer)
    call.clock = clock
    task = pacer.start()
    try:
        await until(lambda: len(call.frames) == 1)
        for n in range(2, 6):
            clock.advance(0.02)
            await until(lambda n=n: len(call.frames) == n)
        assert pacer.tick == 4
        assert len(recv_rtp(call.peer)) == 5
    finally:
        await pacer.stop()
    assert task.done()
    call.session.close()
    assert call.session.tick not in pacer


async def test_opus_in_and_out(make_call) -> None:
    from media.opus import OpusDecoder, OpusEncoder

    call: Call = await make_call(codec="opus", payload_type=111)
    encoder = OpusEncoder(rate=16000)
    pcm = tone(16000, 1.0, freq=500)
    for i in range(50):
        payload = encoder.encode(pcm[i * 320 : (i + 1) * 320].tobytes())
        data = bytes(RtpPacket(111, i, i * 960, 0x42, payload))
        await call.deliver(data)
        call.tick()
    call.tick(10)
    heard = np.frombuffer(b"".join(call.frames), dtype="<i2")
    start = int(np.argmax(np.abs(heard) > 1000))
    assert dominant_hz(heard[start + 1600 : start + 9600], 16000) == pytest.approx(500, abs=3)
    packets = recv_rtp(call.peer)
    assert {p.payload_type for p in packets} == {111}
    assert all(b.timestamp - a.timestamp == 960 for a, b in itertools.pairwise(packets))
    decoded = OpusDecoder(16000).decode(packets[0].payload)
    assert len(decoded) == 640


async def test_open_skips_a_port_held_by_another_program() -> None:
    clock = ManualClock()
    ports = PortAllocator(41500, 41503, rng=random.Random(0))
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    first = ports.allocate()
    ports.release(first)
    ports = PortAllocator(41500, 41503, rng=random.Random(0))
    blocker.bind((LOCAL, first))
    try:
        session = await RtpSession.open(
            MediaParams(LOCAL, 9), local_host=LOCAL, ports=ports, clock=clock,
            pacer=Pacer(clock), metrics=Metrics(CollectorRegistry()),
        )
        assert session.local_port != first and ports.in_use == 1
        session.close()
    finally:
        blocker.close()
