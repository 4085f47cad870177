"""StreamLeg without sockets: pacing and lead, marks (timed and echoed), clear, rate
changes, the handler's life cycle, idle timeout and the one close path."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pipeline.echo import EchoHandler
from pipeline.leg import FRAME_BYTES, CallInfo, TransferError
from streams.leg import Pacing, StreamLeg
from tests.streams.conftest import Harness, Speaker, tone, until

ONE_FRAME = Pacing()


class RecordingLeg(StreamLeg):
    """Writes go to lists instead of a socket."""

    def __init__(self, h: Harness, handler: object, *, codec: str = "L16", rate: int = 8000,
                 pacing: Pacing = ONE_FRAME) -> None:
        super().__init__(CallInfo("leg-1", "audiosocket"), handler, h.ctx,  # type: ignore[arg-type]
                         codec=codec, wire_rate=rate, pacing=pacing)
        self.messages: list[list[bytes]] = []
        self.marks_written: list[str] = []
        self.clears = 0
        self.wire_closed: str | None = None

    def _write_audio(self, frames: list[bytes]) -> None:
        self.messages.append(list(frames))

    def _write_mark(self, name: str) -> None:
        self.marks_written.append(name)

    def _write_clear(self) -> None:
        self.clears += 1

    async def _close_wire(self, reason: str) -> None:
        self.wire_closed = reason

    @property
    def frames_written(self) -> int:
        return sum(len(m) for m in self.messages)


async def started(h: Harness, leg: RecordingLeg) -> None:
    leg.start()
    await until(lambda: leg._ready)


async def test_lead_bounds_what_is_sent_ahead(harness: Harness) -> None:
    speaker = Speaker([(tone(1.0), "all")])
    leg = RecordingLeg(harness, speaker, pacing=Pacing(lead_frames=5))
    await started(harness, leg)
    await harness.step()
    assert leg.frames_written == 5  # the lead, in one tick
    for n in range(1, 20):
        await harness.step()
        assert leg.frames_written == 5 + n  # then exactly one per tick
    assert all(len(m) == 1 and len(m[0]) == 320 for m in leg.messages)
    await harness.step(40)
    assert leg.frames_written == 50  # 1 s of 8 kHz audio, not a frame more
    assert speaker.marks == [("all", True)]
    await leg.close("hangup")


async def test_timed_marks_fire_when_their_audio_has_played(harness: Harness) -> None:
    speaker = Speaker([(tone(0.1), "a"), (tone(0.1), "b")])
    leg = RecordingLeg(harness, speaker, pacing=Pacing(lead_frames=1))
    await started(harness, leg)
    ticks = 0
    while not speaker.marks:
        await harness.step()
        ticks += 1
    assert (ticks, speaker.marks) == (6, [("a", True)])  # 5 frames sent, then played
    await harness.step(5)
    assert speaker.marks == [("a", True), ("b", True)]
    assert leg.marks_written == []  # timed marks never go on the wire
    await leg.close("hangup")


async def test_messages_group_frames_and_flush_partials(harness: Harness) -> None:
    speaker = Speaker([(tone(0.5), "m")])
    leg = RecordingLeg(harness, speaker, pacing=Pacing(lead_frames=20, frames_per_message=10))
    await started(harness, leg)
    await harness.step()
    assert [len(m) for m in leg.messages] == [10, 10]
    await harness.step(4)
    assert [len(m) for m in leg.messages] == [10, 10]  # one frame a tick into the next
    await harness.step()
    # the rest (5 frames) went out as a short message when the queue ran dry
    assert [len(m) for m in leg.messages] == [10, 10, 5]
    await leg.close("hangup")


async def test_echo_marks_wait_for_the_far_end(harness: Harness) -> None:
    speaker = Speaker([(tone(0.04), "x"), (tone(0.04), "x"), (tone(0.04), "y")])
    leg = RecordingLeg(harness, speaker, codec="PCMU", pacing=Pacing(lead_frames=10,
                                                                     echo_marks=True))
    await started(harness, leg)
    await harness.step(3)
    assert leg.marks_written == ["x", "x#2", "y"]  # repeated names made unique on the wire
    assert speaker.marks == []  # sent is not played
    assert not leg.receive_mark("nope")
    assert leg.receive_mark("x#2")  # echoed: it and every mark before it are played
    assert speaker.marks == [("x", True), ("x", True)]
    leg.clear_audio()
    await harness.step()
    assert speaker.marks[-1] == ("y", False)  # never echoed: reported as not heard
    assert not leg.receive_mark("y")  # a late echo of a cleared mark is ignored
    await leg.close("hangup")


async def test_clear_drops_queue_and_reports_marks_on_the_next_tick(harness: Harness) -> None:
    speaker = Speaker([(tone(0.2), "one"), (tone(0.2), "two"), (tone(0.2), "three")])
    leg = RecordingLeg(harness, speaker, pacing=Pacing(lead_frames=1))
    await started(harness, leg)
    await harness.step(12)
    assert speaker.marks == [("one", True)]
    assert leg.queued_seconds() > 0.3
    speaker.on_dtmf("*")  # barge-in
    assert leg.clears == 1
    assert speaker.marks == [("one", True)]  # not from inside the handler's own call
    assert leg.queued_seconds() == 0
    sent = leg.frames_written
    await harness.step()
    assert speaker.marks == [("one", True), ("two", False), ("three", False)]
    await harness.step(10)
    assert leg.frames_written == sent  # nothing more after the clear
    await leg.close("hangup")


async def test_silence_keeps_the_stream_going(harness: Harness) -> None:
    leg = RecordingLeg(harness, Speaker([]), pacing=Pacing(send_silence=True))
    await started(harness, leg)
    await harness.step(10)
    assert leg.frames_written == 10  # one frame per tick
    assert all(f == bytes(320) for m in leg.messages for f in m)
    await leg.close("hangup")


async def test_echo_through_the_jitter_buffer(harness: Harness) -> None:
    echo = EchoHandler(delay=0.2)
    leg = RecordingLeg(harness, echo, pacing=Pacing(send_silence=True))
    await started(harness, leg)
    chirp = np.frombuffer(tone(0.4, freq=700), dtype="<i2")
    signal = np.concatenate([chirp, np.zeros(8000, dtype="<i2")]).tobytes()
    # 40 ms per receive (two frames): the leg cuts and timestamps them.
    for i in range(0, len(signal), 640):
        leg.receive_audio(signal[i : i + 640])
        await harness.step(2)
    assert echo.frames_in > 60
    out = np.frombuffer(b"".join(f for m in leg.messages for f in m), dtype="<i2")
    assert np.abs(out).max() > 3000  # the tone came back
    first = int(np.argmax(np.abs(out) > 1000)) / 8000
    assert 0.2 < first < 0.6  # after the echo delay plus the jitter buffer
    await leg.close("hangup")


async def test_set_wire_rate_carries_queued_audio_over(harness: Harness) -> None:
    speaker = Speaker([(tone(0.2), "m")])
    leg = RecordingLeg(harness, speaker, pacing=Pacing(lead_frames=1))
    await started(harness, leg)
    await harness.step(2)
    before = leg.frames_written
    leg.set_wire_rate(16000)
    leg.receive_audio(bytes(640))
    await harness.step(12)
    sizes = {len(f) for m in leg.messages[before:] for f in m}
    assert sizes == {640}
    assert speaker.marks == [("m", True)]
    assert leg.frames_written - before in (8, 9)  # the rest of 10 frames, maybe + filter tail
    await leg.close("hangup")


async def test_idle_timeout_closes_once_and_counts(harness: Harness) -> None:
    speaker = Speaker([])
    leg = RecordingLeg(harness, speaker)
    await started(harness, leg)
    await harness.step(round(harness.ctx.idle_timeout / 0.02) + 2)
    await leg.wait_closed()
    assert (leg.reason, leg.wire_closed, speaker.ended) == ("idle_timeout",) * 3
    assert harness.value("switchboard_calls_total", transport="audiosocket",
                         outcome="idle_timeout") == 1
    assert harness.value("switchboard_calls_active", transport="audiosocket") == 0
    await leg.close("hangup")  # idempotent: the first reason stays
    assert leg.reason == "idle_timeout"
    assert harness.value("switchboard_calls_total", transport="audiosocket",
                         outcome="idle_timeout") == 1


class Broken(Speaker):
    def on_frame(self, pcm: bytes) -> None:
        raise RuntimeError("bug in the agent")


async def test_handler_error_ends_the_call_not_the_pacer(harness: Harness) -> None:
    bad = RecordingLeg(harness, Broken([]))
    good = RecordingLeg(harness, Speaker([]))
    await started(harness, bad)
    await started(harness, good)
    await harness.step(2)
    await bad.wait_closed()
    assert bad.reason == "handler_error"
    assert not good.closed and harness.pacer.stats.subscriber_errors == 0
    await harness.step(2)
    await good.close("hangup")


async def test_leg_api_refusals(harness: Harness) -> None:
    leg = RecordingLeg(harness, Speaker([]))
    await started(harness, leg)
    with pytest.raises(TransferError, match="cannot transfer"):
        await leg.transfer("+15550001111")
    with pytest.raises(ValueError, match="not DTMF digits: 'x'"):
        leg.send_dtmf("1x")
    leg.send_dtmf("12#")  # no outbound DTMF on stream doors: dropped, not an error
    await leg.hangup("goodbye")
    assert leg.reason == "hangup"
    leg.send_audio(tone(0.1), 8000)  # after the end: ignored
    with pytest.raises(ValueError, match="μ-law streams run at 8000"):
        RecordingLeg(harness, Speaker([]), codec="PCMU", rate=16000)


async def test_handler_start_failure(harness: Harness) -> None:
    class NoStart(Speaker):
        async def on_start(self, leg: object) -> None:
            raise RuntimeError("cannot start")

    handler = NoStart([])
    leg = RecordingLeg(harness, handler)
    leg.start()
    await leg.wait_closed()
    assert leg.reason == "handler_error" and handler.ended is None  # never started: no on_end


async def test_shutdown_closes_every_leg(harness: Harness) -> None:
    legs = [RecordingLeg(harness, Speaker([])) for _ in range(3)]
    for leg in legs:
        await started(harness, leg)
    await harness.ctx.shutdown(2.0)
    assert all(leg.reason == "shutdown" for leg in legs)
    assert not harness.ctx.legs
    assert harness.ctx.enter("audiosocket") == "shutdown"


async def test_frames_reach_the_handler_every_tick(harness: Harness) -> None:
    speaker = Speaker([])
    leg = RecordingLeg(harness, speaker)
    await started(harness, leg)
    n = speaker.frames
    await harness.step(25)
    assert speaker.frames == n + 25
    await leg.close("hangup")
    assert harness.value("switchboard_stream_frames_total", transport="audiosocket",
                         direction="out") == 0


def test_frame_bytes_constant() -> None:
    assert FRAME_BYTES == 640
    assert asyncio.iscoroutinefunction(StreamLeg.close)
