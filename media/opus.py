"""Opus (RFC 6716, RTP payload RFC 7587) through opuslib and the system libopus.

Switchboard sends and receives mono Opus in 20 ms frames. The RTP clock of Opus is
always 48000 whatever the audio bandwidth, so one frame is 960 ticks. Both ends work at
the pipeline rate directly: libopus encodes from and decodes to 8/12/16/24/48 kHz
itself, so no resampler sits next to the codec.

Loss recovery happens in the decoder. `conceal()` runs libopus packet-loss concealment
for one missing frame; `decode_fec(next_payload)` rebuilds the missing frame from the
low-bitrate copy (LBRR) that the encoder embeds in the *following* packet. The encoder
only embeds that copy when in-band FEC is on and the expected loss is above zero, so
both are set by default.

Encoder defaults (libopus 1.3.1, 16 kHz speech, so SILK wideband). The cost is the
noise-shaping quantiser: from complexity 2 up it searches with delayed decision, and
with FEC it runs twice (main frame and LBRR copy). Per 20 ms frame and PESQ-NB / WB of
the inbound path in tests/media/test_quality.py (clean, 5 % loss, 10 % loss + 40 ms
jitter; mean of 3 seeds):

  complexity 5, 24 kbit/s, FEC: 152 µs  NB 4.289 3.961 3.798  WB 4.060 3.638 3.469
  complexity 3, 24 kbit/s, FEC: 118 µs  NB 4.191 3.869 3.721  WB 3.889 3.498 3.329
  complexity 1, 24 kbit/s, FEC:  55 µs  NB 4.234 3.911 3.758  WB 3.824 3.464 3.221
  complexity 5, 24 kbit/s, no FEC: 115 µs  NB 4.479 3.400 3.228  WB 4.508 2.962 2.597
  complexity 1, 32 kbit/s, FEC:  68 µs  NB 4.328 3.963 3.835  WB 4.201 3.712 3.540
  complexity 3, 32 kbit/s, FEC: 121 µs  NB 4.374 4.026 3.871  WB 4.321 3.854 3.614

FEC takes its bits out of the same budget, so at 24 kbit/s it costs clean quality; at
32 kbit/s complexity 1 with FEC beats the old default (5, 24 kbit/s) on every figure
for less than half the CPU, at ~25 instead of ~20 kbit/s of payload on speech (VBR).
Complexity 0 emits no FEC at all.
"""

from __future__ import annotations

import ctypes
import warnings

with warnings.catch_warnings():
    # opuslib 3.0.1 compares ints with `is not`, which warns when its modules compile.
    warnings.simplefilter("ignore", SyntaxWarning)
    import opuslib
    import opuslib.api.ctl
    import opuslib.api.decoder
    import opuslib.api.encoder
    import opuslib.api.info
    import opuslib.exceptions

RTP_CLOCK_RATE = 48000
FRAME_MS = 20
FRAME_TICKS = RTP_CLOCK_RATE * FRAME_MS // 1000  # 960
RATES = (8000, 12000, 16000, 24000, 48000)
MAX_PACKET_MS = 120  # longest duration one Opus packet can carry

_CHANNELS = 1


class OpusError(ValueError):
    """Bad arguments, a bad frame, or a packet libopus refuses."""


def _check_rate(rate: int) -> None:
    if rate not in RATES:
        raise OpusError(f"Opus works at {', '.join(map(str, RATES))} Hz, not {rate}")


def _libopus_message(code: int) -> str:
    text = opuslib.api.info.strerror(code)
    return text.decode("ascii", "replace") if isinstance(text, bytes) else str(text)


