"""The little of RFC 6455 a load-generating WebSocket client needs, as pure functions.

`handshake_request`/`check_handshake`: the HTTP/1.1 upgrade and its Sec-WebSocket-Accept.
`client_frame`: one masked client-to-server frame (RFC 6455 §5.3: a client masks every
frame, with a fresh key). `parse_frame`: where the next server frame in a buffer starts,
ends and what it is, or None while it is incomplete. No extensions are offered, so the
RSV bits must be clear; a server frame must not be masked, but one that is gets unmasked
by the caller via `unmask` rather than rejected (a load generator reports, it does not
police).
"""

from __future__ import annotations

import base64
import hashlib
import random
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HEADER = 8192  # an upgrade response longer than this is not one we understand

_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")
_U16 = struct.Struct("!H").unpack_from
_U64 = struct.Struct("!Q").unpack_from

try:  # aiohttp's C helper: masks a bytearray in place
    from aiohttp._websocket.helpers import websocket_mask as _mask_in_place
except ImportError:  # pragma: no cover - an aiohttp without it
    _mask_in_place = None


class HandshakeError(Exception):
    """The server did not upgrade the connection to a WebSocket as RFC 6455 §4.1 says."""


def new_key() -> str:
    return base64.b64encode(random.randbytes(16)).decode()


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def handshake_request(host: str, path: str, key: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def check_handshake(buf: bytes, key: str) -> int | None:
    """The length of the complete upgrade response at the start of `buf` (what follows is
    already WebSocket frames), None while it is incomplete; HandshakeError if it is not a
    101 with the right Sec-WebSocket-Accept."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEADER:
            raise HandshakeError("no end of the upgrade response")
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1.") or status[1] != "101":
        raise HandshakeError(f"not upgraded: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if headers.get("upgrade", "").lower() != "websocket":
        raise HandshakeError(f"Upgrade: {headers.get('upgrade')!r}")
    if "upgrade" not in headers.get("connection", "").lower():
        raise HandshakeError(f"Connection: {headers.get('connection')!r}")
    if headers.get("sec-websocket-accept") != accept_for(key):
        raise HandshakeError(f"Sec-WebSocket-Accept: {headers.get('sec-websocket-accept')!r}")
    return end + 4


def mask_int(key: bytes, payload: bytes) -> bytes:
    """`payload` XORed with the 4-byte `key` repeated, as one big-integer XOR (the
    fallback when aiohttp's C helper is not importable)."""
    n = len(payload)
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")).to_bytes(
        n, "little")


def mask(key: bytes, payload: bytes) -> bytes:
    """`payload` XORed with the 4-byte `key` repeated (its own inverse)."""
    if _mask_in_place is None:
        return mask_int(key, payload)
    data = bytearray(payload)
    _mask_in_place(key, data)
    return bytes(data)


unmask = mask


def client_frame(opcode: int, payload: bytes, key: bytes | None = None) -> bytes:
    """One final (FIN) masked frame; `key` a fresh random one unless given (tests)."""
    if key is None:
        key = random.randbytes(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = _LEN16.pack(0x80 | opcode, 0x80 | 126, n)
    else:
        head = _LEN64.pack(0x80 | opcode, 0x80 | 127, n)
    if _mask_in_place is not None:
        data = bytearray(payload)
        _mask_in_place(key, data)
        return head + key + data
    return head + key + mask_int(key, payload)


def parse_frame(buf: bytes | bytearray, pos: int = 0,
                ) -> tuple[bool, int, int, int, bytes | None] | None:
    """The frame starting at `buf[pos]`: (fin, opcode, payload start, payload end = the
    next frame's start, mask key or None), or None while `buf` does not hold all of it.
    ValueError for RSV bits (no extension was agreed)."""
    have = len(buf) - pos
    if have < 2:
        return None
    b0 = buf[pos]
    b1 = buf[pos + 1]
    if b0 & 0x70:
        raise ValueError(f"RSV bits set in frame byte 0x{b0:02x}")
    n = b1 & 0x7F
    start = pos + 2
    if n == 126:
        if have < 4:
            return None
        n = _U16(buf, pos + 2)[0]
        start += 2
    elif n == 127:
        if have < 10:
            return None
        n = _U64(buf, pos + 2)[0]
        start += 8
    key = None
    if b1 & 0x80:
        if len(buf) < start + 4:
            return None
        key = bytes(buf[start : start + 4])
        start += 4
    end = start + n
    if end > len(buf):
        return None
    return bool(b0 & 0x80), b0 & 0x0F, start, end, key
