"""RFC 4733 telephone-events (media.dtmf): DtmfEvent.parse and the DtmfDecoder state machine.

The documented error is DtmfError. The input is a run of packets, each an RTP timestamp
(4 bytes, big-endian), a length byte (mod 9) and that many payload bytes (4 is the
valid size), fed to one decoder.
"""

from __future__ import annotations

from media.dtmf import DtmfDecoder, DtmfError, DtmfEvent

MAX_LEN = 1024


def test_one_input(data: bytes) -> None:
    decoder = DtmfDecoder()
    pos = 0
    while pos + 5 <= len(data):
        timestamp = int.from_bytes(data[pos : pos + 4], "big")
        end = pos + 5 + data[pos + 4] % 9
        payload, pos = data[pos + 5 : end], end
        try:
            digit = decoder.push(timestamp, payload)
        except DtmfError:
            continue
        assert digit is None or (len(digit) == 1 and digit in "0123456789*#ABCD")
        event = DtmfEvent.parse(payload)
        assert DtmfEvent.parse(bytes(event)) == event
