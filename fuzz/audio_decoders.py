"""Audio payload decoders that take bytes from the wire: G.711 μ-law and A-law
(media.g711) and Opus (media.opus, libopus through ctypes).

The first input byte picks the decoder and the Opus rate, the rest is one RTP payload.
G.711 has no error: every byte is a sample. Opus raises OpusError only.
"""

from __future__ import annotations

from media.g711 import alaw_decode, ulaw_decode
from media.opus import OpusDecoder, OpusError

MAX_LEN = 1500
RATES = (8000, 12000, 16000, 24000, 48000)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    choice, payload = data[0], data[1:]
    if choice % 4 == 0:
        assert len(ulaw_decode(payload)) == 2 * len(payload)
        return
    if choice % 4 == 1:
        assert len(alaw_decode(payload)) == 2 * len(payload)
        return
    decoder = OpusDecoder(RATES[choice // 4 % len(RATES)])
    try:
        pcm = decoder.decode_fec(payload) if choice % 4 == 3 else decoder.decode(payload)
    except OpusError:
        return
    assert len(pcm) % 2 == 0
    decoder.conceal()
