"""The C 2:1 resampling kernels (media._dsp, behind media.resample) against the numpy
engines they replace, on any chunking of any samples: the same output, to one step
where an exact .5 tie may round either way, and nothing escapes.

The first input byte picks doubling or halving and how the rest is cut into chunks
(an odd-length chunk leaves the halver a sample over; a chunk may be empty).
"""

from __future__ import annotations

import numpy as np

from media.resample import _Doubler, _FastDoubler, _FastHalver, _Halver

MAX_LEN = 4096


def test_one_input(data: bytes) -> None:
    if not data:
        return
    choice, rest = data[0], data[1:]
    rest = rest[: len(rest) - len(rest) % 2]
    fast, ref = (_FastDoubler(), _Doubler()) if choice & 1 else (_FastHalver(), _Halver())
    step = 2 * (1 + (choice >> 1))  # 1..128 samples a chunk
    got, want = b"", b""
    for at in range(0, len(rest), step):
        chunk = rest[at:at + step]
        got += fast.process(chunk)
        want += ref.process(np.frombuffer(chunk, dtype=np.int16))
    got += fast.flush()
    want += ref.flush()
    assert len(got) == len(want), (len(got), len(want))
    diff = np.frombuffer(got, np.int16).astype(int) - np.frombuffer(want, np.int16)
    assert not diff.size or np.abs(diff).max() <= 1
