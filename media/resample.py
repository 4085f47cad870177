"""Streaming sample-rate conversion for 20 ms frames, and regrouping PCM into frames.

Audio crosses a rate boundary twice per call: inbound from the door's rate to the
pipeline's 16 kHz, outbound once from the TTS rate straight to the door's rate. The
filter state must survive between 20 ms frames, or every frame edge clicks, so each
direction of each call owns one StreamResampler for as long as the stream runs.

Engine choice. soxr has two, picked by the `steady` flag:

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

import numpy as np
import soxr

RATES = (8000, 16000, 22050, 24000, 48000)  # the rates we meet; soxr takes any
_QUALITY = "HQ"
# soxr releases before `vr` existed get the block engine (more lag, same quality).
_STEADY = {"vr": True} if "vr" in inspect.signature(soxr.ResampleStream).parameters else {}
_EMPTY = np.zeros(0, dtype=np.float32)
# Clip bounds as 0-d arrays of the sample type: ufuncs take them ~2x faster than Python
# ints (no scalar conversion per call), and np.clip's wrapper costs more than the work.
_LO = np.array(-32768, dtype=np.float32)
_HI = np.array(32767, dtype=np.float32)


class ResampleError(ValueError):
    """A bad rate or a buffer that cannot be 16-bit PCM."""


def _check_rate(name: str, rate: int) -> None:
    if not isinstance(rate, int) or not 1000 <= rate <= 384000:
        raise ResampleError(f"{name} must be an integer 1000..384000 Hz, got {rate!r}")


def _to_pcm(samples: np.ndarray) -> bytes:
    """Round to nearest and saturate: filter overshoot on full-scale input must clip,
    never wrap around to the opposite sign."""
    np.rint(samples, out=samples)
    np.minimum(samples, _HI, out=samples)
    np.maximum(samples, _LO, out=samples)
    return samples.astype(np.int16).tobytes()


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
        self._stream = self._new_stream() if in_rate != out_rate else None

    def _new_stream(self) -> soxr.ResampleStream:
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
        # int16 values are exact in float32; the filter is linear, so no scaling needed.
        out = self._stream.resample_chunk(np.frombuffer(pcm, dtype=np.int16).astype(np.float32))
        return _to_pcm(out)

    def flush(self) -> bytes:
        """End of the stream: return the samples still inside the filter, then start over
        so the next process() begins a fresh stream (e.g. the next TTS utterance)."""
        if self._stream is None:
            return b""
        tail = _to_pcm(self._stream.resample_chunk(_EMPTY, last=True))
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
