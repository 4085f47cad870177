"""The inbound media chain of one call: RTP packets -> jitter buffer -> decode or conceal ->
one resample to 16 kHz -> exactly one 20 ms frame (640 bytes) per pull().

The SIP call leg pushes every RTP packet of the negotiated codec as it arrives and pulls
one frame every 20 ms on the shared clock; pull() always returns a frame (silence before
the first packet), so the conversation sees a steady clock whatever the network does.

- PCMU, PCMA, L16 (8 or 16 kHz): decode, then G.711 Appendix I concealment on the
  decoded PCM (its output runs 3.75 ms behind), then one StreamResampler to 16 kHz. The
  packet duration is taken from the first packet (10..60 ms), since some peers ignore
  a=ptime.
- Opus: decoded straight to 16 kHz; a lost frame comes from the FEC copy inside the next
  packet when that is already buffered, otherwise from the decoder's own concealment.
  Packets must carry 20 ms.
- The jitter buffer is told which frames are quiet (a quiet packet after 60 ms of quiet
  output: a pause, not a stop consonant), so it drops or repeats frames there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from media.g711 import alaw_decode, ulaw_decode
from media.jitter import JitterBuffer, JitterSlot, JitterStats
from media.l16 import L16Error, l16_be_to_pcm
from media.opus import RTP_CLOCK_RATE as OPUS_CLOCK_RATE
from media.opus import OpusDecoder, OpusError
from media.plc import G711Plc
from media.resample import StreamResampler
from media.rtp import RtpPacket
from media.vad import rms_dbfs

__all__ = ["FRAME_BYTES", "OUT_RATE", "InboundError", "InboundMedia", "InboundStats"]

OUT_RATE = 16000
FRAME_MS = 20
FRAME_BYTES = OUT_RATE * FRAME_MS // 1000 * 2  # 640
_PTIMES_MS = (10, 20, 30, 40, 50, 60)  # packet durations accepted for sample codecs
_MAX_PENDING = FRAME_BYTES * 10  # output backlog that means something went wrong
_QUIET_RANGE = (-55.0, -40.0)  # dBFS bounds of the "quiet" threshold
_QUIET_MARGIN = 6.0  # dB above the tracked noise floor that still counts as quiet
_FLOOR_RISE = 0.02  # dB per frame the noise floor creeps up (1 dB/s)
_PAUSE_FRAMES = 3  # quiet frames in a row before a frame counts as inside a pause
_OPUS_TAIL = 3  # frames of decoder concealment to fade out into a pause


class InboundError(ValueError):
    """An unknown codec or an unsupported rate."""


@dataclass(frozen=True, slots=True)
class InboundStats:
    jitter: JitterStats
    frames: int  # frames returned by pull()
    decoded: int  # packets decoded
    fec_recovered: int  # lost Opus frames rebuilt from the next packet's FEC
    decode_errors: int  # packets that would not decode (concealed instead)
    ignored: int  # packets of another payload type, or empty


@dataclass(frozen=True, slots=True)
class _Codec:
    rate: int  # decoded sample rate
    clock_rate: int  # RTP timestamp rate
    sample_bytes: int  # payload bytes per sample; 0 = frame-based (Opus)
    decode: Callable[[bytes], bytes] | None
    payload_type: int | None  # static RTP payload type


def _codec(name: str, rate: int | None) -> _Codec:
    key = name.upper()
    if key in ("PCMU", "PCMA"):
        if rate not in (None, 8000):
            raise InboundError(f"{key} runs at 8000 Hz, not {rate}")
        decode = ulaw_decode if key == "PCMU" else alaw_decode
        return _Codec(8000, 8000, 1, decode, 0 if key == "PCMU" else 8)
    if key == "L16":
        if rate not in (8000, 16000):
            raise InboundError(f"L16 needs rate=8000 or 16000, got {rate}")
        return _Codec(rate, rate, 2, l16_be_to_pcm, None)
    if key == "OPUS":
        if rate not in (None, OPUS_CLOCK_RATE):
            raise InboundError(f"Opus RTP runs at {OPUS_CLOCK_RATE} Hz, not {rate}")
        return _Codec(OUT_RATE, OPUS_CLOCK_RATE, 0, None, None)
    raise InboundError(f"unknown inbound codec {name!r}: expected PCMU, PCMA, L16 or opus")


class InboundMedia:
    """One call's inbound audio for one codec. `payload_type` filters the packets (default:
    the static type for PCMU/PCMA, anything for dynamic ones); `rate` is the L16 rate."""

    def __init__(
        self,
        codec: str,
        *,
        rate: int | None = None,
        payload_type: int | None = None,
        min_delay: float = 0.02,
        max_delay: float = 0.2,
        initial_delay: float = 0.1,
    ) -> None:
        spec = _codec(codec, rate)
        self.codec = codec
        self._spec = spec
        self._payload_type = spec.payload_type if payload_type is None else payload_type
        self._delays = (min_delay, max_delay, initial_delay)
        self._opus = OpusDecoder(OUT_RATE) if spec.decode is None else None
        self._plc = G711Plc(spec.rate) if spec.decode is not None else None
        self._resampler = StreamResampler(spec.rate, OUT_RATE)
        self._jb = self._new_buffer(spec.rate // 50)
        self._first = True
        self._started = False  # a packet has been played: codec state exists
        self._pending = bytearray()  # 16 kHz output not yet pulled
        self._owed = 0  # decode-rate samples of playout owed to the jitter buffer
        self._ssrc: int | None = None
        self._quiet_run = 0  # decoded frames in a row below the quiet threshold
        self._floor = _QUIET_RANGE[0]
        self._opus_tail = 0
        self._frames = self._decoded = self._fec = self._errors = self._ignored = 0

    def _new_buffer(self, frame_samples: int) -> JitterBuffer:
        self._frame_samples = frame_samples
        ticks = frame_samples * self._spec.clock_rate // self._spec.rate
        lo, hi, initial = self._delays
        return JitterBuffer(
            self._spec.clock_rate, ticks, lo, hi, initial_delay=initial, is_quiet=self._is_quiet
        )

    # -- input -------------------------------------------------------------------

    def push(self, packet: RtpPacket, arrival: float) -> bool:
        """Queue one RTP packet. False when it is ignored or dropped."""
        if (
            self._payload_type is not None and packet.payload_type != self._payload_type
        ) or not packet.payload:
            self._ignored += 1
            self._jb.note_foreign(packet)  # a DTMF event's sequence number is not a loss
            return False
        if self._first:
            self._first = False
            size = self._spec.sample_bytes
            if size and len(packet.payload) % size == 0:
                samples = len(packet.payload) // size
                if (
                    samples * 1000 // self._spec.rate in _PTIMES_MS
                    and samples % (self._spec.rate // 100) == 0
                    and samples != self._frame_samples
                ):
                    self._jb = self._new_buffer(samples)
        return self._jb.push(packet, arrival)

    # -- output ------------------------------------------------------------------

    def pull(self, now: float) -> bytes:
        """The next 20 ms of 16 kHz PCM (640 bytes): decoded, concealed or silence."""
        self._owed += self._spec.rate * FRAME_MS // 1000
        pending = self._pending
        while self._owed >= self._frame_samples:
            self._owed -= self._frame_samples
            pcm = self._render(self._jb.pop(now))
            out = (
                self._resampler.process(pcm)
                if self._started
                else bytes(len(pcm) * OUT_RATE // self._spec.rate)
            )
            if not pending and len(out) == FRAME_BYTES and self._owed < self._frame_samples:
                self._frames += 1  # the steady state: one frame in, one out, no copies
                return out
            pending += out
        if len(pending) < FRAME_BYTES:  # the resampler's start-up lag: pad once, in front
            pending[:0] = bytes(FRAME_BYTES - len(pending))
        elif len(pending) > _MAX_PENDING:
            del pending[: len(pending) - FRAME_BYTES]
        frame = bytes(pending[:FRAME_BYTES])
        del pending[:FRAME_BYTES]
        self._frames += 1
        return frame

    def _render(self, slot: JitterSlot | None) -> bytes:
        """One jitter-buffer frame at the decode rate."""
        nbytes = self._frame_samples * 2
        if slot is None:
            if not self._started:
                return bytes(nbytes)
            pcm = self._fade_out(nbytes)
        elif slot.kind == "packet":
            packet = slot.packet
            assert packet is not None
            if packet.ssrc != self._ssrc:
                if self._ssrc is not None and self._opus is not None:
                    self._opus.reset()  # a new encoder: old decoder state would garble it
                self._ssrc = packet.ssrc
            self._started = True
            pcm = self._decode(packet.payload, nbytes, slot.skipped > 0)
        else:
            pcm = self._conceal(slot, nbytes)
        self._track_level(pcm)
        return pcm

    def _decode(self, payload: bytes, nbytes: int, discontinuity: bool) -> bytes:
        try:
            if self._opus is not None:
                pcm = self._opus.decode(payload)
                self._opus_tail = _OPUS_TAIL
            else:
                assert self._spec.decode is not None and self._plc is not None
                pcm = self._spec.decode(payload)
        except (OpusError, L16Error):
            self._errors += 1
            return self._conceal(None, nbytes)
        self._decoded += 1
        pcm = _fit(pcm, nbytes)
        if self._plc is not None:
            pcm = self._plc.frame_ok(pcm, discontinuity)
        return pcm

    def _conceal(self, slot: JitterSlot | None, nbytes: int) -> bytes:
        if self._plc is not None:
            return self._plc.conceal(self._frame_samples)
        assert self._opus is not None
        nxt = slot.next_packet if slot is not None else None
        self._opus_tail = _OPUS_TAIL
        if nxt is not None:
            try:
                pcm = self._opus.decode_fec(nxt.payload)
                self._fec += 1
                return _fit(pcm, nbytes)
            except OpusError:
                self._errors += 1
        return _fit(self._opus.conceal(), nbytes)

    def _fade_out(self, nbytes: int) -> bytes:
        """A pause after audio: let concealment fade the last sound out, then silence."""
        if self._plc is not None:
            if self._plc.concealing and not self._plc.muted:
                return self._plc.conceal(self._frame_samples)
            return self._plc.frame_ok(bytes(nbytes))
        assert self._opus is not None
        if self._opus_tail > 0:
            self._opus_tail -= 1
            return _fit(self._opus.conceal(), nbytes)
        return bytes(nbytes)

    # -- quiet frames --------------------------------------------------------------

    def _track_level(self, pcm: bytes) -> None:
        level = rms_dbfs(pcm)
        self._quiet_run = self._quiet_run + 1 if level <= self._quiet_below() else 0
        self._floor = level if level < self._floor else self._floor + _FLOOR_RISE

    def _quiet_below(self) -> float:
        low, high = _QUIET_RANGE
        return min(max(self._floor + _QUIET_MARGIN, low), high)

    def _is_quiet(self, packet: RtpPacket) -> bool:
        """Would dropping or repeating the frame at `packet` go unheard?"""
        if self._quiet_run < _PAUSE_FRAMES:  # a stop consonant is quiet too, but short
            return False
        if self._opus is not None:  # decoding ahead would disturb the decoder: trust the run
            return True
        assert self._spec.decode is not None
        try:
            return rms_dbfs(self._spec.decode(packet.payload)) <= self._quiet_below()
        except L16Error:
            return False

    # -- inspection ----------------------------------------------------------------

    @property
    def stats(self) -> InboundStats:
        return InboundStats(
            jitter=self._jb.stats,
            frames=self._frames,
            decoded=self._decoded,
            fec_recovered=self._fec,
            decode_errors=self._errors,
            ignored=self._ignored,
        )

    @property
    def jitter_buffer(self) -> JitterBuffer:
        return self._jb


def _fit(pcm: bytes, nbytes: int) -> bytes:
    """Pad or cut decoded audio to the frame the timeline expects."""
    if len(pcm) == nbytes:
        return pcm
    return pcm[:nbytes] if len(pcm) > nbytes else pcm + bytes(nbytes - len(pcm))
