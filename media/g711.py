"""G.711 μ-law (PCMU) and A-law (PCMA): 8 kHz, one byte per sample.

PCM on our side is always native-endian signed 16-bit (little-endian on every machine
we run on). The stdlib audioop C code does the table work; on Python >= 3.13 the
`audioop-lts` package provides the same module.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SAMPLE_RATE = 8000
SAMPLES_PER_FRAME = 160  # 20 ms
ULAW_SILENCE = b"\xff"
ALAW_SILENCE = b"\xd5"


def _check_pcm(pcm: bytes) -> None:
    if len(pcm) % 2:
        raise ValueError(f"PCM16 must have an even number of bytes, got {len(pcm)}")


def ulaw_encode(pcm: bytes) -> bytes:
    _check_pcm(pcm)
    return audioop.lin2ulaw(pcm, 2)


def ulaw_decode(data: bytes) -> bytes:
    return audioop.ulaw2lin(data, 2)


def alaw_encode(pcm: bytes) -> bytes:
    _check_pcm(pcm)
    return audioop.lin2alaw(pcm, 2)


def alaw_decode(data: bytes) -> bytes:
    return audioop.alaw2lin(data, 2)
