"""The call-leg interface: what every door (SIP, Twilio, FreeSWITCH, AudioSocket) gives a call.

Whatever the wire, a call inside Switchboard is the same thing: 20 ms frames of 16 kHz
mono int16 PCM in, PCM out at any rate (resampled once by the leg to its wire rate,
split into 20 ms frames and paced by the shared clock), and a few control events.

Inbound, the door calls the handler: `on_start` once, `on_frame` every 20 ms (concealed
frames included, so the handler sees a steady clock), `on_dtmf` per digit, `on_mark`
when the audio queued before a mark has been played out, `on_end` once.
Control calls from the handler (`clear_audio`, `hangup`, `transfer`) take effect at once:
they never wait behind queued audio.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

PIPELINE_RATE = 16000
FRAME_MS = 20
FRAME_SAMPLES = PIPELINE_RATE * FRAME_MS // 1000  # 320
FRAME_BYTES = FRAME_SAMPLES * 2  # 640


@dataclass(frozen=True, slots=True)
class CallInfo:
    """Who is calling whom, through which door. `params` carries door-specific routing
    data: SIP headers, Twilio custom parameters, FreeSWITCH metadata, the AudioSocket UUID."""

    call_id: str
    transport: str  # "sip" | "twilio" | "freeswitch" | "audiosocket" | "asterisk_ws" | "browser"
    caller: str = ""
    callee: str = ""
    params: Mapping[str, str] = field(default_factory=dict)
    # An agent chosen by whoever placed the call (the browser console, POST /calls);
    # None lets the dialplan route it.
    agent: str | None = None


class CallLeg(Protocol):
    info: CallInfo

    def send_audio(self, pcm: bytes, rate: int, mark: str | None = None) -> None:
        """Queue int16 mono PCM at `rate` for the caller. When every frame queued before
        `mark` has been played out (or cleared), the handler's on_mark(mark) is called."""
        ...

    def clear_audio(self) -> None:
        """Barge-in: drop every queued outbound frame now. Pending marks fire as cleared."""
        ...

    def queued_seconds(self) -> float:
        """How much outbound audio is queued and not yet played."""
        ...

    def send_dtmf(self, digits: str) -> None: ...

    async def transfer(self, target: str) -> None:
        """Blind transfer (SIP REFER, Twilio REST, ...). Raises TransferError on refusal."""
        ...

    async def hangup(self, reason: str = "normal") -> None:
        """End the call from our side. Idempotent."""
        ...


class CallHandler(Protocol):
    """What answers a call: the echo agent, a conversation, a playback."""

    async def on_start(self, leg: CallLeg) -> None: ...

    def on_frame(self, pcm: bytes) -> None:
        """One 20 ms frame of 16 kHz int16 PCM (FRAME_BYTES long). Called on the event
        loop every 20 ms; must not block."""
        ...

    def on_dtmf(self, digit: str) -> None: ...

    def on_mark(self, mark: str, played: bool) -> None:
        """played is False when the audio before the mark was cleared, not heard."""
        ...

    async def on_end(self, reason: str) -> None: ...


class TransferError(Exception):
    """The far end refused or failed a transfer."""