class OpusEncoder:
    """Mono 20 ms Opus encoder at `rate` Hz, tuned for speech (VOIP application)."""

    def __init__(
        self,
        rate: int = 16000,
        bitrate: int = 32000,
        fec: bool = True,
        expected_loss_pct: int = 10,
        complexity: int = 1,
    ) -> None:
        _check_rate(rate)
        if not 6000 <= bitrate <= 510000:
            raise OpusError(f"Opus bitrate must be 6000..510000 bit/s, got {bitrate}")
        if not 0 <= expected_loss_pct <= 100:
            raise OpusError(f"expected loss must be 0..100 %, got {expected_loss_pct}")
        if not 0 <= complexity <= 10:
            raise OpusError(f"Opus complexity must be 0..10, got {complexity}")
        self.rate = rate
        self.bitrate = bitrate
        self.fec = fec
        self.expected_loss_pct = expected_loss_pct
        self.complexity = complexity
        self.frame_samples = rate * FRAME_MS // 1000
        self.frame_bytes = self.frame_samples * 2
        self._enc = opuslib.Encoder(rate, _CHANNELS, opuslib.APPLICATION_VOIP)
        # One reused output buffer, as in OpusDecoder; a packet never outgrows a frame of
        # PCM at speech bitrates.
        self._out = (ctypes.c_char * self.frame_bytes)()
        self._configure()

    def _configure(self) -> None:
        enc = self._enc
        enc.bitrate = self.bitrate
        enc.signal = opuslib.SIGNAL_VOICE
        enc.complexity = self.complexity  # see the module notes for the default
        # opuslib 3.0.1's `inband_fec` property setter drops its value, so send the CTL
        # ourselves. Without a non-zero loss percentage libopus emits no FEC at all.
        opuslib.api.encoder.encoder_ctl(
            enc.encoder_state, opuslib.api.ctl.set_inband_fec, int(self.fec)
        )
        enc.packet_loss_perc = self.expected_loss_pct

    def encode(self, pcm: bytes) -> bytes:
        """One 20 ms frame of native int16 PCM at `rate` -> one Opus packet."""
        if len(pcm) != self.frame_bytes:
            raise OpusError(
                f"Opus encoder at {self.rate} Hz takes 20 ms frames of "
                f"{self.frame_bytes} bytes, got {len(pcm)}"
            )
        n = opuslib.api.encoder.libopus_encode(
            self._enc.encoder_state,
            ctypes.cast(bytes(pcm), opuslib.api.c_int16_pointer),
            self.frame_samples,
            self._out,
            self.frame_bytes,
        )
        if n < 0:
            raise OpusError(f"Opus encode failed: {_libopus_message(n)}")
        return ctypes.string_at(self._out, n)

    def reset(self) -> None:
        """Start a fresh stream (new talk spurt after a codec change, re-INVITE)."""
        self._enc.reset_state()
        self._configure()


class OpusDecoder:
    """Mono Opus decoder straight to `rate` Hz, with concealment and in-band FEC."""

    def __init__(self, rate: int = 16000) -> None:
        _check_rate(rate)
        self.rate = rate
        self.frame_samples = rate * FRAME_MS // 1000
        self._max_samples = rate * MAX_PACKET_MS // 1000
        self._dec = opuslib.Decoder(rate, _CHANNELS)
        # opuslib's Decoder.decode copies samples through a Python list (3x the cost of
        # the codec itself), so call opus_decode into one reused buffer instead.
        self._buf = (ctypes.c_int16 * self._max_samples)()
        self._ptr = ctypes.cast(self._buf, ctypes.POINTER(ctypes.c_int16))

    def decode(self, payload: bytes) -> bytes:
        """One Opus packet -> native int16 PCM at `rate`.

        A 20 ms packet gives 20 ms (640 bytes at 16 kHz); a peer that packs 40 or 60 ms
        into one packet gets all of it back.
        """
        if not payload:
            raise OpusError("empty Opus payload: call conceal() for a missing packet")
        return self._run(bytes(payload), self._max_samples, fec=False, what="decode")

    def conceal(self) -> bytes:
        """PLC: 20 ms standing in for one missing packet, extrapolated by libopus."""
        return self._run(None, self.frame_samples, fec=False, what="concealment")

    def decode_fec(self, next_payload: bytes) -> bytes:
        """Recover the missing 20 ms that came just before `next_payload`.

        Uses the FEC copy inside the next packet. When that packet carries none (the
        sender has FEC off, or the frame was CELT-only) libopus falls back to PLC. Call
        decode(next_payload) afterwards as usual to get the next packet's own audio.
        """
        if not next_payload:
            raise OpusError("empty Opus payload: FEC needs the packet after the loss")
        return self._run(bytes(next_payload), self.frame_samples, fec=True, what="FEC decode")

    def reset(self) -> None:
        """Forget all history (new SSRC or a codec change)."""
        self._dec.reset_state()

    def _run(self, payload: bytes | None, max_samples: int, *, fec: bool, what: str) -> bytes:
        n = opuslib.api.decoder.libopus_decode(
            self._dec.decoder_state,
            payload,
            len(payload) if payload else 0,
            self._ptr,
            max_samples,
            int(fec),
        )
        if n < 0:
            raise OpusError(f"Opus {what} failed: {_libopus_message(n)}")
        return ctypes.string_at(self._buf, n * 2)
