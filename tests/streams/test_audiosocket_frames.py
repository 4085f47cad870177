"""AudioSocket frame codec and stream framer: byte-exact round trips, specific errors, fuzz."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.audiosocket_frames import (
    AUDIO_RATES,
    AudioSocketError,
    Frame,
    FrameReader,
    FrameTooLongError,
    Kind,
    PayloadError,
    TruncatedFrameError,
    UnknownKindError,
    audio_frame,
    audio_header,
    dtmf_frame,
    error_frame,
    hangup_frame,
    kind_for_rate,
    uuid_frame,
)

CALL = uuid.UUID("40325ec2-5efd-4bd3-805f-53576e581d13")


def test_documented_frames_byte_exact() -> None:
    assert bytes(hangup_frame()) == b"\x00\x00\x00"  # the spec's own example
    assert bytes(uuid_frame(CALL)) == b"\x01\x00\x10" + CALL.bytes
    assert bytes(dtmf_frame("#")) == b"\x03\x00\x01#"
    assert bytes(audio_frame(bytes(320))) == b"\x10\x01\x40" + bytes(320)
    assert bytes(audio_frame(bytes(640), 16000)) == b"\x12\x02\x80" + bytes(640)
    assert bytes(error_frame(2)) == b"\xff\x00\x01\x02"
    assert bytes(error_frame()) == b"\xff\x00\x00"
    assert audio_header(8000, 320) == b"\x10\x01\x40"


def test_parse_accessors() -> None:
    assert Frame.parse(bytes(uuid_frame(str(CALL)))).uuid == CALL
    assert Frame.parse(b"\x03\x00\x015").digit == "5"
    assert Frame.parse(b"\xff\x00\x01\x04").error_code == 4
    assert Frame.parse(b"\xff\x00\x00").error_code is None
    frame = Frame.parse(b"\x12\x00\x04abcd")
    assert (frame.kind, frame.rate, frame.payload) == (Kind.SLIN_16K, 16000, b"abcd")
    assert Frame.parse(b"\x00\x00\x00").rate is None
    assert {kind_for_rate(rate) for rate in AUDIO_RATES.values()} == set(AUDIO_RATES)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"\x10\x00", TruncatedFrameError, "needs a 3-byte header, got 2"),
        (b"\x10\x00\x04ab", TruncatedFrameError, "announces 4 payload bytes, 2 follow"),
        (b"\x02\x00\x00", UnknownKindError, "unknown AudioSocket frame kind 0x02"),
        (b"\x01\x00\x0f" + bytes(15), PayloadError, "UUID payload must be 16 bytes, got 15"),
        (b"\x03\x00\x01x", PayloadError, "DTMF must be one digit"),
        (b"\x03\x00\x0212", PayloadError, "DTMF must be one digit"),
        (b"\x10\x00\x03abc", PayloadError, "whole 16-bit samples, got 3 bytes"),
        (b"\x00\x00\x01x", PayloadError, "hang-up carries no payload"),
    ],
)
def test_parse_errors_are_specific(data: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Frame.parse(data)


def test_builder_errors() -> None:
    with pytest.raises(PayloadError, match="not a DTMF digit"):
        dtmf_frame("11")
    with pytest.raises(PayloadError, match="no audio kind for 22050 Hz"):
        audio_frame(bytes(2), 22050)
    with pytest.raises(PayloadError, match="one byte"):
        error_frame(256)
    with pytest.raises(FrameTooLongError):
        Frame(Kind.SLIN_8K, bytes(65536))
    with pytest.raises(PayloadError, match="carries no UUID"):
        _ = hangup_frame().uuid


def test_reader_reassembles_split_stream() -> None:
    frames = [uuid_frame(CALL), audio_frame(bytes(range(256)) * 2), dtmf_frame("7"), hangup_frame()]
    wire = b"".join(bytes(f) for f in frames)
    for step in (1, 2, 3, 7, 100, len(wire)):
        reader = FrameReader(max_payload=1024)
        out: list[Frame] = []
        for i in range(0, len(wire), step):
            out += reader.feed(wire[i : i + step])
        assert out == frames
        assert reader.pending == 0


def test_reader_refuses_at_the_header() -> None:
    reader = FrameReader(max_payload=640)
    # The length is refused as soon as the header is in, before any payload arrives.
    with pytest.raises(FrameTooLongError, match="641 bytes exceeds the 640-byte limit"):
        reader.feed(b"\x10\x02\x81")
    with pytest.raises(AudioSocketError, match="already failed"):
        reader.feed(bytes(audio_frame(bytes(320))))
    reader = FrameReader()
    with pytest.raises(UnknownKindError) as info:
        reader.feed(bytes(audio_frame(bytes(4))) + b"\x42\x00\x00")
    assert info.value.kind == 0x42
    with pytest.raises(ValueError, match="max_payload"):
        FrameReader(max_payload=0)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_parse_raises_only_its_own_errors(data: bytes) -> None:
    try:
        frame = Frame.parse(data)
    except AudioSocketError:
        return
    assert bytes(frame) == data


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_fuzz_reader_raises_only_its_own_errors(chunks: list[bytes]) -> None:
    reader = FrameReader(max_payload=128)
    seen = b""
    try:
        for chunk in chunks:
            for frame in reader.feed(chunk):
                seen += bytes(frame)
    except AudioSocketError:
        return
    # Everything parsed re-serialises to the bytes it came from, in order.
    assert b"".join(chunks).startswith(seen)
    assert len(seen) + reader.pending == len(b"".join(chunks))


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([k for k in Kind if k not in (Kind.UUID, Kind.DTMF, Kind.HANGUP)]),
    st.binary(max_size=200).map(lambda b: b[: len(b) & ~1]),
)
def test_roundtrip(kind: Kind, payload: bytes) -> None:
    frame = Frame(kind, payload)
    assert Frame.parse(bytes(frame)) == frame
