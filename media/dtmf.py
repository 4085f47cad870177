"""RFC 4733 telephone-events (DTMF digits carried in RTP).

One key press is one event: several RTP packets with the same timestamp (the event's
start) and a growing duration, the last ones (usually three) with the End bit. Many
providers never set the marker bit on the first packet and the first packets may be
lost, so the decoder keys an event on its RTP timestamp and End bit, never on the marker.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from media.seqnum import ts_diff

__all__ = [
    "DtmfDecoder",
    "DtmfError",
    "DtmfEvent",
    "DtmfPacket",
    "digit_to_event",
    "encode_digit",
    "event_to_digit",
]

DIGITS = "0123456789*#ABCD"  # event codes 0..15 (RFC 4733 §3.2)
MAX_DURATION = 0xFFFF  # longer events are sent as segments (RFC 4733 §2.5.1.3)
# A packet whose timestamp is at most this far behind the current event's is a late
# straggler of an earlier event; further behind, the sender's timestamps restarted.
_STALE_WINDOW = 1 << 16

_EVENT = struct.Struct("!BBH")


class DtmfError(ValueError):
    """A malformed telephone-event payload or an unknown digit."""


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    event: int  # 0..9, 10 = *, 11 = #, 12..15 = A..D, 16 = flash, ...
    end: bool
    volume: int  # power level as 0..63 dB below 1 mW (0 dBm0); larger is quieter
    duration: int  # RTP timestamp units since the event (or segment) began

    SIZE: ClassVar[int] = 4

    @classmethod
    def parse(cls, data: bytes) -> DtmfEvent:
        if len(data) != 4:
            raise DtmfError(f"telephone-event payload must be 4 bytes, got {len(data)}")
        event, flags, duration = _EVENT.unpack(data)
        # The reserved R bit (0x40) is ignored on receipt, as RFC 4733 §2.3 says.
        return cls(event, flags > 0x7F, flags & 0x3F, duration)

    def __bytes__(self) -> bytes:
        if not 0 <= self.event <= 0xFF:
            raise DtmfError(f"event code must be 0..255, got {self.event}")
        if not 0 <= self.volume <= 0x3F:
            raise DtmfError(f"volume must be 0..63, got {self.volume}")
        if not 0 <= self.duration <= MAX_DURATION:
            raise DtmfError(f"duration must be 0..65535, got {self.duration}")
        return _EVENT.pack(
            self.event, self.volume | 0x80 if self.end else self.volume, self.duration
        )


def digit_to_event(digit: str) -> int:
    """ "0"-"9", "*", "#", "A"-"D" (either case) -> event code 0..15."""
    code = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise DtmfError(f"not a DTMF digit: {digit!r}")
    return code


def event_to_digit(event: int) -> str:
    if not 0 <= event < len(DIGITS):
        raise DtmfError(f"event code {event} is not a DTMF digit")
    return DIGITS[event]


class DtmfDecoder:
    """Turns the telephone-event packets of one RTP stream into digits, once per event.

    Feed it the RTP timestamp and payload of every telephone-event packet in arrival
    order. A digit is reported on the first packet of its event that arrives (so it is
    still reported when the start packets were lost and only End packets got through).
    Later packets of that event, including the repeated End packets, are ignored; a
    packet with a newer timestamp starts a new event, even for the same key. Call
    reset() when the stream's SSRC changes.
    """

    __slots__ = ("_ended", "_event", "_timestamp")

    def __init__(self) -> None:
        self._timestamp: int | None = None
        self._event = -1
        self._ended = False

    def reset(self) -> None:
        self._timestamp = None
        self._event = -1
        self._ended = False

    def push(self, timestamp: int, payload: bytes) -> str | None:
        """Returns the digit when this packet starts a new DTMF event, else None.
        Non-DTMF events (flash, tones) are tracked but not reported."""
        report = DtmfEvent.parse(payload)
        if self._timestamp is not None:
            delta = ts_diff(timestamp, self._timestamp)
            if delta == 0 and report.event == self._event:
                self._ended = self._ended or report.end
                return None
            if -_STALE_WINDOW < delta < 0:
                return None  # reordered packet of an earlier event
            if delta == MAX_DURATION and report.event == self._event and not self._ended:
                # Next segment of a long event: same key press, new timestamp.
                self._timestamp = timestamp
                self._ended = report.end
                return None
            # delta == 0 with another event code: a sender reusing the timestamp for
            # the next key; treat it as the new event it plainly is.
        self._timestamp = timestamp
        self._event = report.event
        self._ended = report.end
        return DIGITS[report.event] if report.event < len(DIGITS) else None


class DtmfPacket(NamedTuple):
    event: DtmfEvent
    marker: bool
    # Added to the event's start timestamp; non-zero only in the later segments of an
    # event longer than 65535 ticks.
    timestamp_offset: int


def encode_digit(
    digit: str,
    duration_ms: int = 100,
    clock_rate: int = 8000,
    volume: int = 10,
    packet_ms: int = 20,
    end_repeats: int = 3,
) -> list[DtmfPacket]:
    """The telephone-event packets for one key press, one per packet interval.

    The caller sends them `packet_ms` apart with consecutive sequence numbers and
    timestamp = the event's start timestamp + timestamp_offset. Durations grow by one
    packet interval; the final duration is sent `end_repeats` times with the End bit
    (RFC 4733 §2.5.1.4); only the first packet has the marker.
    """
    code = digit_to_event(digit)
    total = round(duration_ms * clock_rate / 1000)
    step = packet_ms * clock_rate // 1000
    if total <= 0:
        raise DtmfError(f"DTMF duration must be positive, got {duration_ms} ms")
    if step <= 0:
        raise DtmfError(f"packet interval must be positive, got {packet_ms} ms")
    if not 0 <= volume <= 0x3F:
        raise DtmfError(f"volume must be 0..63, got {volume}")
    if end_repeats < 1:
        raise DtmfError(f"end_repeats must be at least 1, got {end_repeats}")

    packets: list[DtmfPacket] = []

    def add(end: bool, duration: int, offset: int) -> None:
        packets.append(DtmfPacket(DtmfEvent(code, end, volume, duration), not packets, offset))

    offset = 0
    while True:
        segment = min(total - offset, MAX_DURATION)
        for duration in range(step, segment, step):
            add(False, duration, offset)
        if offset + segment >= total:
            for _ in range(end_repeats):
                add(True, segment, offset)
            return packets
        add(False, MAX_DURATION, offset)  # segment full; the next one continues the event
        offset += MAX_DURATION
