"""Packet loss concealment for G.711 (and any 8/16 kHz PCM), after ITU-T G.711 Appendix I.

During a loss the last pitch period of the signal is repeated:
- the pitch (40..120 samples at 8 kHz, i.e. 66..200 Hz) is the lag with the best
  normalised cross-correlation between the last 20 ms and the history, searched on a 2:1
  decimated signal and then refined at full rate;
- the period is looped with a quarter-period overlap-add at the loop point so it does
  not click, and the real signal is cross-faded into the synthetic one the same way;
- after 10 ms a second period joins the loop, after 20 ms a third (a longer loop sounds
  less buzzy), each change cross-faded;
- from 10 ms on the gain falls linearly by 20 % per 10 ms, so the output is silent after
  60 ms of consecutive loss;
- the first real frame after a loss starts with an overlap-add from the synthetic
  signal, 1/4 period long plus 4 ms per extra 10 ms lost, at most 10 ms.

The cross-fade into the loss needs samples that have not been played yet, so the output
runs `delay_samples` (3.75 ms) behind the input, as in the Recommendation.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from media.resample import round_to_pcm

try:
    from media import _dsp  # the pitch search in C (see media.resample for the build)
except ImportError:  # pragma: no cover - media.resample warns once about the missing build
    _dsp = None

__all__ = ["G711Plc"]

_ATTENUATION = 0.2  # gain lost per 10 ms once concealment passes 10 ms
_MIN_POWER = 250.0  # floor of the correlation normaliser, so silence finds no pitch
_MUTE_AFTER = 6  # 10 ms sub-frames of concealment before the output is silent


# Concealment runs on every stream at once when the network hiccups, so its per-call
# numpy overhead counts: the ramps below are made once per length, and the rounding is
# media.resample's (clipping ufuncs, in place; np.clip's wrapper costs more than the work).
_RAMPS: dict[int, tuple[np.ndarray, np.ndarray]] = {}
_COUNTS: dict[int, np.ndarray] = {}


def _crossfade(fade_out: np.ndarray, fade_in: np.ndarray) -> np.ndarray:
    """Linear overlap-add: starts almost all `fade_out`, ends all `fade_in`."""
    n = len(fade_out)
    ramp = _RAMPS.get(n)
    if ramp is None:
        w = np.arange(1, n + 1, dtype=np.float64) / n
        ramp = _RAMPS[n] = (1.0 - w, w)
    return fade_out * ramp[0] + fade_in * ramp[1]


def _count(n: int) -> np.ndarray:
    """0, 1, ..., n-1 as int64 (shared: never write to it)."""
    got = _COUNTS.get(n)
    if got is None:
        got = _COUNTS[n] = np.arange(n)
    return got


class G711Plc:
    """Concealment state for one stream. Feed every real frame through frame_ok() and call
    conceal() for every lost one; both return the PCM to play (delayed by delay_samples)."""

    def __init__(self, rate: int = 8000) -> None:
        if rate not in (8000, 16000):
            raise ValueError(f"G711Plc works at 8000 or 16000 Hz, got {rate}")
        k = rate // 8000
        self.rate = rate
        self._pitch_min = 40 * k
        self._pitch_max = 120 * k
        self._ola_max = self._pitch_max // 4
        self._history_len = 3 * self._pitch_max + self._ola_max
        self._corr_len = 160 * k  # 20 ms compared against the past
        self._decimation = 2 * k
        self._sub = 80 * k  # 10 ms: the unit of the gain and loop-length schedule
        self._end_ola_step = 32 * k  # 4 ms more end overlap per extra 10 ms lost
        self.reset()

    def reset(self) -> None:
        """Forget the history (a new stream)."""
        # The last history_len samples, as int16 bytes: the loss-free path is byte slicing.
        self._history = bytes(2 * self._history_len)
        self._erased = 0  # 10 ms sub-frames concealed in a row
        # The pitch loop, set up when a loss starts.
        self._loop_src = np.zeros(self._history_len)
        self._pitch = self._pitch_max
        self._overlap = self._ola_max
        self._loop_len = 0
        self._offset = 0
        self._tail = np.zeros(0)

    @property
    def delay_samples(self) -> int:
        """How far the output runs behind the input."""
        return self._ola_max

    @property
    def concealing(self) -> bool:
        return self._erased > 0

    @property
    def muted(self) -> bool:
        """Concealment has run long enough that it only produces silence."""
        return self._erased >= _MUTE_AFTER

    # -- real frames -----------------------------------------------------------------

    def frame_ok(self, pcm: bytes, discontinuity: bool = False) -> bytes:
        """Record a real frame and return the PCM to play. After a loss it fades in from
        the synthetic signal; with `discontinuity` (frames were dropped just before, to
        shrink the jitter delay) it cross-fades from a pitch continuation the same way."""
        if len(pcm) % 2:
            raise ValueError(f"PCM16 must have an even number of bytes, got {len(pcm)}")
        if discontinuity and not self._erased and pcm:
            self._start_loop(touch_history=False)
            self._erased = 1
        if self._erased and pcm:
            frame = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
            olen = min(
                self._overlap + (self._erased - 1) * self._end_ola_step, self._sub, len(frame)
            )
            synthetic = self._read_loop(olen)
            gain = max(0.0, 1.0 - (self._erased - 1) * _ATTENUATION)
            frame[:olen] = _crossfade(synthetic * gain, frame[:olen])
            self._erased = 0
            pcm = round_to_pcm(frame)
        return self._save(bytes(pcm))

    # -- lost frames -----------------------------------------------------------------

    def conceal(self, samples: int | None = None) -> bytes:
        """Synthesise `samples` (default 20 ms; a multiple of 10 ms) for a lost frame."""
        sub = self._sub
        count = 2 * sub if samples is None else samples
        if count <= 0 or count % sub:
            raise ValueError(f"conceal() needs a positive multiple of {sub} samples, got {count}")
        subs = (round_to_pcm(self._synthesise_sub()) for _ in range(count // sub))
        return b"".join(self._save(pcm) for pcm in subs)

    def _synthesise_sub(self) -> np.ndarray:
        """One 10 ms sub-frame of concealment, following the Appendix I schedule."""
        sub = self._sub
        erased = self._erased
        if erased == 0:
            self._start_loop(touch_history=True)
            out = self._read_loop(sub)
        elif erased in (1, 2):
            # Lengthen the loop by a period; cross-fade the old loop into the new one.
            resume = self._offset
            old = self._read_loop(self._overlap)
            self._offset = resume % self._pitch
            self._loop_len += self._pitch
            self._smooth_loop_point()
            out = self._read_loop(sub)
            out[: self._overlap] = _crossfade(old, out[: self._overlap])
            out = self._attenuate(out)
        elif erased >= _MUTE_AFTER:
            out = np.zeros(sub)
        else:
            out = self._attenuate(self._read_loop(sub))
        self._erased = erased + 1
        return out

    def _attenuate(self, out: np.ndarray) -> np.ndarray:
        start = 1.0 - (self._erased - 1) * _ATTENUATION
        step = _ATTENUATION / self._sub
        gain = start - step * _count(len(out))
        return out * np.maximum(gain, 0.0)

    def _start_loop(self, touch_history: bool) -> None:
        src = self._history_array()
        self._pitch = pitch = self._find_pitch(src)
        self._overlap = pitch >> 2
        self._tail = src[-self._overlap :].copy()  # the real end, before smoothing
        self._loop_src = src
        self._loop_len = pitch
        self._offset = 0
        self._smooth_loop_point()
        if touch_history:  # not yet played (output delay): blend the real end into the loop
            cut = 2 * self._overlap
            # round_to_pcm rounds in place, and the loop reads src again: a copy
            self._history = self._history[:-cut] + round_to_pcm(src[-self._overlap :].copy())

    def _smooth_loop_point(self) -> None:
        """End of the loop = real end cross-faded into what precedes the loop's start, so
        wrapping from the last loop sample to the first is continuous."""
        src, n, length = self._loop_src, self._overlap, self._loop_len
        end = len(src)
        src[end - n :] = _crossfade(self._tail, src[end - length - n : end - length])

    def _read_loop(self, count: int) -> np.ndarray:
        start = len(self._loop_src) - self._loop_len
        idx = (self._offset + _count(count)) % self._loop_len
        self._offset = (self._offset + count) % self._loop_len
        return self._loop_src[start + idx]

    def _find_pitch(self, src: np.ndarray) -> int:
        """Pitch period in samples: the lag whose past window best matches the last 20 ms.
        In C when built (media._dsp.pitch, the same search and ties): a loss that hits
        every stream at once starts concealment on all of them in one tick."""
        if _dsp is not None:
            return int(_dsp.pitch(src, self._corr_len, self._pitch_min, self._pitch_max,
                                  self._decimation, _MIN_POWER))
        return self._find_pitch_numpy(src)

    def _find_pitch_numpy(self, src: np.ndarray) -> int:
        """The reference search, and the fallback without the C build."""
        n, d = self._corr_len, self._decimation
        span = self._pitch_max - self._pitch_min
        recent = src[-n:]
        past = src[-(n + self._pitch_max) :]  # window j starts pitch_max - j samples back
        windows = sliding_window_view(past, n)[: span + 1]
        coarse = windows[::d, ::d]
        score = (coarse @ recent[::d]) / np.sqrt(
            np.maximum(np.einsum("ij,ij->i", coarse, coarse), _MIN_POWER)
        )
        best = (len(score) - 1 - int(np.argmax(score[::-1]))) * d  # ties: shorter period
        lo, hi = max(0, best - (d - 1)), min(span, best + (d - 1))
        fine = windows[lo : hi + 1]
        score = (fine @ recent) / np.sqrt(np.maximum(np.einsum("ij,ij->i", fine, fine), _MIN_POWER))
        return self._pitch_max - (lo + int(np.argmax(score)))

    def _history_array(self) -> np.ndarray:
        return np.frombuffer(self._history, dtype="<i2").astype(np.float64)

    def _save(self, pcm: bytes) -> bytes:
        """Append to the history; return the frame-length output `delay_samples` behind."""
        if not pcm:
            return pcm
        joined = self._history + pcm
        end = len(joined) - 2 * self._ola_max
        self._history = joined[-2 * self._history_len :]
        return joined[end - len(pcm) : end]
