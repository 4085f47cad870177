"""Streaming sample-rate conversion for 20 ms frames, and regrouping PCM into frames.

Audio crosses a rate boundary twice per call: inbound from the door's rate to the
pipeline's 16 kHz, outbound once from the TTS rate straight to the door's rate. The
filter state must survive between 20 ms frames, or every frame edge clicks, so each
direction of each call owns one StreamResampler for as long as the stream runs.

Engine choice. Exact doubling (8 -> 16 kHz: every G.711 call's inbound path) has an
engine of its own here, whatever `steady` says: a 161-point Kaiser-windowed lowpass (70
dB design, cut-off 3.8 kHz) run as two polyphase correlations of 81 and 80 taps, one
per output parity: ~10 µs per 20 ms frame against ~14 for soxr's vr engine, with a
constant lag of 80 output samples (5 ms, trimmed at the start as soxr does) instead of
30 ms. Passband flat within 0.02 dB to 3.6 kHz (-1 dB at 3.7 kHz); images of the input
-53 dB at 4 kHz and below -70 dB from 4.1 kHz to 8 kHz. PESQ-WB of G.711 speech against
a VHQ reference: 4.632 (soxr vr: 4.635). A half-band filter would halve the work, since
every other output is then an input sample, but it is -6 dB at 4 kHz by construction
and mirrors 3.6-4 kHz (G.711 quantisation noise, sibilants) into 4-4.4 kHz: PESQ-WB
4.52. Exact halving (16 -> 8 kHz: every G.711 call's outbound audio from a 16 kHz
source, e.g. the echo agent) uses the same lowpass at the input rate as a 2:1
decimator: the same ~15 µs per frame as soxr's vr engine, but 5 ms of lag instead of
15. Both 2:1 engines run in C (media._dsp, compiled by the editable install) where it was
built: the same taps and history, one call per chunk, ~4-5 µs per 20 ms frame instead of
~10 in numpy (array set-up, not arithmetic, was most of that). Output is identical to the
numpy engines, which stay as the reference and the fallback, but for exact ties (x.5),
where the two summation orders may round one step apart. Other ratios go to soxr,
which has two engines, picked by the `steady` flag:

- steady=True (the default: inbound streams and real-time producers that push 20 ms at a
  time without marks): soxr's variable-rate engine (vr=True, used at a fixed ratio), a
  time-domain polyphase filter that returns exactly one frame per frame after a first
  short frame, with a constant lag of 15-30 ms (30 ms at 8 -> 16 kHz, 15 ms at 16 -> 8
  kHz, ~27 ms from 22.05 kHz to 8 kHz), a flat passband to 0.9 of Nyquist, ~85 dB alias
  rejection and a noise floor at int16 quantisation, for 8-30 µs per frame.
- steady=False (producers that push whole utterances and call flush() at their end,
  i.e. TTS behind OutboundAudio's marks): soxr's default engine, which filters in large
  FFT blocks: 3-6 µs per 20 ms frame from 22.05 kHz against 16-30 with vr, but it
  releases output in bursts and holds back up to ~80 ms (22.05 -> 8 kHz; ~115 ms at
  2:1) until more input comes or flush() drains it. A push of 100 ms or more comes out
  at once but for that tail, so the start of an utterance is not delayed.

The quality presets make no difference to the vr engine; HQ is asked for so the block
engine (and soxr releases without `vr`) get the right filter.

Samples go through soxr as float32, not int16: for int16 output libsoxr adds TPDF
dither seeded from time(0) and its own address, so the same input would give outputs
differing by a couple of LSB from run to run. Rounding ourselves keeps every run
bit-identical (tests, benchmarks, recorded fixtures) for ~2 µs per frame.
"""

from __future__ import annotations

import inspect
import logging

import numpy as np
import soxr

try:
    from media import _dsp  # the 2:1 kernels in C, built by `pip install -e .` (setup.sh)
except ImportError:  # not built (no compiler): the numpy engines below, ~4x the cost
    _dsp = None
    logging.getLogger(__name__).warning(
        "media._dsp is not built; 8 <-> 16 kHz resampling runs on numpy (slower). "
        "Build it with: pip install -e . (needs a C compiler)")

RATES = (8000, 16000, 22050, 24000, 48000)  # the rates we meet; soxr takes any
_QUALITY = "HQ"
# soxr releases before `vr` existed get the block engine (more lag, same quality).
_STEADY = {"vr": True} if "vr" in inspect.signature(soxr.ResampleStream).parameters else {}
_EMPTY = np.zeros(0, dtype=np.float32)
# Clip bounds as 0-d arrays of the sample type: ufuncs take them ~2x faster than Python
# ints (no scalar conversion per call), and np.clip's wrapper costs more than the work.
_LO = np.array(-32768, dtype=np.float32)
_HI = np.array(32767, dtype=np.float32)
_LO64 = np.array(-32768, dtype=np.float64)
_HI64 = np.array(32767, dtype=np.float64)


