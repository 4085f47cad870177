"""Adaptive jitter buffer: RTP packets in, in any order and at any time; one frame slot out
per pop, on the caller's steady 20 ms clock.

Time is always an argument: push(packet, arrival) and pop(now) take seconds on one
monotonic clock, so tests drive it with simulated time and it never reads a clock.

How it decides:
- Relative delay. Each packet's transit (arrival - timestamp/rate) is compared with the
  smallest transit of the last 2 s (a monotonic deque, O(1) amortised); the difference
  is its jitter delay. The short window keeps a drifting sender clock from piling up.
- Target. The 97th percentile (`quantile`) of the last 250 jitter delays, from a 5 ms
  histogram with a ring of evictions (O(1) per packet, a short scan per pop), clamped
  to [min_delay, max_delay]. It rises at once and falls by at most 10 ms per second.
- Playout. pop() emits the frame at `play_ts` and advances one frame; the current delay
  is now - play_ts/rate - base transit. Changes are made where they cost nothing: in a
  gap, before a talk spurt (marker), or on a frame the caller's `is_quiet` calls quiet.
  Below target: insert a frame there, or at once (every other frame) when packets are
  about to be late, or after 0.5 s of waiting. A frame or more above target for 1 s:
  drop one there, or anywhere after 5 s. A delay beyond max_delay, or a packet beyond
  the buffer's capacity, skips ahead at once. This same loop absorbs sender clock drift.
- Gaps. A missing frame is "missing" (conceal it; `next_packet` carries the following
  packet when already here, for Opus FEC) unless the next buffered packet continues the
  sequence, which means the sender paused (DTX): then pop returns None, as it does before
  the first packet and after a few frames of underrun.
- Discontinuities. A new SSRC resets the stream (stragglers from the old SSRC are dropped
  as late). Timestamps that leap (transit off by more than max(1 s, 2*max_delay) while
  not following the sequence numbers), a late talk-spurt start (marker: a sender that
  did not advance its timestamps over a pause), or 25 late packets in a row rebase the
  sender's timeline: its packets are mapped to where they would be on time, after what
  is already buffered, so playout carries on with nothing flushed.

Two implementations: PyJitterBuffer, this module's Python class, is the reference and the
fallback; JitterBuffer is media._jitter's C type where it was built (`pip install -e .`,
setup.sh), the same algorithm step for step, with the same slots, stats, exceptions and
bit-identical floats, for a few tenths of a µs per packet instead of ~6 µs.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from media.rtp import RtpPacket
from media.seqnum import SeqUnwrapper, TsUnwrapper

__all__ = ["JitterBuffer", "JitterSlot", "JitterStats", "PyJitterBuffer", "SlotKind"]

SlotKind = Literal["packet", "missing"]

_BUCKET = 0.005  # histogram resolution of the jitter delays, seconds
_HISTORY = 250  # packets in the percentile window (5 s at 20 ms)
_BASE_WINDOW = 2.0  # seconds over which the minimum transit is taken
_GROW_MARGIN = 0.005  # insert a frame once the delay is this far below target
_GROW_SPACING = 2  # in speech, at most one insertion every this many frames
_GROW_WAIT = 25  # frames a small shortfall may wait for a quiet frame to insert at
_DROP_PERSIST = 50  # frames the delay must stay a frame above target before a drop
_DROP_FORCE = 250  # ... and after this many (5 s), drop even without a quiet frame
_SHRINK_PER_SECOND = 0.010  # how fast the target may fall
_UNDERRUN_CONCEAL = 5  # frames concealed into an empty buffer before going silent
_LATE_RESYNC = 25  # consecutive late packets that mean the timeline moved
_SEEN_BITS = 1024  # duplicate-detection window, in sequence numbers
_SEEN_MASK = (1 << _SEEN_BITS) - 1


@dataclass(frozen=True, slots=True)
class JitterSlot:
    """One frame of playout. kind "packet": decode `packet`. kind "missing": conceal one
    frame; `next_packet` is the following frame's packet when it is already buffered (Opus
    in-band FEC recovers the missing frame from it). `skipped` counts frames dropped just
    before this one (delay shrink or overflow): the decoder may smooth the splice."""

    kind: SlotKind
    packet: RtpPacket | None = None
    next_packet: RtpPacket | None = None
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class JitterStats:
    received: int  # packets accepted into the buffer
    lost: int  # frames whose packet was not there at playout (never came, or came late)
    late: int  # packets dropped because their frame had already been played
    duplicate: int  # packets dropped as copies of one already received
    concealed: int  # "missing" slots emitted, insertions included
    dropped: int  # frames discarded to shrink the delay or make room
    inserted: int  # frames added to grow the delay
    resets: int  # SSRC changes and timeline rebases
    buffered: int  # packets held now
    delay_seconds: float  # playout delay at the last pop, above the fastest packet
    target_seconds: float


class PyJitterBuffer:
    def __init__(
        self,
        clock_rate: int,
        frame_ticks: int,
        min_delay: float = 0.02,
        max_delay: float = 0.2,
        *,
        initial_delay: float = 0.1,
        quantile: float = 0.97,
        is_quiet: Callable[[RtpPacket], bool] | None = None,
    ) -> None:
        if clock_rate <= 0 or frame_ticks <= 0:
            raise ValueError(
                f"clock_rate and frame_ticks must be positive: {clock_rate}, {frame_ticks}"
            )
        if not 0.5 <= quantile < 1.0:
            raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
        if not 0.0 <= min_delay <= max_delay:
            raise ValueError(f"need 0 <= min_delay <= max_delay, got {min_delay}, {max_delay}")
        self.clock_rate = clock_rate
        self.frame_ticks = frame_ticks
        self.min_delay = min_delay
        self.max_delay = max_delay
        self._is_quiet = is_quiet
        self._spill = 1.0 - quantile  # fraction of packets allowed to come too late
        self._frame = frame_ticks / clock_rate
        self._inv_rate = 1.0 / clock_rate
        # Room for the largest delay twice over: bursts after a stall still fit.
        self.capacity = math.ceil(2 * max_delay / self._frame) + 2
        self._jump = max(1.0, 2 * max_delay)
        self._shrink_step = _SHRINK_PER_SECOND * self._frame
        self._target = min(max(initial_delay, min_delay), max_delay)
        self._hist = [0] * (int(max_delay / _BUCKET) + 2)
        self._ring: deque[int] = deque()
        self._top_bucket = 0  # highest non-empty bucket
        self._received = self._lost = self._late = self._duplicate = 0
        self._concealed = self._dropped = self._inserted = self._resets = 0
        self._delay = 0.0
        self._ssrc: int | None = None
        self._old_ssrc: int | None = None
        self._reset_stream()

    # -- state resets --------------------------------------------------------------

    def _reset_stream(self) -> None:
        """Forget everything about the current source except the jitter statistics."""
        self._seqs = SeqUnwrapper()
        self._foreign: set[int] = set()  # non-audio sequence numbers not yet passed
        self._tss = TsUnwrapper()
        self._seen = 0
        self._shift = 0  # added to timestamps after a sender's timeline moved
        self._top: tuple[int, int] | None = None  # (seq, timestamp) of the newest packet
        self._last_seq: int | None = None  # extended seq of the last frame played or dropped
        self._packets: dict[int, tuple[RtpPacket, int]] = {}
        self._heap: list[int] = []
        self._transits: deque[tuple[float, float]] = deque()
        self._base: float | None = None
        self._playing = False
        self._start_at: float | None = None
        self._play_ts = 0
        self._gap = 0  # consecutive slots without a packet
        self._silent = True  # the last slot was None
        self._late_run = 0
        self._high = self._low = 0  # frames the delay has been above / below target
        self._since_adjust = _GROW_SPACING

    def _discard_all(self) -> None:
        self._dropped += len(self._packets)
        for _, seq in self._packets.values():
            self._note_consumed(seq)

    # -- input -------------------------------------------------------------------

    def push(self, packet: RtpPacket, arrival: float) -> bool:
        """Queue a packet that arrived at `arrival`. False when dropped (duplicate, late)."""
        if packet.ssrc != self._ssrc:
            if self._ssrc is not None:
                if packet.ssrc == self._old_ssrc:  # straggler from the stream we left
                    self._late += 1
                    return False
                self._old_ssrc = self._ssrc
                self._discard_all()
                self._reset_stream()
                self._resets += 1
            self._ssrc = packet.ssrc

        highest = self._seqs.highest
        seq = self._seqs.unwrap(packet.sequence)
        newer = highest is None or seq > highest
        if newer:
            shift = 0 if highest is None else seq - highest
            self._seen = ((self._seen << shift) | 1) & _SEEN_MASK
        else:
            back = highest - seq
            if back >= _SEEN_BITS:
                self._late += 1
                return False
            if (self._seen >> back) & 1:
                self._duplicate += 1
                return False
            self._seen |= 1 << back

        ts = self._tss.unwrap(packet.timestamp) + self._shift
        transit = arrival - ts * self._inv_rate
        base = self._base
        if base is not None and abs(transit - base) > self._jump:
            # Far off the timeline: the sender's timestamps leapt (they no longer follow
            # the sequence numbers), or a straggler / a stall that makes it hopelessly late.
            follows = self._top is not None and ts - self._top[1] == (seq - self._top[0]) * (
                self.frame_ticks
            )
            if not newer or (follows and not self._timeline_moved(packet)):
                self._late += 1
                return False
            ts = self._rebase(ts, arrival)
            transit = arrival - ts * self._inv_rate
        self._observe(arrival, transit)
        if self._playing and ts < self._play_ts:
            if not (newer and self._timeline_moved(packet)):
                self._late += 1
                return False
            ts = self._rebase(ts, arrival)

        if self._playing:
            limit = self._play_ts + self.capacity * self.frame_ticks
            if ts >= limit:
                self._skip_to(ts - (self.capacity - 1) * self.frame_ticks)
        elif len(self._packets) >= self.capacity:
            oldest = heapq.heappop(self._heap)
            _, old_seq = self._packets.pop(oldest)
            self._note_consumed(old_seq)
            self._dropped += 1
        if ts in self._packets:  # same timestamp, another sequence number
            self._duplicate += 1
            return False
        self._packets[ts] = (packet, seq)
        heapq.heappush(self._heap, ts)
        self._received += 1
        self._late_run = 0
        if newer:
            self._top = (seq, ts)
        if self._start_at is None:
            self._start_at = arrival + self._target
        return True

    def _timeline_moved(self, packet: RtpPacket) -> bool:
        """Is a late packet a sign that the sender's timeline moved? A late talk-spurt
        start (marker) is, and so is a long run of late packets."""
        self._late_run += 1
        return packet.marker or self._late_run >= _LATE_RESYNC

    def _rebase(self, ts: int, arrival: float) -> int:
        """Map this packet, and the rest of its timeline, to where a packet arriving now
        with the least transit belongs (after everything already buffered), so playout
        carries on without a restart. Returns its new timestamp."""
        ticks = self.frame_ticks
        want = (arrival - (self._base or 0.0)) * self.clock_rate
        new = ts + round((want - ts) / ticks) * ticks
        if self._top is not None:
            new = max(new, self._top[1] + ticks)
        if self._playing:
            new = max(new, self._play_ts)
        self._shift += new - ts
        self._resets += 1
        self._late_run = 0
        return new

    def _observe(self, arrival: float, transit: float) -> None:
        """Feed one packet's timing into the base-transit window and the jitter histogram."""
        transits = self._transits
        while transits and transits[-1][1] >= transit:
            transits.pop()
        transits.append((arrival, transit))
        horizon = arrival - _BASE_WINDOW
        while transits[0][0] < horizon:
            transits.popleft()
        base = self._base = transits[0][1]
        hist = self._hist
        bucket = min(int((transit - base) / _BUCKET), len(hist) - 1)
        hist[bucket] += 1
        if bucket > self._top_bucket:
            self._top_bucket = bucket
        ring = self._ring
        ring.append(bucket)
        if len(ring) > _HISTORY:
            old = ring.popleft()
            hist[old] -= 1
            top = self._top_bucket
            while top > 0 and not hist[top]:  # keep the scan start on the highest sample
                top -= 1
            self._top_bucket = top

    # -- output ------------------------------------------------------------------

    def pop(self, now: float) -> JitterSlot | None:
        """The slot to play at `now`; call once per frame. None means nothing to play:
        no stream yet, still buffering, or the sender is silent."""
        if not self._playing:
            if self._start_at is None or now < self._start_at - _GROW_MARGIN:
                return None
            self._clean_heap()
            if not self._heap:
                return None
            self._playing = True
            self._play_ts = self._heap[0]
        self._update_target()
        frame_ticks = self.frame_ticks
        delay = now - self._play_ts * self._inv_rate - (self._base or 0.0)
        entry = self._packets.get(self._play_ts)
        if entry is None:
            entry = self._realign()
        skipped = 0
        change = self._adapt(delay, entry)
        if change < 0:
            self._inserted += 1
            self._delay = delay + self._frame
            return self._filler(None)
        if change:
            skipped = change
            self._skip_to(self._play_ts + skipped * frame_ticks)
            delay -= skipped * self._frame
            entry = self._packets.get(self._play_ts) or self._realign()

        self._delay = delay
        play_ts = self._play_ts
        self._play_ts = play_ts + frame_ticks
        if entry is not None:
            packet, seq = self._packets.pop(play_ts)
            self._note_consumed(seq)
            # Off the heap with it, and with any off-grid packet the playout has now
            # passed: left for the next gap, they piled up for the whole of a loss-free
            # call (the heap by 50 entries a second; a sender sending extra off-grid
            # packets grew the buffer as fast).
            self._clean_heap()
            self._gap = 0
            self._silent = False
            return JitterSlot("packet", packet, None, skipped)
        self._gap += 1
        self._clean_heap()
        if self._heap:
            if self._last_seq is not None and self._packets[self._heap[0]][1] == self._last_seq + 1:
                return self._silence()  # sequence continues after the gap: sender paused
            nxt = self._packets.get(self._play_ts)
            return self._filler(nxt[0] if nxt else None, skipped)
        if self._gap > _UNDERRUN_CONCEAL or self._silent:
            return self._silence()
        return self._filler(None, skipped)

    def _adapt(self, delay: float, entry: tuple[RtpPacket, int] | None) -> int:
        """Steer the delay to the target: -1 = insert a frame now, n > 0 = skip n frames.

        Changing the length of a gap or of the silence before a talk spurt is free, and so
        is repeating or dropping a quiet frame; anywhere else changes wait for such a
        moment, unless packets are about to be late (grow at once) or the excess has
        lasted too long (drop anyway)."""
        target = self._target
        self._since_adjust += 1
        free = self._gap > 0 and (entry is None or entry[0].marker)
        if delay < target - _GROW_MARGIN:
            self._high = 0
            self._low += 1
            cheap = free or self._is_quiet_entry(entry)
            urgent = delay < target - self._frame or self._low >= _GROW_WAIT
            if cheap or (urgent and self._since_adjust >= _GROW_SPACING):
                self._since_adjust = self._low = 0
                return -1
            return 0
        self._low = 0
        if delay <= target + self._frame:
            self._high = 0
            return 0
        self._high += 1
        frames = int((delay - target) / self._frame)
        if delay > self.max_delay + self._frame:  # a stall or a burst: catch up now
            skipped = frames
        elif free and entry is None:  # shorten the gap, up to the next packet
            skipped = frames
            if self._heap:
                skipped = min(skipped, (self._heap[0] - self._play_ts) // self.frame_ticks)
        elif self._high >= _DROP_PERSIST and self._is_quiet_entry(entry):
            skipped = 1
        elif self._high >= _DROP_FORCE:
            # No quiet frame for a long time (a fast sender, no pauses): keep dropping
            # every _DROP_PERSIST frames until the delay is back near target.
            self._high = _DROP_FORCE - _DROP_PERSIST
            return 1
        else:
            return 0
        self._high = 0
        return skipped

    def _is_quiet_entry(self, entry: tuple[RtpPacket, int] | None) -> bool:
        return entry is not None and self._is_quiet is not None and self._is_quiet(entry[0])

    def _filler(self, next_packet: RtpPacket | None, skipped: int = 0) -> JitterSlot | None:
        """A frame with no packet: concealed after audio, silence after silence."""
        if self._silent:
            return None
        self._concealed += 1
        return JitterSlot("missing", None, next_packet, skipped)

    def _silence(self) -> None:
        self._silent = True
        return None

    def _realign(self) -> tuple[RtpPacket, int] | None:
        """A packet whose timestamp falls inside the current frame but off the grid (a
        sender that restarted its frame phase) moves the grid to it."""
        self._clean_heap()
        if self._heap and self._heap[0] < self._play_ts + self.frame_ticks:
            self._play_ts = self._heap[0]
            return self._packets[self._play_ts]
        return None

    def _skip_to(self, ts: int) -> None:
        """Advance the playout point to `ts`, dropping the frames in between."""
        packets = self._packets
        while self._heap and self._heap[0] < ts:
            old = heapq.heappop(self._heap)
            entry = packets.pop(old, None)
            if entry is not None:
                self._note_consumed(entry[1])
        self._dropped += max(0, (ts - self._play_ts) // self.frame_ticks)
        self._play_ts = ts

    def _clean_heap(self) -> None:
        heap = self._heap
        packets = self._packets
        while heap and ((heap[0] < self._play_ts and self._playing) or heap[0] not in packets):
            old = heapq.heappop(heap)
            entry = packets.pop(old, None)
            if entry is not None:  # off-grid packet the playout passed by
                self._note_consumed(entry[1])
                self._late += 1

    def note_foreign(self, packet: RtpPacket) -> None:
        """A packet of this stream that carries no audio for us (RFC 4733 events, comfort
        noise) took a sequence number: its gap is not a loss."""
        highest = self._seqs.highest
        if packet.ssrc != self._ssrc or highest is None:
            return
        seq = self._seqs.unwrap(packet.sequence)
        if seq > highest:  # the duplicate window follows the highest sequence number
            self._seen = (self._seen << (seq - highest)) & _SEEN_MASK
        if self._last_seq is None or seq > self._last_seq:
            self._foreign.add(seq)
            if len(self._foreign) > _SEEN_BITS:  # bounded: forget the oldest
                self._foreign.discard(min(self._foreign))

    def _note_consumed(self, seq: int) -> None:
        """A packet left the buffer (played or dropped): sequence gaps before it are losses."""
        last = self._last_seq
        if last is None or seq > last:
            # A jump of thousands is a sender renumbering its packets, not a loss.
            if last is not None and seq - last <= _SEEN_BITS:
                gap = seq - last - 1
                if gap and self._foreign:
                    foreign = {s for s in self._foreign if s < seq}
                    self._foreign -= foreign
                    gap -= sum(1 for s in foreign if s > last)
                self._lost += gap
            self._last_seq = seq

    def _update_target(self) -> None:
        ring = self._ring
        if not ring:
            return
        hist = self._hist
        need = len(ring) * self._spill
        count = 0
        i = self._top_bucket
        while i > 0:
            count += hist[i]
            if count > need:
                break
            i -= 1
        desired = min(max((i + 1) * _BUCKET, self.min_delay), self.max_delay)
        if desired >= self._target:
            self._target = desired
        else:
            self._target = max(desired, self._target - self._shrink_step)

    # -- inspection ----------------------------------------------------------------

    @property
    def target_delay(self) -> float:
        return self._target

    @property
    def stats(self) -> JitterStats:
        return JitterStats(
            received=self._received,
            lost=self._lost,
            late=self._late,
            duplicate=self._duplicate,
            concealed=self._concealed,
            dropped=self._dropped,
            inserted=self._inserted,
            resets=self._resets,
            buffered=len(self._packets),
            delay_seconds=self._delay,
            target_seconds=self._target,
        )


def _benchmark() -> None:
    """`python -m media.jitter`: µs per packet (push + pop) for 10 minutes of one call on
    a clean path and on a rough one (5 % loss, 40 ms jitter, 2 % duplicates, drift), for
    each implementation."""
    import statistics
    import time

    from media.netsim import NetConditions, NetSim

    cases = [
        ("clean", NetConditions()),
        ("rough", NetConditions(loss=0.05, jitter=0.04, duplicate=0.02, drift=0.005)),
    ]
    kinds = [("python", PyJitterBuffer)]
    if JitterBuffer is not PyJitterBuffer:
        kinds.append(("c", JitterBuffer))
    frames = 30_000
    for name, conditions in cases:
        net = NetSim(conditions, seed=1)
        sends = (
            (net.send_time(i), RtpPacket(0, i & 0xFFFF, i * 160, 1, b"\xff" * 160))
            for i in range(frames)
        )
        arrivals = sorted(
            ((arrival, packet) for t, packet in sends for arrival, _ in net.transmit(t, b"")),
            key=lambda a: a[0],
        )
        for kind, cls in kinds:
            runs = []
            for _ in range(5):
                jb = cls(8000, 160)
                i = 0
                clock = time.perf_counter
                spent = 0.0
                for k in range(frames):
                    now = 0.007 + k * 0.02
                    started = clock()
                    while i < len(arrivals) and arrivals[i][0] <= now:
                        jb.push(arrivals[i][1], arrivals[i][0])
                        i += 1
                    jb.pop(now)
                    spent += clock() - started
                runs.append(spent / len(arrivals) * 1e6)
            print(
                f"{name} ({kind}): {len(arrivals)} packets, push+pop per packet "
                f"best {min(runs):.2f} µs  median {statistics.median(runs):.2f} µs"
            )


try:
    from media import _jitter  # JitterBuffer in C, built by `pip install -e .` (setup.sh)
except ImportError:  # not built (no compiler): the Python class, ~10x the cost
    _jitter = None  # type: ignore[assignment]
    logging.getLogger(__name__).warning(
        "media._jitter is not built; jitter buffers run in Python (slower). "
        "Build it with: pip install -e . (needs a C compiler)"
    )

if _jitter is not None:
    # The C type returns these classes' instances and reads packets of this class fast.
    _jitter._bind(JitterSlot, JitterStats, RtpPacket)
    JitterBuffer = _jitter.JitterBuffer
else:
    JitterBuffer = PyJitterBuffer


if __name__ == "__main__":
    _benchmark()
