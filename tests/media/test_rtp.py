from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.rtp import RtpError, RtpExtension, RtpPacket, is_rtcp, plain_packet

SETTINGS = settings(max_examples=200, deadline=None)

# A PCMU packet as a SIP phone sends it: V=2, PT=0, seq 0x1234, ts 0xA0, SSRC 0xDEADBEEF.
PCMU = bytes.fromhex("80001234000000a0deadbeef") + b"\xff" * 160

# Every optional part at once: V=2 P=1 X=1 CC=2, M=1 PT=96, then two CSRCs, an RFC 8285
# one-byte extension (one word), a 3-byte payload and 3 padding octets.
FULL = bytes.fromhex(
    "b2e0fffe"  # V/P/X/CC, M/PT, seq 65534
    "ffffff60"  # timestamp
    "01020304"  # SSRC
    "0000000a0000000b"  # CSRCs 10 and 11
    "bede0001"  # extension profile, 1 word
    "10ff0000"  # extension data: id 1, len 1, 0xff, padding
    "616263"  # payload "abc"
    "000003"  # padding, count 3
)


def test_parse_plain_pcmu() -> None:
    packet = RtpPacket.parse(PCMU)
    assert packet == RtpPacket(
        payload_type=0, sequence=0x1234, timestamp=0xA0, ssrc=0xDEADBEEF, payload=b"\xff" * 160
    )
    assert packet.marker is False
    assert type(packet.payload) is bytes
    assert bytes(packet) == PCMU


def test_parse_marker() -> None:
    data = bytearray(PCMU)
    data[1] = 0x80 | 8
    packet = RtpPacket.parse(bytes(data))
    assert packet.marker is True
    assert packet.payload_type == 8
    assert bytes(packet) == bytes(data)


def test_parse_every_optional_part() -> None:
    packet = RtpPacket.parse(FULL)
    assert packet == RtpPacket(
        payload_type=96,
        sequence=65534,
        timestamp=0xFFFFFF60,
        ssrc=0x01020304,
        payload=b"abc",
        marker=True,
        csrcs=(10, 11),
        extension=RtpExtension(0xBEDE, bytes.fromhex("10ff0000")),
        padding=3,
    )
    assert bytes(packet) == FULL


def test_padding_only_packet_is_valid() -> None:
    data = bytes.fromhex("a0000001000000000000000100000004")
    packet = RtpPacket.parse(data)
    assert packet.payload == b""
    assert packet.padding == 4
    assert bytes(packet) == data


def test_empty_extension_and_payload() -> None:
    data = bytes.fromhex("90000001000000000000000112340000")
    packet = RtpPacket.parse(data)
    assert packet.extension == RtpExtension(0x1234, b"")
    assert packet.payload == b""
    assert bytes(packet) == data


def test_accepts_bytearray_and_memoryview() -> None:
    for data in (bytearray(FULL), memoryview(FULL), bytearray(PCMU)):
        packet = RtpPacket.parse(data)
        assert type(packet.payload) is bytes
        assert bytes(packet) == bytes(data)


HEADER = bytes.fromhex("80000001000000000000000a")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short: 0 bytes"),
        (PCMU[:11], "too short: 11 bytes"),
        (b"\x40" + PCMU[1:], "version must be 2, got 1"),
        (b"\x00" + PCMU[1:], "version must be 2, got 0"),
        (b"\x81" + HEADER[1:], "CSRC list runs past the end: CC=1 needs 16 bytes, packet has 12"),
        (b"\x8f" + HEADER[1:] + bytes(56), "CC=15 needs 72 bytes, packet has 68"),
        (b"\x90" + HEADER[1:] + b"\xbe\xde", "extension header runs past the end"),
        (
            b"\x90" + HEADER[1:] + bytes.fromhex("bede0002") + bytes(4),
            "extension length runs past the end: 2 words need 24 bytes, packet has 20",
        ),
        (b"\xa0" + HEADER[1:] + b"abc\x00", "padding count is 0"),
        (
            b"\xa0" + HEADER[1:] + b"ab\x04",
            "padding count 4 is larger than the 3 bytes after the header",
        ),
        (
            b"\xb1" + HEADER[1:] + bytes(4) + bytes.fromhex("bede0000") + b"\x02",
            "padding count 2 is larger than the 1 bytes after the header",
        ),
    ],
)
def test_malformed_packets(data: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message):
        RtpPacket.parse(data)