class ResampleError(ValueError):
    """A bad rate or a buffer that cannot be 16-bit PCM."""


def _check_rate(name: str, rate: int) -> None:
    if not isinstance(rate, int) or not 1000 <= rate <= 384000:
        raise ResampleError(f"{name} must be an integer 1000..384000 Hz, got {rate!r}")


def _to_pcm(samples: np.ndarray, lo: np.ndarray = _LO, hi: np.ndarray = _HI) -> bytes:
    """Round to nearest and saturate: filter overshoot on full-scale input must clip,
    never wrap around to the opposite sign. `lo`/`hi` match the samples' dtype."""
    np.rint(samples, out=samples)
    np.minimum(samples, hi, out=samples)
    np.maximum(samples, lo, out=samples)
    return samples.astype(np.int16).tobytes()


def round_to_pcm(samples: np.ndarray) -> bytes:
    """float64 samples -> int16 PCM bytes, rounded and saturated in place (the 2:1
    engines here, and media.plc's concealment)."""
    return _to_pcm(samples, _LO64, _HI64)


def _lowpass(points: int, cutoff: float, attenuation_db: float) -> np.ndarray:
    """A Kaiser-windowed sinc lowpass of `points` (odd) taps at the 16 kHz side, cut-off
    as a fraction of that side's Nyquist."""
    n = np.arange(points) - (points - 1) // 2
    return np.sinc(cutoff * n) * np.kaiser(points, 0.1102 * (attenuation_db - 8.7))


def _doubler_phases(points: int, cutoff: float, attenuation_db: float) -> list[np.ndarray]:
    """The lowpass split into its two phases, each reversed for np.correlate and scaled
    to a DC gain of exactly 1 (a constant stays constant)."""
    h = _lowpass(points, cutoff, attenuation_db)
    return [(phase / phase.sum())[::-1].copy() for phase in (h[0::2], h[1::2])]


_POINTS = 161
_EVEN, _ODD = _doubler_phases(_POINTS, 3800 / 8000, 70.0)
_HISTORY = len(_EVEN) - 1  # input samples each output reaches back
_LAG = (_POINTS - 1) // 2  # output samples of filter delay: the centre tap


