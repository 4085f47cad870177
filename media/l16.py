"""L16: uncompressed 16-bit linear PCM, mono.

Two byte orders meet at our doors. RTP L16 (RFC 3551 §4.5.11) is big-endian, network
byte order. The socket doors (FreeSWITCH mod_audio_stream, Asterisk AudioSocket) send
little-endian. Inside Switchboard PCM is native-endian int16, which is little-endian on
every machine we run on; the helpers still swap correctly on a big-endian host.
"""

from __future__ import annotations

import sys
from array import array

_NATIVE_IS_BIG = sys.byteorder == "big"


class L16Error(ValueError):
    """A buffer that cannot be 16-bit PCM."""


def _swapped(data: bytes) -> bytes:
    samples = array("h")
    samples.frombytes(data)
    samples.byteswap()
    return samples.tobytes()


def _check_even(data: bytes, what: str) -> None:
    if len(data) % 2:
        raise L16Error(f"{what} must have an even number of bytes, got {len(data)}")


def pcm_to_l16_be(pcm: bytes) -> bytes:
    """Native PCM -> RTP L16 payload (network byte order)."""
    _check_even(pcm, "PCM16")
    return bytes(pcm) if _NATIVE_IS_BIG else _swapped(pcm)


def l16_be_to_pcm(data: bytes) -> bytes:
    """RTP L16 payload (network byte order) -> native PCM."""
    _check_even(data, "L16 payload")
    return bytes(data) if _NATIVE_IS_BIG else _swapped(data)


def check_l16_le(data: bytes) -> bytes:
    """Little-endian L16 from a socket door -> native PCM.

    On a little-endian host this only validates the length and returns the bytes as
    they are; the same call converts native PCM back to little-endian for sending.
    """
    _check_even(data, "L16 little-endian audio")
    return _swapped(data) if _NATIVE_IS_BIG else bytes(data)