def test_rtp_error_is_value_error() -> None:
    assert issubclass(RtpError, ValueError)


BASE = RtpPacket(payload_type=0, sequence=1, timestamp=2, ssrc=3, payload=b"x")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"payload_type": 128}, "payload type must be 0..127"),
        ({"payload_type": -1}, "payload type must be 0..127"),
        ({"sequence": 65536}, "sequence must be 0..65535"),
        ({"timestamp": 1 << 32}, "timestamp must be a 32-bit"),
        ({"ssrc": -1}, "SSRC must be a 32-bit"),
        ({"csrcs": tuple(range(16))}, "at most 15 CSRCs, got 16"),
        ({"csrcs": (1 << 32,)}, "CSRCs must be 32-bit"),
        ({"padding": 256}, "padding must be 0..255"),
        ({"extension": RtpExtension(0x10000, b"")}, "profile must be 16 bits"),
        ({"extension": RtpExtension(0xBEDE, b"abc")}, "whole 32-bit words, got 3 bytes"),
    ],
)
def test_build_rejects_unencodable_fields(changes: dict[str, object], message: str) -> None:
    from dataclasses import replace

    with pytest.raises(RtpError, match=message):
        bytes(replace(BASE, **changes))  # type: ignore[arg-type]


def test_build_marker_and_padding() -> None:
    packet = RtpPacket(8, 0xABCD, 160, 0x11223344, b"\xd5" * 4, marker=True, padding=2)
    assert bytes(packet) == bytes.fromhex("a088abcd000000a011223344d5d5d5d50002")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (bytes.fromhex("80c80006"), True),  # SR
        (bytes.fromhex("81c90007"), True),  # RR
        (bytes.fromhex("81cb0001"), True),  # BYE
        (bytes.fromhex("8fcd0003"), True),  # RTPFB (generic NACK)
        (PCMU, False),
        (bytes.fromhex("8080"), False),  # PCMU with marker
        (bytes.fromhex("80e5"), False),  # PT 101 telephone-event with marker
        (bytes.fromhex("8065"), False),  # PT 101 without marker
        (b"\x80", False),
        (b"", False),
    ],
)
def test_is_rtcp(data: bytes, expected: bool) -> None:
    assert is_rtcp(data) is expected


u32 = st.integers(0, 0xFFFFFFFF)
words = st.binary(max_size=64).map(lambda b: b[: len(b) - len(b) % 4])
packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 0xFFFF),
    timestamp=u32,
    ssrc=u32,
    payload=st.binary(max_size=300),
    marker=st.booleans(),
    csrcs=st.lists(u32, max_size=15).map(tuple),
    extension=st.none() | st.builds(RtpExtension, st.integers(0, 0xFFFF), words),
    padding=st.integers(0, 255),
)


@SETTINGS
@given(packets)
def test_parse_build_round_trip(packet: RtpPacket) -> None:
    data = bytes(packet)
    assert RtpPacket.parse(data) == packet
    assert bytes(RtpPacket.parse(data)) == data


def _zero_padding(data: bytes, padding: int) -> bytes:
    """Padding octets before the count are free-form; we rebuild them as zeros."""
    if padding <= 1:
        return data
    return data[:-padding] + bytes(padding - 1) + data[-1:]


# Bias the fuzz towards version 2 so it reaches past the version check.
fuzz = st.binary(max_size=120) | st.tuples(
    st.sampled_from([0x80, 0x81, 0x90, 0xA0, 0xB1]) | st.integers(0x80, 0xBF),
    st.binary(min_size=11, max_size=120),
).map(lambda t: bytes((t[0],)) + t[1])


@SETTINGS
@given(fuzz)
def test_parse_arbitrary_bytes_raises_only_rtp_error(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        return
    assert bytes(packet) == _zero_padding(data, packet.padding)


def test_plain_packet_is_the_dataclass() -> None:
    made = plain_packet(0, 65535, 0xFFFFFFFF, 0x53424F58, b"\xff" * 160)
    assert made == RtpPacket(0, 65535, 0xFFFFFFFF, 0x53424F58, b"\xff" * 160)
    assert type(made) is RtpPacket and not made.marker and made.padding == 0
    assert RtpPacket.parse(bytes(made)) == made
