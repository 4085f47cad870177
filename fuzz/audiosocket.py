"""Asterisk AudioSocket framing (streams.audiosocket_frames): FrameReader on the TCP
stream and Frame.parse on one whole frame.

The documented error is AudioSocketError (and its subclasses). The first input byte sets
the chunk size (1-256) the rest of the stream arrives in. Frames must build back to the
bytes they came from and give the field their kind carries.
"""

from __future__ import annotations

from streams.audiosocket_frames import AudioSocketError, Frame, FrameReader, Kind

MAX_LEN = 8192


def _read(frame: Frame) -> None:
    if frame.kind is Kind.UUID:
        frame.uuid  # noqa: B018
    elif frame.kind is Kind.DTMF:
        frame.digit  # noqa: B018
    elif frame.kind is Kind.ERROR:
        frame.error_code  # noqa: B018
    else:
        frame.rate  # noqa: B018
    assert Frame.parse(bytes(frame)) == frame


def test_one_input(data: bytes) -> None:
    if not data:
        return
    try:
        _read(Frame.parse(data[1:]))
    except AudioSocketError:
        pass
    reader = FrameReader()
    size = data[0] + 1
    for start in range(1, len(data), size):
        try:
            frames = reader.feed(data[start : start + size])
        except AudioSocketError:
            return
        for frame in frames:
            _read(frame)
