from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.rtcp import (
    Bye,
    ReceiverReport,
    ReceptionStats,
    ReportBlock,
    RtcpError,
    RtcpUnknown,
    Sdes,
    SdesChunk,
    SenderReport,
    build_compound,
    ntp_from_unix,
    ntp_middle,
    parse_compound,
)

SETTINGS = settings(max_examples=200, deadline=None)

SR = bytes.fromhex(
    "80c80006"  # V=2 RC=0 PT=200 length 6
    "11223344"  # SSRC
    "e83c4d1a80000000"  # NTP
    "000000a0"  # RTP timestamp
    "00000064"  # packets 100
    "00003e80"  # octets 16000
)
BLOCK = bytes.fromhex(
    "aabbccdd"  # source SSRC
    "40fffffe"  # fraction 64/256, cumulative lost -2
    "00010005"  # extended highest seq: 1 cycle, seq 5
    "00000010"  # jitter 16
    "4d1a8000"  # LSR
    "00010000"  # DLSR: one second
)
RR = bytes.fromhex("81c90007" "55667788") + BLOCK
SDES = bytes.fromhex("81ca0003" "11223344" "0105") + b"u@h.a" + b"\x00"
BYE = bytes.fromhex("81cb0003" "11223344" "04") + b"bye!" + bytes(3)
APP = bytes.fromhex("80cc0002" "11223344") + b"name"


def test_parse_sender_report() -> None:
    assert SenderReport.parse(SR) == SenderReport(
        ssrc=0x11223344,
        ntp_timestamp=0xE83C4D1A80000000,
        rtp_timestamp=160,
        packet_count=100,
        octet_count=16000,
    )
    assert bytes(SenderReport.parse(SR)) == SR


def test_parse_receiver_report_with_block() -> None:
    rr = ReceiverReport.parse(RR)
    assert rr == ReceiverReport(
        0x55667788,
        (ReportBlock(0xAABBCCDD, 64, -2, 0x10005, 16, 0x4D1A8000, 0x10000),),
    )
    assert bytes(rr) == RR
    assert ReportBlock.parse(BLOCK) == rr.reports[0]


def test_sdes_bye_app() -> None:
    assert Sdes.parse(SDES) == Sdes.cname(0x11223344, "u@h.a")
    assert bytes(Sdes.cname(0x11223344, "u@h.a")) == SDES
    assert Bye.parse(BYE) == Bye((0x11223344,), b"bye!")
    assert bytes(Bye((0x11223344,), b"bye!")) == BYE
    assert RtcpUnknown.parse(APP) == RtcpUnknown(204, 0, bytes.fromhex("11223344") + b"name")
    assert bytes(RtcpUnknown.parse(APP)) == APP


def test_compound_round_trip() -> None:
    data = RR + SDES + BYE + APP + SR
    packets = parse_compound(data)
    assert [type(p) for p in packets] == [ReceiverReport, Sdes, Bye, RtcpUnknown, SenderReport]
    assert build_compound(packets) == data


def test_sdes_chunks_end_on_word_boundaries() -> None:
    # Item of 6 bytes + 2 = 8: the END needs a whole extra word of nulls.
    sdes = Sdes((SdesChunk(1, ((1, b"abcdef"),)), SdesChunk(2, ()), SdesChunk(3, ((2, b""),))))
    data = bytes(sdes)
    assert len(data) % 4 == 0
    assert data == bytes.fromhex(
        "83ca0008" "00000001" "0106616263646566" "00000000" "00000002" "00000000"
        "00000003" "02000000"
    )
    assert Sdes.parse(data) == sdes


def test_padding_is_removed() -> None:
    padded = bytes.fromhex("a0c90002" "55667788" "00000004")
    assert ReceiverReport.parse(padded) == ReceiverReport(0x55667788)
    odd_app = RtcpUnknown(204, 1, b"abcde")
    data = bytes(odd_app)
    assert data == bytes.fromhex("a1cc0002") + b"abcde" + bytes.fromhex("000003")
    assert parse_compound(data) == [odd_app]


