"""StreamLeg: the pipeline.leg.CallLeg of the socket doors, and what those doors share.

A door (Twilio, FreeSWITCH, AudioSocket) reads its socket and hands the leg wire audio
(receive_audio), digits and mark echoes; the leg does the rest the same way for all:

- Inbound: wire audio is cut into 20 ms packets on a frame-index timeline (Twilio's
  media timestamps, or the running sample count of a byte stream) and pushed, with its
  arrival time, into media.inbound.InboundMedia; so its jitter buffer absorbs the
  WebSocket/TCP delivery jitter. On every tick of the shared pacer one 16 kHz frame is
  pulled and given to the handler.
- Outbound: send_audio goes into media.outbound.OutboundAudio (one resample to the wire
  rate, exact 20 ms frames, marks between them). On each tick the leg writes frames
  while the audio already sent is less than `lead_frames` ahead of real time, so a far
  end that buffers (Twilio) gets a little slack and one that does not (AudioSocket) gets
  exactly one frame per tick. Marks fire when the far end echoes them (Twilio) or when
  our timeline says their audio has played (the others).
- clear_audio drops everything queued at once, tells the door to flush the far end, and
  reports every outstanding mark as not played on the next tick.
- One idempotent close(reason), bounded by a timeout, for every way a stream ends.

The process-wide part (pacer, metrics, handler factory, limits) is streams.context.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from media.inbound import InboundMedia
from media.l16 import check_l16_le, pcm_to_l16_be
from media.outbound import OutboundAudio
from media.pacer import Pacer
from media.rtp import plain_packet
from pipeline.leg import CallHandler, CallInfo, TransferError
from streams.context import StreamContext

__all__ = ["DTMF_DIGITS", "OUTCOMES", "Pacing", "StreamLeg"]

log = logging.getLogger(__name__)

# calls_total{outcome}: a bounded set.
OUTCOMES = frozenset({
    "remote_stop", "remote_hangup", "remote_error", "disconnect", "hangup", "transfer",
    "idle_timeout", "protocol_error", "too_large", "slow_consumer", "handler_error",
    "internal_error", "shutdown",
})
DTMF_DIGITS = frozenset("0123456789*#ABCD")

FRAME = 0.020
_SSRC = 0x53424F58  # one fixed source per leg: the jitter buffer sees one stream
_TS_MASK = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Pacing:
    """How a door's far end takes outbound audio."""

    lead_frames: int = 1  # audio sent ahead of real time, in 20 ms frames (>= 1)
    frames_per_message: int = 1  # frames joined into one wire message
    send_silence: bool = False  # fill gaps with silence: the far end wants a steady stream
    echo_marks: bool = False  # the far end confirms marks (Twilio) instead of our timeline


