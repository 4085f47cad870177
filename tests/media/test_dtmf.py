from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.dtmf import (
    DtmfDecoder,
    DtmfError,
    DtmfEvent,
    DtmfPacket,
    digit_to_event,
    encode_digit,
    event_to_digit,
)

SETTINGS = settings(max_examples=200, deadline=None)


def test_parse_and_build_event() -> None:
    event = DtmfEvent.parse(bytes.fromhex("058a0320"))
    assert event == DtmfEvent(event=5, end=True, volume=10, duration=800)
    assert bytes(event) == bytes.fromhex("058a0320")
    assert bytes(DtmfEvent(11, False, 63, 0xFFFF)) == bytes.fromhex("0b3fffff")


def test_reserved_bit_is_ignored() -> None:
    assert DtmfEvent.parse(bytes.fromhex("05ca0320")) == DtmfEvent(5, True, 10, 800)


@pytest.mark.parametrize("size", [0, 3, 5, 8])
def test_payload_must_be_four_bytes(size: int) -> None:
    with pytest.raises(DtmfError, match=f"must be 4 bytes, got {size}"):
        DtmfEvent.parse(bytes(size))


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (DtmfEvent(256, False, 0, 0), "event code must be 0..255"),
        (DtmfEvent(1, False, 64, 0), "volume must be 0..63"),
        (DtmfEvent(1, False, -1, 0), "volume must be 0..63"),
        (DtmfEvent(1, False, 0, 65536), "duration must be 0..65535"),
    ],
)
def test_build_rejects_out_of_range(event: DtmfEvent, message: str) -> None:
    with pytest.raises(DtmfError, match=message):
        bytes(event)


def test_digit_mapping() -> None:
    assert [digit_to_event(d) for d in "0123456789*#ABCD"] == list(range(16))
    assert digit_to_event("c") == 14
    assert "".join(event_to_digit(e) for e in range(16)) == "0123456789*#ABCD"
    for bad in ("", "55", "E", "x", " "):
        with pytest.raises(DtmfError, match="not a DTMF digit"):
            digit_to_event(bad)
    with pytest.raises(DtmfError, match="event code 16 is not a DTMF digit"):
        event_to_digit(16)


# --- encoder ---


def test_encode_100ms_digit() -> None:
    packets = encode_digit("5")
    assert [p.event.duration for p in packets] == [160, 320, 480, 640, 800, 800, 800]
    assert [p.event.end for p in packets] == [False] * 4 + [True] * 3
    assert [p.marker for p in packets] == [True] + [False] * 6
    assert {p.timestamp_offset for p in packets} == {0}
    assert {(p.event.event, p.event.volume) for p in packets} == {(5, 10)}
    assert packets[0] == DtmfPacket(DtmfEvent(5, False, 10, 160), True, 0)
    assert packets[0] == (DtmfEvent(5, False, 10, 160), True, 0)  # a plain tuple too


def test_encode_odd_duration_and_48k_clock() -> None:
    packets = encode_digit("#", duration_ms=50, clock_rate=48000, volume=7)
    assert [(p.event.duration, p.event.end) for p in packets] == [
        (960, False),
        (1920, False),
        (2400, True),
        (2400, True),
        (2400, True),
    ]
    assert packets[0].event.event == 11


def test_encode_shorter_than_a_packet() -> None:
    packets = encode_digit("1", duration_ms=10)
    assert [(p.event.duration, p.event.end, p.marker) for p in packets] == [
        (80, True, True),
        (80, True, False),
        (80, True, False),
    ]


def test_encode_long_event_in_segments() -> None:
    packets = encode_digit("9", duration_ms=10_000)  # 80000 ticks > 65535
    offsets = [p.timestamp_offset for p in packets]
    assert offsets == sorted(offsets)
    assert set(offsets) == {0, 65535}
    first = [p for p in packets if p.timestamp_offset == 0]
    assert first[-1].event == DtmfEvent(9, False, 10, 65535)
    assert not any(p.event.end for p in first)
    assert [p.event for p in packets[-3:]] == [DtmfEvent(9, True, 10, 80000 - 65535)] * 3
    assert sum(p.marker for p in packets) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"digit": "X"}, "not a DTMF digit"),
        ({"digit": "1", "duration_ms": 0}, "duration must be positive"),
        ({"digit": "1", "packet_ms": 0}, "packet interval must be positive"),
        ({"digit": "1", "volume": 64}, "volume must be 0..63"),
        ({"digit": "1", "end_repeats": 0}, "end_repeats must be at least 1"),
    ],
)
def test_encode_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DtmfError, match=message):
        encode_digit(**kwargs)  # type: ignore[arg-type]


# --- decoder ---


def stream(digit: str, timestamp: int, **kwargs: int) -> list[tuple[int, bytes]]:
    return [
        ((timestamp + p.timestamp_offset) & 0xFFFFFFFF, bytes(p.event))
        for p in encode_digit(digit, **kwargs)
    ]


