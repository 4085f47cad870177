"""loadtest.ws_frames: the RFC 6455 examples, masking both ways, the three length forms,
and frames parsed from a stream cut at every point."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest import ws_frames as wf

SETTINGS = settings(max_examples=200, deadline=None)
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """An unmasked server-to-client frame, built independently of the module."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", b0, 126, n) + payload
    return struct.pack("!BBQ", b0, 127, n) + payload


def parse_all(data: bytes) -> tuple[list[tuple[bool, int, bytes]], int]:
    """Every complete frame in `data` (payloads unmasked), and where the rest starts."""
    out, pos = [], 0
    while (f := wf.parse_frame(data, pos)) is not None:
        fin, opcode, start, pos, key = f
        payload = data[start:pos]
        out.append((fin, opcode, wf.unmask(key, payload) if key else payload))
    return out, pos


def test_accept_is_the_rfc_example() -> None:
    assert wf.accept_for(RFC_KEY) == RFC_ACCEPT


def test_handshake_request_asks_for_an_upgrade() -> None:
    req = wf.handshake_request("127.0.0.1:8080", "/twilio/stream", RFC_KEY).decode()
    assert req.startswith("GET /twilio/stream HTTP/1.1\r\n")
    assert "\r\nUpgrade: websocket\r\n" in req and "\r\nConnection: Upgrade\r\n" in req
    assert f"\r\nSec-WebSocket-Key: {RFC_KEY}\r\n" in req
    assert req.endswith("\r\nSec-WebSocket-Version: 13\r\n\r\n")


def _response(accept: str = RFC_ACCEPT, status: str = "101 Switching Protocols") -> bytes:
    return (f"HTTP/1.1 {status}\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\nDate: x\r\n\r\n").encode()


def test_handshake_response_and_the_frames_after_it() -> None:
    resp = _response()
    data = resp + server_frame(wf.TEXT, b"hi")
    assert wf.check_handshake(data, RFC_KEY) == len(resp)
    for cut in range(len(resp)):
        assert wf.check_handshake(data[:cut], RFC_KEY) is None
    assert parse_all(data[len(resp):])[0] == [(True, wf.TEXT, b"hi")]


@pytest.mark.parametrize("resp", [
    _response(accept="AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    _response(status="400 Bad Request"),
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: " + RFC_ACCEPT.encode() + b"\r\n\r\n",
    b"x" * (wf.MAX_HEADER + 1),
])
def test_a_bad_handshake_is_refused(resp: bytes) -> None:
    with pytest.raises(wf.HandshakeError):
        wf.check_handshake(resp, RFC_KEY)


def test_rfc_examples_parse() -> None:  # RFC 6455 §5.7
    assert parse_all(bytes.fromhex("810548656c6c6f"))[0] == [(True, wf.TEXT, b"Hello")]
    masked = bytes.fromhex("818537fa213d7f9f4d5158")
    assert parse_all(masked)[0] == [(True, wf.TEXT, b"Hello")]
    fragments = bytes.fromhex("010348656c") + bytes.fromhex("80026c6f")
    assert parse_all(fragments)[0] == [(False, wf.TEXT, b"Hel"),
                                       (True, wf.CONTINUATION, b"lo")]
    ping = bytes.fromhex("890548656c6c6f")
    assert parse_all(ping)[0] == [(True, wf.PING, b"Hello")]
    binary256 = bytes.fromhex("827e0100") + bytes(256)
    assert parse_all(binary256)[0] == [(True, wf.BINARY, bytes(256))]
    binary64k = bytes.fromhex("827f0000000000010000") + bytes(65536)
    assert parse_all(binary64k)[0] == [(True, wf.BINARY, bytes(65536))]


def test_client_frame_is_the_rfc_masked_example() -> None:
    key = bytes.fromhex("37fa213d")
    assert wf.client_frame(wf.TEXT, b"Hello", key) == bytes.fromhex("818537fa213d7f9f4d5158")


@pytest.mark.parametrize("n", [0, 1, 125, 126, 300, 65535, 65536, 70001])
def test_client_frames_round_trip_at_every_length_form(n: int) -> None:
    payload = bytes(i % 251 for i in range(n))
    frame = wf.client_frame(wf.TEXT, payload)
    assert frame[1] & 0x80  # masked, as a client must
    header = 2 + (0 if n < 126 else 2 if n < 1 << 16 else 8) + 4
    assert len(frame) == header + n
    assert parse_all(frame) == ([(True, wf.TEXT, payload)], len(frame))


def test_each_frame_gets_its_own_mask_key() -> None:
    keys = {wf.client_frame(wf.TEXT, b"x" * 300)[4:8] for _ in range(20)}
    assert len(keys) > 1


@given(st.binary(min_size=4, max_size=4), st.binary(max_size=600))
@SETTINGS
def test_the_big_integer_mask_is_the_c_one(key: bytes, payload: bytes) -> None:
    assert wf.mask_int(key, payload) == wf.mask(key, payload)
    assert wf.mask_int(key, wf.mask_int(key, payload)) == payload


def test_rsv_bits_are_an_error() -> None:
    with pytest.raises(ValueError):
        wf.parse_frame(bytes.fromhex("c10548656c6c6f"))


frames_st = st.lists(st.tuples(st.sampled_from([wf.TEXT, wf.BINARY, wf.PING, wf.CLOSE]),
                               st.binary(max_size=400), st.booleans()), max_size=8)


@given(frames_st, st.lists(st.integers(1, 700), max_size=20))
@SETTINGS
def test_frames_split_anywhere_parse_as_sent(frames: list[tuple[int, bytes, bool]],
                                             chunks: list[int]) -> None:
    """Fed in arbitrary pieces, keeping the unparsed rest as a receiver does, the frames
    come out whole and in order: partial headers, partial 16-bit lengths, partial
    payloads and masked ones included."""
    wire = b"".join(wf.client_frame(op, p) if masked else server_frame(op, p)
                    for op, p, masked in frames)
    got, rest, at = [], b"", 0
    for size in [*chunks, len(wire)]:
        rest += wire[at : at + size]
        at += size
        parsed, used = parse_all(rest)
        got.extend(parsed)
        rest = rest[used:]
    assert rest == b""
    assert got == [(True, op, p) for op, p, _ in frames]