class StreamLeg:
    """CallLeg over a socket door. Subclasses write the wire: _write_audio, _write_mark,
    _write_clear and _close_wire; the door's reader calls receive_* and close()."""

    def __init__(
        self,
        info: CallInfo,
        handler: CallHandler,
        ctx: StreamContext,
        *,
        codec: str,  # "PCMU"/"PCMA" (G.711 bytes in) or "L16" (little-endian PCM in)
        wire_rate: int,
        pacing: Pacing,
    ) -> None:
        if ctx.pacer is None:
            raise RuntimeError("stream doors are not started (no pacer)")
        if pacing.lead_frames < 1 or pacing.frames_per_message < 1:
            raise ValueError(f"bad pacing {pacing}")
        self.info = info
        self.handler = handler
        self.transport = info.transport
        self._ctx = ctx
        self._pacer: Pacer = ctx.pacer
        self._clock = ctx.clock
        self._metrics = ctx.metrics
        self._codec = codec.upper()
        self._pacing = pacing
        self.reason: str | None = None
        self.started_at: float | None = None
        self._ready = False
        self._active = False
        self._start_task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._pending: list[bytes] = []  # frames popped but not yet written
        self._play_pos = 0  # tick index at which the audio sent so far ends
        self._timed: deque[tuple[int, str]] = deque()  # (tick it has played by, mark)
        self._echo: dict[str, str] = {}  # wire name -> mark, sent and not yet echoed
        self._cleared: list[str] = []  # marks to report as not played on the next tick
        self._last_rx = self._clock.now()
        self._next_flush = self._last_rx + 1.0
        self._frames_in = self._frames_out = 0
        self._reported = [0, 0, 0, 0]  # in, out, late, concealed already counted
        self._retired = (0, 0)  # late, concealed of inbound chains replaced by a rate change
        self.wire_rate = 0
        self._setup_inbound(wire_rate)
        self._out = OutboundAudio(wire_rate)
        self._silence = bytes(self._out.frame_bytes)

    def _setup_inbound(self, rate: int) -> None:
        if self._codec in ("PCMU", "PCMA"):
            if rate != 8000:
                law = "μ-law" if self._codec == "PCMU" else "A-law"
                raise ValueError(f"{law} streams run at 8000 Hz, not {rate}")
            self._inbound = InboundMedia(self._codec)
            # pad: the codec's silence byte (A-law's zero is 0xd5)
            self._pt, self._in_bytes = (0 if self._codec == "PCMU" else 8), 160
            self._pad = b"\xff" if self._codec == "PCMU" else b"\xd5"
            self._to_payload: Callable[[bytes], bytes] | None = None
        elif self._codec == "L16":
            self._inbound = InboundMedia("L16", rate=rate)  # InboundError on other rates
            self._pt, self._in_bytes, self._pad = 96, rate // 50 * 2, b"\x00"
            self._to_payload = _le_to_be
        else:
            raise ValueError(f"stream codec must be PCMU, PCMA or L16, not {self._codec!r}")
        self._ticks = rate // 50  # RTP timestamp units per 20 ms
        self._carry = b""
        self._next_index = 0
        self.wire_rate = rate

    # -- CallLeg ----------------------------------------------------------------------

    def send_audio(self, pcm: bytes, rate: int, mark: str | None = None) -> None:
        if self.reason is None:
            self._out.push(pcm, rate, mark)

    def clear_audio(self) -> None:
        """Barge-in: drop what is queued, flush the far end, report outstanding marks."""
        if self.reason is not None:
            return
        queued = self._out.clear()
        self._pending = []
        sent = list(self._echo.values()) + [mark for _, mark in self._timed]
        self._echo.clear()
        self._timed.clear()
        self._cleared += sent + queued  # reported on the next tick, in play order
        self._play_pos = 0
        self._write_clear()

    def queued_seconds(self) -> float:
        ahead = max(0, self._play_pos - self._pacer.tick - 1)
        return self._out.queued_seconds() + (len(self._pending) + ahead) * FRAME

    def send_dtmf(self, digits: str) -> None:
        """None of the stream protocols carries DTMF to the far end; dropped (logged)."""
        bad = [d for d in digits if d not in DTMF_DIGITS]
        if bad:
            raise ValueError(f"not DTMF digits: {''.join(bad)!r}")
        log.debug("%s stream %s: cannot send DTMF %r", self.transport, self.info.call_id, digits)

    async def transfer(self, target: str) -> None:
        raise TransferError(f"{self.transport} streams cannot transfer a call")

    async def hangup(self, reason: str = "hangup") -> None:
        await self.close(reason if reason in OUTCOMES else "hangup")

    # -- the door's side --------------------------------------------------------------

    def start(self) -> None:
        """Join the pacer and start the handler."""
        self._ctx.legs.add(self)
        self._metrics.calls_active.labels(self.transport).inc()
        self._active = True
        self.started_at = self._last_rx = self._clock.now()
        self._pacer.add(self._tick)
        self._start_task = asyncio.get_running_loop().create_task(
            self._run_start(), name=f"stream-start-{self.info.call_id}")

    async def _run_start(self) -> None:
        try:
            await self.handler.on_start(self)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s stream %s: handler on_start failed", self.transport,
                          self.info.call_id)
            self.close_soon("handler_error")
            return
        self._ready = self.reason is None

    def touch(self) -> None:
        """Something arrived: the stream is alive."""
        self._last_rx = self._clock.now()

    def receive_audio(self, data: bytes, frame_index: int | None = None) -> None:
        """Wire audio (μ-law, or little-endian L16) from the far end. `frame_index` places
        it on the timeline (Twilio's timestamp / 20 ms); None continues the byte stream."""
        now = self._last_rx = self._clock.now()
        if frame_index is None:
            if self._carry:
                data = self._carry + data
            whole = len(data) - len(data) % self._in_bytes
            self._carry = data[whole:]
            index = self._next_index
        else:
            whole = len(data)
            if whole % self._in_bytes:  # a short piece: pad the rest of its frame
                data += self._pad * (self._in_bytes - whole % self._in_bytes)
                whole = len(data)
            index = frame_index
        size, ticks, convert, pt = self._in_bytes, self._ticks, self._to_payload, self._pt
        push = self._inbound.push
        for offset in range(0, whole, size):
            piece = data[offset:offset + size]
            payload = convert(piece) if convert is not None else piece
            push(plain_packet(pt, index & 0xFFFF, (index * ticks) & _TS_MASK, _SSRC, payload),
                 now)
            index += 1
        self._frames_in += index - (self._next_index if frame_index is None else frame_index)
        self._next_index = index

    def receive_dtmf(self, digit: str, method: str) -> None:
        self.touch()
        self._metrics.dtmf_digits_total.labels(self.transport, method).inc()
        if self._ready and self.reason is None:
            try:
                self.handler.on_dtmf(digit)
            except Exception:
                log.exception("%s stream %s: handler on_dtmf failed", self.transport,
                              self.info.call_id)
                self.close_soon("handler_error")

    def receive_mark(self, wire_name: str) -> bool:
        """The far end played everything up to this mark (Twilio echoes marks). Marks sent
        before it are played too. False for a name we are not waiting for."""
        self.touch()
        if wire_name not in self._echo:
            return False
        played = []
        for name in list(self._echo):
            played.append(self._echo.pop(name))
            if name == wire_name:
                break
        self._report(played, True)
        return True

    def set_wire_rate(self, rate: int) -> None:
        """The far end's audio turned out to run at another rate (AudioSocket's first
        frame). Audio queued for the old rate is carried over, resampled."""
        if rate == self.wire_rate:
            return
        late, concealed = self._jitter_totals()
        self._setup_inbound(rate)
        self._retired = (late, concealed)
        old, new = self._out, OutboundAudio(rate)
        if self._pending:
            new.push(b"".join(self._pending), old.wire_rate)
            self._pending = []
        old.flush()
        while True:
            frame, marks = old.pop()
            if frame is not None:
                new.push(frame, old.wire_rate)
            for mark in marks:
                new.push(b"", old.wire_rate, mark)
            if frame is None:
                break
        self._out = new
        self._silence = bytes(new.frame_bytes)

    # -- the pacer tick ---------------------------------------------------------------

    def _tick(self, index: int) -> None:
        if self.reason is not None:
            return
        try:
            self._step(index)
        except Exception:
            # Our bug, not the caller's: end this stream, never the pacer or the others.
            log.exception("%s stream %s: tick failed", self.transport, self.info.call_id)
            self.close_soon("internal_error")

    def _step(self, index: int) -> None:
        now = self._clock.now()
        if self._cleared:
            marks, self._cleared = self._cleared, []
            self._report(marks, False)
        frame = self._inbound.pull(now)  # always a frame: decoded, concealed or silence
        if self._ready:
            try:
                self.handler.on_frame(frame)
            except Exception:
                log.exception("%s stream %s: handler on_frame failed", self.transport,
                              self.info.call_id)
                self.close_soon("handler_error")
        if self.reason is not None:  # the handler hung up
            return
        self._pump(index)
        timed = self._timed
        while timed and timed[0][0] <= index:
            self._report([timed.popleft()[1]], True)
        if now - self._last_rx > self._ctx.idle_timeout:
            log.info("%s stream %s: nothing received for %.1f s", self.transport,
                     self.info.call_id, now - self._last_rx)
            self.close_soon("idle_timeout")
        if now >= self._next_flush:
            self._next_flush = now + 1.0
            self._metrics.jitter_delay_seconds.observe(self._inbound.stats.jitter.delay_seconds)
            self._flush_metrics()

    def _pump(self, index: int) -> None:
        """Write what is due: frames while less than lead_frames ahead, whole messages."""
        pacing, out = self._pacing, self._out
        pos = self._play_pos if self._play_pos > index else index
        limit = index + pacing.lead_frames
        pending = self._pending
        while pos < limit:
            frame, marks = out.pop()
            if frame is not None:
                pending.append(frame)
                pos += 1
            if marks:
                if pending:
                    self._emit(pending)
                    pending = self._pending = []
                self._place_marks(marks, pos)
            if frame is None:
                break
            if len(pending) >= pacing.frames_per_message:
                self._emit(pending)
                pending = self._pending = []
        if pending and not len(out):  # nothing more queued: do not hold a partial message
            self._emit(pending)
            self._pending = []
        if pacing.send_silence and pos <= index and self.reason is None:
            self._emit([self._silence])
            pos += 1
        self._play_pos = pos

    def _emit(self, frames: list[bytes]) -> None:
        self._frames_out += len(frames)
        self._write_audio(frames)

    def _place_marks(self, marks: list[str], pos: int) -> None:
        if not self._pacing.echo_marks:
            self._timed.extend((pos, mark) for mark in marks)
            return
        for mark in marks:
            name, n = mark, 1
            while name in self._echo:  # the far end echoes names: keep them unique
                n += 1
                name = f"{mark}#{n}"
            self._echo[name] = mark
            self._write_mark(name)

    def _report(self, marks: list[str], played: bool) -> None:
        if not self._ready or self.reason is not None:
            return
        for mark in marks:
            try:
                self.handler.on_mark(mark, played)
            except Exception:
                log.exception("%s stream %s: handler on_mark failed", self.transport,
                              self.info.call_id)
                self.close_soon("handler_error")
                return

    # -- the wire (subclasses) --------------------------------------------------------

    def _write_audio(self, frames: list[bytes]) -> None:
        """Send these 20 ms frames of native PCM at wire_rate, in order, now."""
        raise NotImplementedError

    def _write_mark(self, name: str) -> None:
        """Send a mark after the audio written so far (echo_marks doors only)."""
        raise NotImplementedError

    def _write_clear(self) -> None:
        """Drop audio written but not yet on the wire, and tell the far end to flush."""

    async def _close_wire(self, reason: str) -> None:
        """Say goodbye on the wire as the reason deserves, and close the socket."""

    # -- closing ----------------------------------------------------------------------

    def close_soon(self, reason: str) -> None:
        """close() from code that cannot await. The first reason wins."""
        if self._close_task is None:
            self.reason = reason
            self._close_task = asyncio.get_running_loop().create_task(
                self._close(reason), name=f"stream-close-{self.info.call_id}")

    async def close(self, reason: str) -> None:
        """End the stream. Idempotent: later calls wait for the first one to finish."""
        self.close_soon(reason)
        assert self._close_task is not None
        await asyncio.shield(self._close_task)

    async def _close(self, reason: str) -> None:
        log.info("%s stream %s ending: %s", self.transport, self.info.call_id, reason)
        try:
            async with asyncio.timeout(self._ctx.close_timeout):
                await self._teardown(reason)
        except TimeoutError:
            log.warning("%s stream %s: teardown took over %.1f s; abandoned", self.transport,
                        self.info.call_id, self._ctx.close_timeout)
        finally:
            self._finish(reason)

    async def _teardown(self, reason: str) -> None:
        self._pacer.remove(self._tick)
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
        wire = asyncio.get_running_loop().create_task(self._close_wire_logged(reason))
        try:
            if self._ready:
                try:
                    await self.handler.on_end(reason)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s stream %s: handler on_end failed", self.transport,
                                  self.info.call_id)
        finally:
            await wire

    async def _close_wire_logged(self, reason: str) -> None:
        try:
            await self._close_wire(reason)
        except (OSError, RuntimeError) as exc:  # the socket may already be gone
            log.debug("%s stream %s: closing the socket: %s", self.transport,
                      self.info.call_id, exc)

    def _finish(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._ctx.legs.discard(self)
        self._flush_metrics()
        # The app's call recorder (switchboard.records) wraps the handler; it hears of every
        # end here, also of streams whose handler never started.
        closed = getattr(self.handler, "call_closed", None)
        if closed is not None:
            closed(reason)
        if not self._active:
            return
        m, t = self._metrics, self.transport
        m.calls_active.labels(t).dec()
        m.calls_total.labels(t, reason if reason in OUTCOMES else "internal_error").inc()
        if self.started_at is not None:
            m.call_duration_seconds.labels(t).observe(self._clock.now() - self.started_at)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # -- metrics ------------------------------------------------------------------------

    def _jitter_totals(self) -> tuple[int, int]:
        j = self._inbound.stats.jitter
        return self._retired[0] + j.late, self._retired[1] + j.concealed

    def _flush_metrics(self) -> None:
        m, t, seen = self._metrics, self.transport, self._reported
        late, concealed = self._jitter_totals()
        for i, value, counter in (
            (0, self._frames_in, m.stream_frames_total.labels(t, "in")),
            (1, self._frames_out, m.stream_frames_total.labels(t, "out")),
            (2, late, m.jitter_late_total),
            (3, concealed, m.jitter_concealed_frames_total),
        ):
            if value > seen[i]:
                counter.inc(value - seen[i])
                seen[i] = value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.info.call_id} {self.reason or 'live'}>"


def _le_to_be(piece: bytes) -> bytes:
    """Little-endian wire L16 -> the RTP (big-endian) L16 that InboundMedia decodes."""
    return pcm_to_l16_be(check_l16_le(piece))