def test_report_block_signed_loss() -> None:
    block = ReportBlock(1, 0, -0x800000, 0, 0)
    assert bytes(block)[4:8] == bytes.fromhex("00800000")
    assert ReportBlock.parse(bytes(block)) == block
    assert ReportBlock.parse(bytes(ReportBlock(1, 255, 0x7FFFFF, 0, 0))).cumulative_lost == 0x7FFFFF


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty RTCP packet"),
        (b"\x80\xc9\x00", "header at byte 0 is truncated"),
        (SR[:-4], "packet at byte 0 says 28 bytes, only 24 left"),
        (RR + b"\x81", "header at byte 32 is truncated"),
        (b"\x40" + SR[1:], "version must be 2, got 1"),
        (bytes.fromhex("80c80001" "11223344"), "SR body too short: 4 bytes"),
        (bytes.fromhex("81c80006") + SR[4:], "SR with 1 report blocks needs a 48-byte body"),
        (bytes.fromhex("80c90000"), "RR body too short: 0 bytes"),
        (bytes.fromhex("82c90007" "55667788") + BLOCK, "RR with 2 report blocks"),
        (bytes.fromhex("a0c90001" "55667700"), "padding count is 0"),
        (bytes.fromhex("a0c90001" "55667709"), "padding count 9 is larger than the 4-byte body"),
        (
            bytes.fromhex("a0c90002" "55667788" "00000003"),
            "RR profile extension must be whole 32-bit words, got 1 bytes",
        ),
        (bytes.fromhex("81ca0001" "11223344"), "SDES chunk has no END item"),
        (bytes.fromhex("81ca0002" "11223344" "0108aaaa"), "SDES item at byte 4 runs past the end"),
        (bytes.fromhex("82ca0002" "11223344" "00000000"), "SDES chunk at byte 8 runs past"),
        (bytes.fromhex("82cb0001" "11223344"), "BYE with 2 sources needs 8 bytes, has 4"),
        (bytes.fromhex("81cb0002" "11223344" "09616263"), "BYE reason of 9 bytes runs past"),
    ],
)
def test_malformed_compound(data: bytes, message: str) -> None:
    with pytest.raises(RtcpError, match=message):
        parse_compound(data)


def test_single_packet_parsers_check_type_and_length() -> None:
    with pytest.raises(RtcpError, match="expected RTCP packet type 200, got 201"):
        SenderReport.parse(RR)
    with pytest.raises(RtcpError, match="length field says 28 bytes, packet has 32"):
        SenderReport.parse(SR + bytes(4))
    with pytest.raises(RtcpError, match="too short: 2 bytes"):
        Bye.parse(b"\x80\xcb")
    with pytest.raises(RtcpError, match="report block must be 24 bytes, got 23"):
        ReportBlock.parse(BLOCK[:-1])


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (ReportBlock(1, 256, 0, 0, 0), "fraction lost must be 0..255"),
        (ReportBlock(1, 0, 0x800000, 0, 0), "cumulative lost must fit 24 signed bits"),
        (ReportBlock(1, 0, 0, 1 << 32, 0), "out of 32-bit range"),
        (ReceiverReport(1, (ReportBlock(1, 0, 0, 0, 0),) * 32), "count field must be 0..31"),
        (ReceiverReport(1, (), b"abc"), "whole 32-bit words, got 3 bytes"),
        (SenderReport(1, 1 << 64, 0, 0, 0), "SR field out of range"),
        (Bye(tuple(range(32))), "32 sources"),
        (Sdes((SdesChunk(1, ((0, b"x"),)),)), "bad SDES item: type 0"),
        (RtcpUnknown(256, 0, b""), "packet type must be 0..255"),
    ],
)
def test_build_rejects_unencodable_fields(packet: object, message: str) -> None:
    with pytest.raises(RtcpError, match=message):
        bytes(packet)  # type: ignore[call-overload]


def test_ntp_helpers() -> None:
    assert ntp_from_unix(0.0) == 2_208_988_800 << 32
    assert ntp_from_unix(1.5) == ((2_208_988_801 << 32) | 0x80000000)
    assert ntp_middle(0xE83C4D1A80000000) == 0x4D1A8000


# --- ReceptionStats, against values worked out by hand from RFC 3550 A.1, A.3, A.8 ---


def feed(stats: ReceptionStats, seqs: list[int], rate: int = 8000) -> list[bool]:
    """Packets 20 ms apart with matching timestamps: no jitter."""
    return [stats.update(s, 160 * i, 0.02 * i, rate) for i, s in enumerate(seqs)]


def test_probation_needs_two_in_sequence() -> None:
    stats = ReceptionStats()
    assert feed(stats, [100, 101, 102, 103]) == [False, True, True, True]
    assert (stats.received, stats.expected, stats.lost) == (3, 3, 0)
    assert stats.extended_max == 103


def test_probation_restarts_on_gap() -> None:
    stats = ReceptionStats()
    assert feed(stats, [100, 105, 106, 107]) == [False, False, True, True]
    assert (stats.received, stats.expected) == (2, 2)


def test_min_sequential_one_accepts_first_packet() -> None:
    stats = ReceptionStats(min_sequential=1)
    assert feed(stats, [100]) == [True]
    assert (stats.received, stats.expected, stats.lost, stats.fraction_lost) == (1, 1, 0, 0)