class _Doubler:
    """2x interpolation of a stream: int16 samples in, bytes out, history kept.

    Output 2m is sum_k h[2k] x[m-k], output 2m+1 is sum_k h[2k+1] x[m-k]: both phases
    read the same window of input, so one buffer holds the history and the new chunk."""

    __slots__ = ("_buf", "_done", "_seen", "_skip")

    def __init__(self) -> None:
        self._buf = np.zeros(_HISTORY + 160)  # history, then the chunk being filtered
        self._skip = _LAG  # start-up lag still to trim from the output
        self._seen = 0  # input samples so far
        self._done = 0  # output samples so far

    def process(self, x: np.ndarray) -> bytes:
        n = len(x)
        buf = self._buf
        if len(buf) != _HISTORY + n:  # another chunk size: carry the history over
            buf = self._buf = np.concatenate((buf[:_HISTORY], np.zeros(n)))
        buf[_HISTORY:] = x
        out = np.empty(2 * n)
        out[0::2] = np.correlate(buf, _EVEN, "valid")
        out[1::2] = np.correlate(buf[1:], _ODD, "valid")
        buf[:_HISTORY] = buf[n:]
        if self._skip:
            cut = min(self._skip, 2 * n)
            self._skip -= cut
            out = out[cut:]
        self._seen += n
        self._done += len(out)
        return round_to_pcm(out)

    def flush(self) -> bytes:
        """The rest, so the stream's total is exactly twice its input."""
        owed = 2 * self._seen - self._done
        tail = self.process(np.zeros(_LAG // 2 + 1, dtype=np.int16))
        return tail[: 2 * owed]


def _halver_phases(points: int, cutoff: float, attenuation_db: float) -> list[np.ndarray]:
    """The same lowpass at the input rate, for 2:1 decimation: its even and odd taps,
    each reversed for np.correlate, together scaled to a DC gain of exactly 1."""
    h = _lowpass(points, cutoff, attenuation_db)
    h /= h.sum()
    return [h[0::2][::-1].copy(), h[1::2][::-1].copy()]


_H_EVEN, _H_ODD = _halver_phases(_POINTS, 3800 / 8000, 70.0)
_H_HISTORY = _POINTS - 1  # input samples each output reaches back (even)
_H_HALF = _H_HISTORY // 2  # of them, in each of the even and odd sample buffers
_H_LAG = (_POINTS - 1) // 4  # output samples of filter delay: the centre tap, halved


class _Halver:
    """2:1 decimation of a stream (16 -> 8 kHz: every G.711 call's outbound path from
    the pipeline): int16 in, bytes out, history kept. Output m is sum_j h[j] x[2m - j]
    over the input; the even and odd taps meet the even and odd input samples, so it is
    two correlations of half the length, not one at full rate with half thrown away."""

    __slots__ = ("_done", "_evens", "_odd", "_odds", "_seen", "_skip")

    def __init__(self) -> None:
        # The input's even and odd samples in two contiguous buffers (history, then the
        # chunk being filtered): np.correlate over a strided view costs a copy each time.
        self._evens = np.zeros(_H_HALF + 160)
        self._odds = np.zeros(_H_HALF + 160)
        self._odd: np.ndarray | None = None  # a last input sample waiting for its pair
        self._skip = _H_LAG
        self._seen = 0
        self._done = 0

    def process(self, x: np.ndarray) -> bytes:
        if self._odd is not None:
            x = np.concatenate((self._odd, x))
            self._odd = None
        if len(x) % 2:
            self._odd, x = x[-1:], x[:-1]
        n = len(x)
        if n == 0:
            return b""
        half = n // 2
        evens, odds = self._evens, self._odds
        if len(evens) != _H_HALF + half:  # another chunk size: carry the history over
            evens = self._evens = np.concatenate((evens[:_H_HALF], np.zeros(half)))
            odds = self._odds = np.concatenate((odds[:_H_HALF], np.zeros(half)))
        evens[_H_HALF:] = x[0::2]
        odds[_H_HALF:] = x[1::2]
        out = np.correlate(evens, _H_EVEN, "valid")
        out += np.correlate(odds, _H_ODD, "valid")[:half]
        evens[:_H_HALF] = evens[half:]
        odds[:_H_HALF] = odds[half:]
        if self._skip:
            cut = min(self._skip, half)
            self._skip -= cut
            out = out[cut:]
        self._seen += n
        self._done += len(out)
        return round_to_pcm(out)

    def flush(self) -> bytes:
        """The rest, so the stream's total is exactly half its input (rounded down)."""
        seen = self._seen + (0 if self._odd is None else 1)
        owed = seen // 2 - self._done
        tail = self.process(np.zeros(_H_HISTORY // 2 + 2, dtype=np.int16))
        return tail[: 2 * max(owed, 0)]


class _FastDoubler:
    """_Doubler in C (media._dsp.double2): the same filter, history and start-up trim,
    one call per chunk; takes the PCM bytes as they are."""

    __slots__ = ("_done", "_hist", "_seen", "_skip")

    def __init__(self) -> None:
        self._hist = np.zeros(_HISTORY)  # the last input samples, as float64
        self._skip = _LAG
        self._seen = 0
        self._done = 0

    def process(self, pcm: bytes) -> bytes:
        out = _dsp.double2(self._hist, pcm, _EVEN, _ODD, self._skip)
        n = len(pcm) // 2
        self._skip -= min(self._skip, 2 * n)
        self._seen += n
        self._done += len(out) // 2
        return out

    def flush(self) -> bytes:
        owed = 2 * self._seen - self._done
        tail = self.process(bytes(2 * (_LAG // 2 + 1)))
        return tail[: 2 * owed]


class _FastHalver:
    """_Halver in C (media._dsp.halve2): the same filter, history and start-up trim."""

    __slots__ = ("_done", "_evens", "_odd", "_odds", "_seen", "_skip")

    def __init__(self) -> None:
        self._evens = np.zeros(_H_HALF)  # the last even and odd input samples, as float64
        self._odds = np.zeros(_H_HALF)
        self._odd = b""  # a last input sample waiting for its pair
        self._skip = _H_LAG
        self._seen = 0
        self._done = 0

    def process(self, pcm: bytes) -> bytes:
        if self._odd:
            pcm, self._odd = self._odd + pcm, b""
        if len(pcm) % 4:
            pcm, self._odd = pcm[:-2], pcm[-2:]
        if not pcm:
            return b""
        out = _dsp.halve2(self._evens, self._odds, pcm, _H_EVEN, _H_ODD, self._skip)
        half = len(pcm) // 4
        self._skip -= min(self._skip, half)
        self._seen += 2 * half
        self._done += len(out) // 2
        return out

    def flush(self) -> bytes:
        seen = self._seen + len(self._odd) // 2
        owed = seen // 2 - self._done
        tail = self.process(bytes(2 * (_H_HISTORY // 2 + 2)))
        return tail[: 2 * max(owed, 0)]


_Engine = soxr.ResampleStream | _Doubler | _Halver | _FastDoubler | _FastHalver


class StreamResampler:
    """int16 mono PCM at `in_rate` -> `out_rate`, chunk by chunk, filter state kept.

    With `steady` (the default) output lengths per call vary by a sample or so and the
    first call returns less than a full frame (the filter's lag); without it output
    comes in bursts (see the module notes). Either way the running total tracks
    in_len * out / in and flush() returns the rest. Feed the output through a
    FrameChunker to get exact frames.
    """

    def __init__(self, in_rate: int, out_rate: int, *, steady: bool = True) -> None:
        _check_rate("input rate", in_rate)
        _check_rate("output rate", out_rate)
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.steady = steady
        self._doubling = out_rate == 2 * in_rate
        self._halving = in_rate == 2 * out_rate
        self._stream: _Engine | None = None
        if in_rate != out_rate:
            self._stream = self._new_stream()

    def _new_stream(self) -> _Engine:
        if self._doubling:
            return _Doubler() if _dsp is None else _FastDoubler()
        if self._halving:
            return _Halver() if _dsp is None else _FastHalver()
        engine = _STEADY if self.steady else {}
        return soxr.ResampleStream(
            self.in_rate, self.out_rate, 1, dtype="float32", quality=_QUALITY, **engine
        )

    @property
    def is_identity(self) -> bool:
        return self._stream is None

    def process(self, pcm: bytes) -> bytes:
        """Resample the next chunk of the stream (any length, whole samples)."""
        if len(pcm) % 2:
            raise ResampleError(f"PCM16 must have an even number of bytes, got {len(pcm)}")
        if self._stream is None:
            return bytes(pcm)
        if not pcm:
            return b""
        kind = type(self._stream)
        if kind is _FastDoubler or kind is _FastHalver:
            return self._stream.process(pcm)
        samples = np.frombuffer(pcm, dtype=np.int16)
        if kind is _Doubler or kind is _Halver:
            return self._stream.process(samples)
        # int16 values are exact in float32; the filter is linear, so no scaling needed.
        return _to_pcm(self._stream.resample_chunk(samples.astype(np.float32)))

    def flush(self) -> bytes:
        """End of the stream: return the samples still inside the filter, then start over
        so the next process() begins a fresh stream (e.g. the next TTS utterance)."""
        stream = self._stream
        if stream is None:
            return b""
        if isinstance(stream, (_Doubler, _Halver, _FastDoubler, _FastHalver)):
            tail = stream.flush()
        else:
            tail = _to_pcm(stream.resample_chunk(_EMPTY, last=True))
        self._stream = self._new_stream()
        return tail

    def reset(self) -> None:
        """Drop the filter's history and pending samples (barge-in, new SSRC)."""
        if self._stream is not None:
            self._stream = self._new_stream()

    def __repr__(self) -> str:
        bursty = "" if self.steady else ", steady=False"
        return f"StreamResampler({self.in_rate} -> {self.out_rate}{bursty})"


class FrameChunker:
    """Regroups PCM of any length into frames of exactly `frame_bytes`.

    Works on bytes, so even a sample split across two pushes comes out whole.
    """

    def __init__(self, frame_bytes: int) -> None:
        if frame_bytes <= 0 or frame_bytes % 2:
            raise ResampleError(f"frame size must be a positive even byte count, got {frame_bytes}")
        self.frame_bytes = frame_bytes
        self._buf = bytearray()

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    def push(self, pcm: bytes) -> list[bytes]:
        """Add PCM; return every whole frame now available, oldest first."""
        self._buf += pcm
        size = self.frame_bytes
        whole = len(self._buf) - len(self._buf) % size
        if not whole:
            return []
        frames = [bytes(self._buf[i : i + size]) for i in range(0, whole, size)]
        del self._buf[:whole]
        return frames

    def flush(self) -> bytes:
        """The partial frame still pending, padded with silence to a whole frame
        (b"" when nothing is pending); the chunker is empty afterwards."""
        if not self._buf:
            return b""
        frame = bytes(self._buf) + bytes(self.frame_bytes - len(self._buf))
        self._buf.clear()
        return frame

    def clear(self) -> None:
        """Drop the pending partial frame (barge-in)."""
        self._buf.clear()
