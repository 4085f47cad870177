"""What a SIP call's RTP session is told: the negotiated media, local policy, and the
per-call numbers it reports. Plain values, so signalling can build and check them without
opening a socket."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from media import g711
from media.opus import OpusEncoder

__all__ = [
    "CODECS", "DIRECTIONS", "PTIME_MS", "CodecInfo", "MediaParams", "RtpOptions",
    "RtpSessionError", "RtpStats",
]

PTIME_MS = 20
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class RtpSessionError(ValueError):
    """Media parameters the session cannot use (unknown codec, bad direction, ...)."""


@dataclass(frozen=True, slots=True)
class CodecInfo:
    name: str  # as media.inbound names it
    clock_rate: int  # RTP timestamp rate
    pcm_rate: int  # rate of the PCM the encoder takes (the outbound wire rate)
    silence: bytes = b""  # one encoded silent sample for G.711; Opus encodes its own

    def encoder(self) -> tuple[Callable[[bytes], bytes], bytes | None]:
        """A fresh encode function, and a pre-encoded silent frame when one exists."""
        if self.name == "opus":
            return OpusEncoder(rate=self.pcm_rate).encode, None
        encode = g711.ulaw_encode if self.name == "PCMU" else g711.alaw_encode
        return encode, self.silence * (self.pcm_rate * PTIME_MS // 1000)


CODECS = {
    "PCMU": CodecInfo("PCMU", 8000, 8000, g711.ULAW_SILENCE),
    "PCMA": CodecInfo("PCMA", 8000, 8000, g711.ALAW_SILENCE),
    # Opus RTP always counts 48 kHz; we encode 16 kHz audio, all a phone call carries.
    "OPUS": CodecInfo("opus", 48000, 16000),
}


@dataclass(frozen=True, slots=True)
class MediaParams:
    """What SDP offer/answer settled: where to send, in what, and in which direction.

    `direction` is ours (the answer's attribute): with "recvonly" or "inactive" we send no
    audio; with "sendonly" or "inactive" we expect none. `remote_host` must be an IP
    address (resolve names before this point: sendto would block on DNS).
    """

    remote_host: str | None
    remote_port: int
    codec: str = "PCMU"
    payload_type: int = 0
    dtmf_payload_type: int | None = None
    rtcp_port: int | None = None  # a=rtcp; default remote_port + 1
    rtcp_mux: bool = False
    direction: str = "sendrecv"
    ptime: int = PTIME_MS

    def check(self) -> CodecInfo:
        info = CODECS.get(self.codec.upper())
        if info is None:
            raise RtpSessionError(f"unsupported codec {self.codec!r}; have {sorted(CODECS)}")
        if self.direction not in DIRECTIONS:
            raise RtpSessionError(f"direction must be one of {DIRECTIONS}: {self.direction!r}")
        if self.ptime != PTIME_MS:
            raise RtpSessionError(f"only ptime {PTIME_MS} is supported, got {self.ptime}")
        for pt in (self.payload_type, self.dtmf_payload_type):
            if pt is not None and not (0 <= pt <= 127 and not 64 <= pt <= 95):
                raise RtpSessionError(f"payload type {pt} is not a valid RTP audio type")
        if self.dtmf_payload_type == self.payload_type:
            raise RtpSessionError(f"audio and DTMF share payload type {self.payload_type}")
        return info

    @property
    def sends(self) -> bool:
        return self.direction in ("sendrecv", "sendonly")

    @property
    def receives(self) -> bool:
        return self.direction in ("sendrecv", "recvonly")


@dataclass(frozen=True, slots=True)
class RtpOptions:
    """Local policy, from config (not from SDP)."""

    media_timeout: float = 30.0  # no RTP this long while we expect some: on_failure
    latch_window: float = 2.0  # seconds in which a new media source may be learnt
    # After the window, follow a source that continues the stream (same SSRC, next
    # sequence numbers) from a new address: a NAT rebinding. Off: strictly latched.
    follow_rebinding: bool = False
    rtcp_interval: float = 5.0  # mean; each interval is randomised over 0.5-1.5x
    dtmf_duration_ms: int = 100
    # Larger datagrams are dropped unparsed: 20 ms of any codec we take fits in one MTU.
    max_packet_bytes: int = 2048


@dataclass(frozen=True, slots=True)
class RtpStats:
    """Per-call media numbers for the call record."""

    packets_in: int
    packets_out: int
    dtmf_in: int
    dtmf_out: int
    invalid: int  # malformed, wrong payload type or wrong source
    lost: int
    late: int
    concealed: int
    jitter_seconds: float  # RFC 3550 interarrival jitter of what we receive
    remote_fraction_lost: float | None  # what the far end reports about our stream
    remote_lost: int | None
    remote_jitter_seconds: float | None
    rtt_seconds: float | None