def test_empty_stats() -> None:
    stats = ReceptionStats()
    assert (stats.received, stats.expected, stats.lost, stats.fraction_lost, stats.jitter) == (
        0, 0, 0, 0, 0,
    )
    assert stats.report_block(7) == ReportBlock(7, 0, 0, 0, 0, 0, 0)


def test_loss_and_fraction_per_interval() -> None:
    stats = ReceptionStats(min_sequential=1)
    feed(stats, [s for s in range(10) if s not in (3, 7)])
    assert (stats.expected, stats.received, stats.lost) == (10, 8, 2)
    assert stats.fraction_lost == 51  # (2 << 8) // 10
    assert stats.fraction_lost == 51  # reading it does not start a new interval
    block = stats.report_block(0xAB)
    assert (block.ssrc, block.fraction_lost, block.cumulative_lost) == (0xAB, 51, 2)
    assert block.highest_sequence == 9

    for s in range(10, 20):
        if s != 15:
            stats.update(s, 160 * s, 0.02 * s, 8000)
    assert stats.fraction_lost == 25  # (1 << 8) // 10
    block = stats.report_block(0xAB)
    assert (block.fraction_lost, block.cumulative_lost, block.highest_sequence) == (25, 3, 19)
    assert stats.report_block(0xAB).fraction_lost == 0  # nothing new since


def test_wrap_around_counts_a_cycle() -> None:
    stats = ReceptionStats(min_sequential=1)
    feed(stats, [65534, 65535, 0, 2])
    assert stats.extended_max == 65536 + 2
    assert (stats.expected, stats.received, stats.lost) == (5, 4, 1)
    assert stats.report_block(1).highest_sequence == 0x00010002


def test_duplicates_make_loss_negative_and_fraction_zero() -> None:
    stats = ReceptionStats(min_sequential=1)
    feed(stats, [0, 1, 2, 2, 3])
    assert (stats.expected, stats.received, stats.lost, stats.fraction_lost) == (4, 5, -1, 0)
    block = stats.report_block(1)
    assert ReportBlock.parse(bytes(block)).cumulative_lost == -1


def test_reordered_packet_is_not_a_wrap() -> None:
    stats = ReceptionStats(min_sequential=1)
    feed(stats, [0, 1, 3, 2, 4])
    assert (stats.expected, stats.received, stats.lost, stats.extended_max) == (5, 5, 0, 4)


def test_dropout_below_max_is_loss() -> None:
    stats = ReceptionStats(min_sequential=1)
    feed(stats, [0, 2999])
    assert (stats.expected, stats.received, stats.lost) == (3000, 2, 2998)


def test_single_big_jump_is_ignored_then_sequence_resumes() -> None:
    stats = ReceptionStats(min_sequential=1)
    assert feed(stats, [0, 1, 2, 20000, 3]) == [True, True, True, False, True]
    assert (stats.expected, stats.received) == (4, 4)


def test_two_sequential_packets_after_big_jump_restart_the_source() -> None:
    stats = ReceptionStats(min_sequential=1)
    assert feed(stats, [0, 1, 2, 20000, 20001, 20002]) == [True, True, True, False, True, True]
    assert (stats.expected, stats.received, stats.extended_max) == (2, 2, 20002)


def test_restart_does_not_count_the_timestamp_jump_as_jitter() -> None:
    stats = ReceptionStats(min_sequential=1)
    feed(stats, [0, 1, 2])
    for i, seq in enumerate([20000, 20001, 20002], start=3):
        stats.update(seq, 9_000_000 + 160 * i, 0.02 * i, 8000)
    assert (stats.expected, stats.received, stats.jitter) == (2, 2, 0)


def test_jitter_hand_computed() -> None:
    """A.8 integer form, J16 += |D| - ((J16 + 8) >> 4), reported as J16 >> 4.
    Delays 0, 160, 0, 320, 320 ticks give |D| = 160, 160, 320, 0 and
    J16 = 160, 310, 611, 573, so jitter 10, 19, 38, 35."""
    stats = ReceptionStats(min_sequential=1)
    seen = []
    for i, delay in enumerate([0, 160, 0, 320, 320]):
        stats.update(i, 160 * i, (160 * i + delay) / 8000, 8000)
        seen.append(stats.jitter)
    assert seen == [0, 10, 19, 38, 35]
    assert stats.report_block(1).jitter == 35


def test_jitter_small_swings_hand_computed() -> None:
    """Delays 0, 8, 0, 24, 24 ticks: J16 = 8, 15, 38, 36, so jitter 0, 0, 2, 2."""
    stats = ReceptionStats(min_sequential=1)
    seen = []
    for i, delay in enumerate([0, 8, 0, 24, 24]):
        stats.update(i, 160 * i, (160 * i + delay) / 8000, 8000)
        seen.append(stats.jitter)
    assert seen == [0, 0, 0, 2, 2]


