from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.pcap import PcapRecord, udp_frame, write_pcap
from loadtest.rtp_intervals import (
    CaptureError,
    IntervalAnalyzer,
    analyse_frames,
    analyse_pcap,
    rtp_fields,
)
from media.rtp import RtpPacket

SETTINGS = settings(max_examples=200, deadline=None)
SERVER = ("127.0.0.1", 20000)
CALLER = ("127.0.0.1", 40000)
T0 = 1000.0  # small, so float times keep sub-microsecond precision
RTCP_RR = bytes.fromhex("80c90001deadbeef")  # an empty receiver report


def rtp(seq: int, ssrc: int = 0x1111, src: tuple[str, int] = SERVER,
        dst: tuple[str, int] = CALLER) -> bytes:
    packet = RtpPacket(0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc, b"\xff" * 160)
    return udp_frame(bytes(packet), src, dst)


def pcap(records: list[tuple[float, bytes]], snaplen: int | None = None) -> bytes:
    out = io.BytesIO()
    write_pcap(out, (PcapRecord(t, f if snaplen is None else f[:snaplen]) for t, f in records))
    return out.getvalue()


def stream(times_ms: list[float], first_seq: int = 100, **kw: object) -> list[tuple[float, bytes]]:
    return [(T0 + t / 1e3, rtp(first_seq + n, **kw)) for n, t in enumerate(times_ms)]  # type: ignore[arg-type]


def test_perfect_pacing_has_no_jitter() -> None:
    report = analyse_pcap(pcap(stream([20.0 * n for n in range(50)])))
    assert (report.streams, report.packets, report.intervals) == (1, 50, 49)
    assert report.jitter_max_ms == pytest.approx(0, abs=0.002)  # pcap keeps microseconds
    assert report.mean_interval_ms == pytest.approx(20.0, abs=0.001)
    assert (report.lost, report.gaps, report.reordered, report.over_10ms) == (0, 0, 0, 0)


def test_deviations_are_measured_from_20_ms() -> None:
    # Intervals 20, 25, 15, 20, 32: deviations 0, 5, 5, 0, 12 ms.
    report = analyse_frames(stream([0, 20, 45, 60, 80, 112]))
    assert report.jitter_max_ms == pytest.approx(12.0)
    assert report.jitter_p50_ms == pytest.approx(5.0)
    assert report.over_10ms == 1
    assert report.worst_stream_p99_ms == pytest.approx(12.0 - 0.04 * 7, abs=1e-6)


def test_lost_packet_counts_a_gap_and_is_judged_against_two_periods() -> None:
    frames = stream([0, 20, 40, 60])
    del frames[2]  # sequence 102 never captured: 20 -> 60 ms is two periods, on time
    report = analyse_frames(frames)
    assert (report.lost, report.gaps, report.intervals) == (1, 1, 2)
    assert report.jitter_max_ms == pytest.approx(0, abs=1e-3)


def test_streams_are_kept_apart_by_ports_and_ssrc() -> None:
    a = stream([0, 20, 40, 60], ssrc=1)
    b = stream([5, 30, 45, 65], ssrc=2)  # intervals 25, 15, 20
    c = stream([7, 27], ssrc=1, src=("127.0.0.1", 20002))
    frames = sorted(a + b + c)
    report = analyse_frames(frames)
    assert (report.streams, report.packets, report.intervals) == (3, 10, 7)
    assert report.jitter_max_ms == pytest.approx(5.0)
    assert report.lost == 0


def test_rtcp_and_non_rtp_frames_are_skipped() -> None:
    frames = stream([0, 20, 40])
    frames.insert(1, (T0 + 0.01, udp_frame(RTCP_RR, ("127.0.0.1", 20001), CALLER)))
    frames.insert(2, (T0 + 0.015, udp_frame(b"\x00" * 20, SERVER, CALLER)))  # version 0
    frames.insert(3, (T0 + 0.016, udp_frame(b"\x80", SERVER, CALLER)))  # too short
    frames.insert(0, (T0, b"\x00" * 12 + b"\x86\xdd" + b"\x00" * 60))  # IPv6 ethertype
    report = analyse_frames(frames)
    assert report.skipped_frames == 4
    assert (report.packets, report.intervals) == (3, 2)


