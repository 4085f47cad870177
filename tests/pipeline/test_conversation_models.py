"""Whole conversations on the real packaged models: Whisper tiny.en, SmolLM2 in llama.cpp,
Piper en_US-joe-medium.

A recording call leg plays the bot's audio out and feeds the caller's side as 20 ms
frames of 16 kHz PCM, one every 20 ms of real time (the models run at their real speed
beside it). The caller's questions are spoken by Piper and espeak-ng. The tests assert
on what happened, never on how long it took; the timings are printed (pytest -s) and
collected for the report.
"""

from __future__ import annotations

import asyncio
import difflib
import re
import statistics
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from media.clock import MonotonicClock
from pipeline.conversation import Conversation, ConversationSettings, State
from pipeline.engines import Engines, EngineSettings
from pipeline.leg import FRAME_BYTES, CallInfo
from pipeline.llm import LlmError
from pipeline.metrics import STAGES, Metrics
from tests.pipeline.conftest import to_16k

pytestmark = pytest.mark.slow

FRAME_S = 0.02
TIMINGS: dict[str, list[float]] = {}


def frames_of(pcm: bytes) -> list[bytes]:
    pcm += bytes(-len(pcm) % FRAME_BYTES)
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


class SwitchableLlm:
    """The real LLM, which can be told to fail its next request."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.fail_next = False

    def stream_chat(self, messages: Any, **kw: Any) -> Iterator[str]:
        if self.fail_next:
            self.fail_next = False
            raise LlmError(f"{self.name}: scripted failure for the test")
        return self.inner.stream_chat(messages, **kw)

    def warm_up(self) -> None:
        self.inner.warm_up()


class RecordingLeg:
    """Plays queued audio `speed` frames per tick (marks fire as reached); keeps every
    marked piece of bot audio with its kind ("greeting", "answer", "apology", ...)."""

    def __init__(self, speed: int = 1) -> None:
        self.info = CallInfo("real-1", "sip", caller="test")
        self.handler: Conversation | None = None
        self.speed = speed
        self.queue: deque[list[Any]] = deque()
        self.pieces: list[tuple[str, bytes, int]] = []  # (kind, pcm, rate) per mark
        self._since_mark: list[bytes] = []
        self.clears = 0
        self.hangups: list[str] = []

    def send_audio(self, pcm: bytes, rate: int, mark: str | None = None) -> None:
        self._since_mark.append(pcm)
        self.queue.append(["audio", len(pcm), rate])
        if mark is not None:
            self.pieces.append((mark.split("-", 1)[1], b"".join(self._since_mark), rate))
            self._since_mark = []
            self.queue.append(["mark", mark])

    def clear_audio(self) -> None:
        self.clears += 1
        marks = [m for kind, m, *_ in self.queue if kind == "mark"]
        self.queue.clear()
        for m in marks:
            assert self.handler is not None
            self.handler.on_mark(m, False)

    def queued_seconds(self) -> float:
        return sum(n / 2 / r for kind, n, r in self.queue if kind == "audio")  # type: ignore[misc]

    def send_dtmf(self, digits: str) -> None: ...

    async def transfer(self, target: str) -> None: ...

    async def hangup(self, reason: str = "normal") -> None:
        self.hangups.append(reason)

    def tick(self) -> None:
        budget = FRAME_S * self.speed
        while self.queue:
            item = self.queue[0]
            if item[0] == "mark":
                self.queue.popleft()
                assert self.handler is not None
                self.handler.on_mark(item[1], True)
                continue
            if budget <= 1e-9:
                break
            take = min(item[1], round(budget * item[2]) * 2)
            item[1] -= take
            budget -= take / 2 / item[2]
            if item[1] <= 0:
                self.queue.popleft()

    def audio(self, kind: str) -> list[bytes]:
        return [pcm for k, pcm, _ in self.pieces if k == kind]


class RealtimeCall:
    def __init__(self, engines: Engines, metrics: Metrics, speed: int = 1) -> None:
        self.metrics = metrics
        self.conv = Conversation(
            engines, ConversationSettings(max_tokens=40, temperature=0.2), metrics=metrics
        )
        self.leg = RecordingLeg(speed)
        self.leg.handler = self.conv
        self.inbound: deque[bytes] = deque()
        self.loop = asyncio.get_running_loop()
        self._t0 = 0.0
        self._ticks = 0

    async def start(self) -> None:
        await self.conv.on_start(self.leg)
        self._t0 = self.loop.time()

    def speak(self, pcm16k: bytes, pause_before: float = 0.4) -> None:
        self.inbound.extend([bytes(FRAME_BYTES)] * round(pause_before / FRAME_S))
        self.inbound.extend(frames_of(pcm16k))

    async def _step(self) -> None:
        """One 20 ms frame, on a drift-free real-time schedule."""
        self._ticks += 1
        await asyncio.sleep(max(0.0, self._t0 + self._ticks * FRAME_S - self.loop.time()))
        self.leg.tick()
        self.conv.on_frame(self.inbound.popleft() if self.inbound else bytes(FRAME_BYTES))

    async def run_until(self, cond: Callable[[], bool], limit_s: float, what: str) -> None:
        for _ in range(round(limit_s / FRAME_S)):
            if cond():
                return
            await self._step()
        raise AssertionError(f"no {what} within {limit_s} s of call time")

    async def run_for(self, seconds: float) -> None:
        for _ in range(round(seconds / FRAME_S)):
            await self._step()

    def turns_done(self, n: int) -> Callable[[], bool]:
        return lambda: (
            len([t for t in self.conv.calllog.turns if t.outcome != "pending"]) >= n
            and self.conv.state is State.LISTENING
            and not self.inbound
        )

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def record(turn_timings: dict[str, float]) -> None:
    for k, v in turn_timings.items():
        TIMINGS.setdefault(k, []).append(v)


@pytest.fixture(scope="module")
def engines(whisper_asr, llama_llm, piper_tts) -> Iterator[Engines]:  # type: ignore[no-untyped-def]
    e = Engines(whisper_asr, SwitchableLlm(llama_llm), piper_tts, settings=EngineSettings(),
                metrics=Metrics(), clock=MonotonicClock())
    asyncio.run(e.start())
    yield e
    for w in (e.asr_worker, e.llm_worker, e.tts_worker):
        w.close()


def similarity(heard: str, said: str) -> float:
    """0..1: how alike two sentences are, letters only, case ignored."""
    def words(t: str) -> str:
        return " ".join(re.findall(r"[a-z]+", t.lower()))
    return difflib.SequenceMatcher(None, words(heard), words(said)).ratio()


def english(text: str) -> bool:
    return len(re.findall(r"[A-Za-z]{2,}", text)) >= 2 and text.isascii()


async def test_a_whole_conversation_on_the_real_models(  # type: ignore[no-untyped-def]
    engines: Engines, piper_speech_16k, espeak_speech_16k, whisper_asr, piper_tts
) -> None:
    metrics = Metrics()
    call = RealtimeCall(engines, metrics, speed=3)
    await call.start()
    await call.run_until(lambda: call.conv.state is State.LISTENING, 20, "greeting")
    assert call.leg.audio("greeting") and len(call.leg.audio("greeting")[0]) > 22050
    call.speak(piper_speech_16k("What time do you open on Saturday?"))
    await call.run_until(call.turns_done(1), 40, "first answer")
    turn = call.conv.calllog.turns[0]
    # Piper samples noise on every synthesis (VITS), so the question never sounds quite
    # the same twice, and tiny.en once heard "setter day". Close enough passes; another
    # question ("close on sunday", 0.86) or a lost one does not.
    assert similarity(turn.transcript, "What time do you open on Saturday?") >= 0.9, turn
    assert turn.outcome == "answered" and turn.heard
    answer = b"".join(call.leg.audio("answer"))
    assert len(answer) > 0.5 * 2 * piper_tts.sample_rate
    heard = whisper_asr.transcribe(to_16k(answer, piper_tts.sample_rate)).text
    print(f"\nQ: {turn.transcript}\nA: {turn.heard}\nA as transcribed: {heard}")
    assert english(heard), heard
    for stage in STAGES:
        assert call.count("switchboard_stage_duration_seconds_count", stage=stage) == 1, stage
    assert call.count("switchboard_response_latency_seconds_count", transport="sip") == 1
    assert call.count("switchboard_turns_total") == 1
    record(turn.timings)
    # Two more turns (a second voice for one of them) for the timing medians.
    call.speak(espeak_speech_16k("Can you recommend a good book?"), pause_before=0.6)
    await call.run_until(call.turns_done(2), 40, "second answer")
    call.speak(piper_speech_16k("How many days are in a week?"), pause_before=0.6)
    await call.run_until(call.turns_done(3), 40, "third answer")
    for t in call.conv.calllog.turns[1:]:
        print(f"Q: {t.transcript}\nA: {t.heard}")
        assert t.transcript and t.outcome == "answered"
        record(t.timings)
    assert len(call.conv.history.messages()) == 7  # system + three question/answer pairs
    await call.conv.on_end("test over")


async def test_barge_in_on_the_real_models(  # type: ignore[no-untyped-def]
    engines: Engines, piper_speech_16k
) -> None:
    metrics = Metrics()
    call = RealtimeCall(engines, metrics, speed=1)
    await call.start()
    await call.run_until(lambda: call.conv.state is State.LISTENING, 20, "greeting")
    call.speak(piper_speech_16k("Please tell me a long story about a brave little dragon."))
    # Wait until the first chunk of the answer has been heard, then talk over the rest.
    def heard_a_chunk() -> bool:
        return any(e["event"] == "mark" and "answer" in e["mark"] and e["played"]
                   for e in call.conv.calllog.events)

    await call.run_until(heard_a_chunk, 40, "a chunk of the answer played")
    await call.run_for(0.3)
    assert call.conv.state is State.SPEAKING
    call.speak(piper_speech_16k("Stop. What time is it?"), pause_before=0)
    await call.run_until(lambda: call.leg.clears > 0, 10, "barge-in")
    assert call.conv.state is State.LISTENING
    assert call.count("switchboard_bargeins_total", transport="sip") == 1
    latency = call.count("switchboard_bargein_latency_seconds_sum", transport="sip")
    event = next(e for e in call.conv.calllog.events if e["event"] == "barge_in")
    first = call.conv.calllog.turns[0]
    assert first.outcome == "interrupted"
    assert first.heard and first.answer.startswith(first.heard) and first.answer != first.heard
    # Only what the caller heard is kept, marked as cut off.
    assert call.conv.history.messages()[2] == {"role": "assistant", "content": first.heard + "…"}
    print(f"\nbarge-in: onset confirmed -> clear_audio {latency * 1000:.3f} ms, "
          f"speech onset -> confirmed {event['detect_ms']} ms; heard: {first.heard!r}")
    TIMINGS.setdefault("bargein_confirmed_to_clear", []).append(latency)
    TIMINGS.setdefault("bargein_onset_to_confirmed", []).append(event["detect_ms"] / 1000)
    # The interrupting words become the next turn. Piper pauses after "Stop." for longer
    # than the endpointing wait, so "Stop." may be a turn of its own, itself interrupted
    # by "What time is it?" and then said again with it: wait for the question.
    def asked() -> bool:
        return any("time" in t.transcript.lower() and t.outcome != "pending"
                   for t in call.conv.calllog.turns[1:])

    await call.run_until(asked, 40, "answer to the interruption")
    await call.conv.on_end("test over")


async def test_an_llm_failure_plays_the_apology_and_the_call_goes_on(  # type: ignore[no-untyped-def]
    engines: Engines, piper_speech_16k, whisper_asr, piper_tts
) -> None:
    metrics = Metrics()
    call = RealtimeCall(engines, metrics, speed=3)
    await call.start()
    await call.run_until(lambda: call.conv.state is State.LISTENING, 20, "greeting")
    engines.llm.fail_next = True  # type: ignore[attr-defined]
    call.speak(piper_speech_16k("What is the weather like today?"))
    await call.run_until(call.turns_done(1), 30, "apology")
    (apology,) = call.leg.audio("apology")
    assert call.conv.calllog.turns[0].outcome == "error"
    assert call.count("switchboard_stage_errors_total", stage="llm", kind="LlmError") == 1
    said = whisper_asr.transcribe(to_16k(apology, piper_tts.sample_rate)).text.lower()
    assert "sorry" in said, said
    call.speak(piper_speech_16k("What is two plus two?"), pause_before=0.6)
    await call.run_until(call.turns_done(2), 40, "answer after the apology")
    second = call.conv.calllog.turns[1]
    assert second.outcome == "answered" and second.heard
    await call.conv.on_end("test over")


def test_report_the_timings() -> None:
    """Median per-stage timings measured above (printed with pytest -s)."""
    if not TIMINGS:
        pytest.skip("no real-model turns ran")
    print()
    for key, values in sorted(TIMINGS.items()):
        print(f"{key:28s} median {statistics.median(values) * 1000:8.1f} ms over {len(values)}")