def decode(decoder: DtmfDecoder, packets: list[tuple[int, bytes]]) -> list[str]:
    return [d for ts, payload in packets if (d := decoder.push(ts, payload)) is not None]


def test_one_digit_per_event_without_marker() -> None:
    decoder = DtmfDecoder()
    packets = stream("5", 1000)
    assert decoder.push(*packets[0]) == "5"  # reported at once, no marker involved
    assert decode(decoder, packets[1:]) == []


def test_start_packets_lost_still_one_digit() -> None:
    decoder = DtmfDecoder()
    assert decode(decoder, stream("7", 1000)[-3:]) == ["7"]


def test_retransmitted_end_packets_ignored() -> None:
    decoder = DtmfDecoder()
    packets = stream("3", 1000)
    assert decode(decoder, packets + packets[-3:] * 3) == ["3"]


def test_same_key_again_is_a_new_digit() -> None:
    decoder = DtmfDecoder()
    packets = stream("5", 1000) + stream("5", 3000) + stream("5", 5000)
    assert decode(decoder, packets) == ["5", "5", "5"]


def test_late_packet_of_previous_event_ignored() -> None:
    decoder = DtmfDecoder()
    first, second = stream("1", 1000), stream("2", 3000)
    assert decode(decoder, first[:2] + second[:2] + first[2:] + second[2:]) == ["1", "2"]


def test_new_event_code_on_reused_timestamp() -> None:
    decoder = DtmfDecoder()
    assert decode(decoder, stream("1", 1000) + stream("2", 1000)) == ["1", "2"]


def test_non_digit_events_not_reported() -> None:
    decoder = DtmfDecoder()
    flash = bytes(DtmfEvent(16, False, 10, 160))
    assert decoder.push(500, flash) is None
    assert decoder.push(500, flash) is None
    assert decode(decoder, stream("4", 2000)) == ["4"]


def test_timestamp_wrap_between_events() -> None:
    decoder = DtmfDecoder()
    first, second = stream("8", 0xFFFFFF00), stream("9", 0x100)
    assert decode(decoder, first[:3] + second[:1] + first[3:] + second[1:]) == ["8", "9"]


def test_long_event_segments_are_one_digit() -> None:
    decoder = DtmfDecoder()
    packets = stream("0", 1000, duration_ms=20_000)  # three segments
    assert len({ts for ts, _ in packets}) == 3
    assert decode(decoder, packets) == ["0"]


def test_stream_restart_far_back_is_a_new_event() -> None:
    decoder = DtmfDecoder()
    assert decode(decoder, stream("1", 5_000_000) + stream("1", 1000)) == ["1", "1"]


def test_reset() -> None:
    decoder = DtmfDecoder()
    packets = stream("6", 1000)
    assert decode(decoder, packets) == ["6"]
    decoder.reset()
    assert decode(decoder, packets) == ["6"]


def test_bad_payload_raises() -> None:
    with pytest.raises(DtmfError, match="must be 4 bytes, got 2"):
        DtmfDecoder().push(0, b"\x01\x02")


# --- properties ---

events = st.builds(
    DtmfEvent,
    event=st.integers(0, 255),
    end=st.booleans(),
    volume=st.integers(0, 63),
    duration=st.integers(0, 0xFFFF),
)


@SETTINGS
@given(events)
def test_event_round_trip(event: DtmfEvent) -> None:
    assert DtmfEvent.parse(bytes(event)) == event


@SETTINGS
@given(st.binary(max_size=8))
def test_parse_arbitrary_bytes(data: bytes) -> None:
    try:
        event = DtmfEvent.parse(data)
    except DtmfError:
        assert len(data) != 4
        return
    assert bytes(event) == data[:1] + bytes((data[1] & 0xBF,)) + data[2:]  # R bit cleared


@st.composite
def key_presses(draw: st.DrawFn) -> tuple[str, list[tuple[int, bytes]]]:
    """Several key presses with loss, duplication and reordering inside each event."""
    digits = draw(st.text(alphabet="0123456789*#ABCD", min_size=1, max_size=6))
    timestamp = draw(st.integers(0, 0xFFFFFFFF))
    packets: list[tuple[int, bytes]] = []
    for digit in digits:
        duration = draw(st.integers(10, 300))
        event = stream(digit, timestamp, duration_ms=duration)
        kept = [p for p in event if draw(st.booleans())] or [draw(st.sampled_from(event))]
        kept += draw(st.lists(st.sampled_from(event), max_size=3))  # duplicates
        packets += draw(st.permutations(kept))
        timestamp = (timestamp + duration * 8 + draw(st.integers(0, 4000))) & 0xFFFFFFFF
    return digits, packets


@SETTINGS
@given(key_presses())
def test_decoder_reports_each_key_press_once(case: tuple[str, list[tuple[int, bytes]]]) -> None:
    digits, packets = case
    assert "".join(decode(DtmfDecoder(), packets)) == digits