def test_truncated_capture_is_enough() -> None:
    # dumpcap -s 64 keeps Ethernet + IPv4 + UDP + the 12-byte RTP header and no payload.
    data = pcap(stream([0, 20, 41, 60]), snaplen=64)
    report = analyse_pcap(data)
    assert report.intervals == 3
    assert report.jitter_max_ms == pytest.approx(1.0, abs=0.002)


def test_reordered_and_duplicate_packets_are_counted_and_skipped() -> None:
    frames = stream([0, 20, 40])
    frames.append((T0 + 0.045, rtp(101)))  # old
    frames.append((T0 + 0.046, rtp(102)))  # duplicate of the last
    frames += [(T0 + 0.060, rtp(103))]
    report = analyse_frames(frames)
    assert report.reordered == 2
    assert report.intervals == 3
    assert report.jitter_max_ms == pytest.approx(0, abs=1e-3)


def test_sequence_wrap_is_one_step() -> None:
    report = analyse_frames(stream([0, 20, 40, 60], first_seq=65534))
    assert (report.lost, report.gaps, report.intervals) == (0, 0, 3)


def test_window_and_port_range_filter() -> None:
    inside = stream([0, 20, 40, 60, 80])
    other = stream([0, 20, 40], src=("127.0.0.1", 5004), ssrc=9)
    frames = sorted(inside + other)
    report = analyse_frames(frames, window=(T0 + 0.015, T0 + 0.065), src_ports=(20000, 20100))
    assert report.streams == 1
    assert report.packets == 3  # 20, 40, 60 ms
    assert report.skipped_frames == 3  # the other stream's packets, outside the ports


def test_empty_capture_reports_nothing() -> None:
    report = analyse_pcap(pcap([]))
    assert report.streams == report.intervals == 0
    assert report.jitter_p99_ms is None and report.mean_interval_ms is None
    assert set(report.to_dict()) >= {"jitter_p50_ms", "jitter_p95_ms", "lost"}


def test_not_a_pcap_raises_capture_error() -> None:
    with pytest.raises(CaptureError, match="magic"):
        analyse_pcap(b"\x0a\x0d\x0d\x0a" + bytes(40))  # pcapng
    with pytest.raises(CaptureError, match="truncated"):
        analyse_pcap(pcap(stream([0, 20]))[:-200 - 16])


def test_bad_arguments_raise() -> None:
    with pytest.raises(CaptureError, match="ptime"):
        IntervalAnalyzer(0)
    with pytest.raises(CaptureError, match="window"):
        IntervalAnalyzer(window=(2.0, 1.0))


def test_rtp_fields_reads_ports_ssrc_and_sequence() -> None:
    assert rtp_fields(rtp(7, ssrc=0xABCDEF01)) == (20000, 40000, 0xABCDEF01, 7)
    assert rtp_fields(udp_frame(RTCP_RR, SERVER, CALLER)) is None


@SETTINGS
@given(st.lists(st.integers(min_value=1, max_value=60_000), min_size=1, max_size=60))
def test_max_jitter_is_the_largest_deviation(intervals_us: list[int]) -> None:
    times, t = [0.0], 0
    for dt in intervals_us:
        t += dt
        times.append(t / 1000)
    report = analyse_frames(stream(times))
    expected = max(abs(dt / 1000 - 20.0) for dt in intervals_us)
    assert report.intervals == len(intervals_us)
    assert report.jitter_max_ms == pytest.approx(expected, abs=1e-3)
    assert report.jitter_p50_ms is not None and report.jitter_p50_ms <= expected + 1e-6
