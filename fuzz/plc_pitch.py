"""The C pitch search (media._dsp.pitch, behind media.plc.G711Plc) against the numpy
search it replaces, on any history: the same lag, ties broken the same way, and
nothing escapes.

The first input byte picks the rate (8 or 16 kHz) and a gain; the rest, as int16,
fills the history (repeated to its length), so short inputs are periodic signals,
where several lags tie.
"""

from __future__ import annotations

import numpy as np

from media.plc import G711Plc

MAX_LEN = 4096
_PLC = {8000: G711Plc(8000), 16000: G711Plc(16000)}


def test_one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    choice, rest = data[0], data[1:]
    rest = rest[: len(rest) - len(rest) % 2]
    plc = _PLC[16000 if choice & 1 else 8000]
    samples = np.frombuffer(rest, dtype="<i2").astype(np.float64)
    gain = float(1 + (choice >> 1)) / 128.0  # quiet to full scale: the power floor matters
    src = np.rint(np.resize(samples, plc._history_len) * gain)
    got, want = plc._find_pitch(src), plc._find_pitch_numpy(src)
    assert got == want, (got, want)