def test_rejected_packets_do_not_touch_jitter() -> None:
    stats = ReceptionStats()
    assert not stats.update(0, 0, 5.0, 8000)  # probation; a wild arrival time
    stats.update(1, 160, 0.02, 8000)
    stats.update(2, 320, 0.04, 8000)
    assert stats.jitter == 0


def test_jitter_converges_to_the_swing() -> None:
    stats = ReceptionStats(min_sequential=1)
    for i in range(400):
        stats.update(i, 160 * i, (160 * i + 160 * (i % 2)) / 8000, 8000)
    # Fixed point of J += D - (J + 8) >> 4 with D = 160 is J*16 = 16*160 - 8 .. -(-1).
    assert 150 <= stats.jitter <= 160


def test_jitter_across_timestamp_wrap_and_48k_clock() -> None:
    stats = ReceptionStats(min_sequential=1)
    start = 0xFFFFFFFF - 960 * 2
    for i in range(6):
        stats.update(i, (start + 960 * i) & 0xFFFFFFFF, 1000.0 + 0.02 * i, 48000)
    assert stats.jitter == 0


def test_lsr_and_dlsr() -> None:
    stats = ReceptionStats(min_sequential=1)
    feed(stats, [0, 1])
    stats.note_sender_report(0xE83C4D1A80000000, arrival_seconds=10.0)
    block = stats.report_block(5, now=10.5)
    assert (block.lsr, block.dlsr) == (0x4D1A8000, 32768)
    assert stats.report_block(5).dlsr == 0  # no `now`, no delay


# --- property tests ---

u32 = st.integers(0, 0xFFFFFFFF)
blocks = st.builds(
    ReportBlock,
    ssrc=u32,
    fraction_lost=st.integers(0, 255),
    cumulative_lost=st.integers(-0x800000, 0x7FFFFF),
    highest_sequence=u32,
    jitter=u32,
    lsr=u32,
    dlsr=u32,
)
block_lists = st.lists(blocks, max_size=31).map(tuple)
extensions = st.binary(max_size=16).map(lambda b: b[: len(b) - len(b) % 4])
sender_reports = st.builds(
    SenderReport,
    ssrc=u32,
    ntp_timestamp=st.integers(0, 2**64 - 1),
    rtp_timestamp=u32,
    packet_count=u32,
    octet_count=u32,
    reports=block_lists,
    extension=extensions,
)
receiver_reports = st.builds(ReceiverReport, ssrc=u32, reports=block_lists, extension=extensions)
sdes = st.builds(
    Sdes,
    st.lists(
        st.builds(
            SdesChunk,
            u32,
            st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=40)), max_size=4).map(
                tuple
            ),
        ),
        max_size=31,
    ).map(tuple),
)
byes = st.builds(Bye, st.lists(u32, max_size=31).map(tuple), st.binary(max_size=255))
unknowns = st.builds(
    RtcpUnknown,
    st.integers(0, 255).filter(lambda t: not 200 <= t <= 203),
    st.integers(0, 31),
    st.binary(max_size=64),
)


@SETTINGS
@given(st.one_of(sender_reports, receiver_reports))
def test_report_round_trip(report: SenderReport | ReceiverReport) -> None:
    data = bytes(report)
    assert type(report).parse(data) == report
    assert bytes(type(report).parse(data)) == data


@SETTINGS
@given(st.lists(st.one_of(sender_reports, receiver_reports, sdes, byes, unknowns), min_size=1,
                max_size=5))
def test_compound_property_round_trip(packets: list) -> None:
    assert parse_compound(build_compound(packets)) == packets


def _framed(first: int, packet_type: int, body: bytes) -> bytes:
    """A header whose length field matches the (word-trimmed) random body."""
    body = body[: len(body) - len(body) % 4]
    return bytes((first, packet_type)) + (len(body) // 4).to_bytes(2, "big") + body


rtcp_fuzz = st.binary(max_size=200) | st.lists(
    st.builds(
        _framed,
        st.sampled_from([0x80, 0x81, 0x82, 0xA0, 0xA1]) | st.integers(0, 0xFF),
        st.sampled_from([200, 201, 202, 203, 204, 205]),
        st.binary(max_size=120),
    ),
    min_size=1,
    max_size=3,
).map(b"".join)


@SETTINGS
@given(rtcp_fuzz)
def test_parse_arbitrary_bytes_raises_only_rtcp_error(data: bytes) -> None:
    try:
        packets = parse_compound(data)
    except RtcpError:
        return
    # Whatever parses must build again and mean the same thing.
    assert parse_compound(build_compound(packets)) == packets
