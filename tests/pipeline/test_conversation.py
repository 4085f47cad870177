"""The conversation state machine, driven frame by frame on a ManualClock.

Engines are scripted (an ASR returning fixed texts, an LLM yielding fixed tokens, a TTS
yielding fixed PCM) and run by an InlineWorker on the loop, so every step is
deterministic: after each 20 ms frame the loop is run until it has nothing left to do.
One test runs the same scripted engines behind real ModelWorker threads.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media.clock import ManualClock
from media.vad import EnergyVad
from pipeline.asr import AsrResult
from pipeline.conversation import Conversation, ConversationSettings, State
from pipeline.engines import Engines, EngineSettings
from pipeline.leg import FRAME_BYTES, CallInfo
from pipeline.metrics import Metrics
from pipeline.turns import is_goodbye
from pipeline.utterance import UtteranceCollector
from pipeline.workers import DeadlineExceeded, QueueFull

RATE = 16000
TTS_RATE = 22050
FRAME_S = 0.02

# --- signals ---------------------------------------------------------------------------


def to_frames(pcm: bytes) -> list[bytes]:
    pcm += bytes(-len(pcm) % FRAME_BYTES)
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


def voice(seconds: float, amp: float = 0.35) -> list[bytes]:
    """A vowel-like buzz with a syllable rhythm, between -22 and -16 dBFS: loud enough
    to barge in over the bot (whose echo-aware threshold is its level - 15 dB)."""
    t = np.arange(int(seconds * RATE)) / RATE
    env = 0.75 + 0.25 * np.sin(2 * np.pi * 4 * t)
    x = sum(a * np.sin(2 * np.pi * f * t) for f, a in ((180, 1.0), (360, 0.5), (540, 0.3)))
    return to_frames((amp * env * x / 1.8 * 32767).astype("<i2").tobytes())


def silence(seconds: float) -> list[bytes]:
    return [bytes(FRAME_BYTES)] * round(seconds / FRAME_S)


def tone(seconds: float, rate: int, amp: float = 0.3) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()


# --- scripted engines ----------------------------------------------------------------


class Hold:
    """Yielded by a scripted LLM: the stream waits here until the event is set."""

    def __init__(self) -> None:
        self.event = asyncio.Event()


class ScriptedAsr:
    name = "scripted-asr"

    def __init__(self, *texts: str | BaseException) -> None:
        self.script: deque[str | BaseException] = deque(texts)
        self.audio: list[bytes] = []

    def transcribe(self, pcm16k: bytes, hint: str | None = None) -> AsrResult:
        self.audio.append(pcm16k)
        item = self.script.popleft() if self.script else ""
        if isinstance(item, BaseException):
            raise item
        return AsrResult(item, 0.0, -0.2, len(pcm16k) / 2 / RATE, "en")

    def warm_up(self) -> None: ...


class ScriptedLlm:
    name = "scripted-llm"

    def __init__(self, *replies: list[Any] | BaseException) -> None:
        self.script: deque[list[Any] | BaseException] = deque(replies)
        self.calls: list[list[dict[str, str]]] = []
        self.aborted = 0  # streams closed before their end
        self.warmed = 0

    def stream_chat(
        self, messages: list[dict[str, str]], *, max_tokens: int = 96, temperature: float = 0.6
    ) -> Iterator[Any]:
        self.calls.append([dict(m) for m in messages])
        reply = self.script.popleft() if self.script else ["Okay."]
        finished = False
        try:
            if isinstance(reply, BaseException):
                raise reply
            for token in reply:
                if isinstance(token, BaseException):
                    raise token
                yield token
            finished = True
        finally:
            if not finished:
                self.aborted += 1

    def warm_up(self) -> None:
        self.warmed += 1


class ScriptedTts:
    """0.1 s of tone per word: long enough to be interrupted, short enough to play out."""

    name = "scripted-tts"

    def __init__(self, rate: int = TTS_RATE) -> None:
        self.sample_rate = rate
        self.texts: list[str] = []
        self.fail_on: str | None = None

    def synthesize(self, text: str) -> Iterator[bytes]:
        self.texts.append(text)
        if self.fail_on and self.fail_on in text:
            raise RuntimeError(f"voice broke on {text!r}")
        yield tone(0.1 * len(text.split()), self.sample_rate)

    def warm_up(self) -> None: ...


class InlineWorker:
    """ModelWorker's contract, run on the loop: refusals and deadlines are scripted."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.refuse = 0  # the next n jobs get QueueFull
        self.late = 0  # the next n jobs get DeadlineExceeded
        self.gate: asyncio.Event | None = None  # one-shot jobs wait for it
        self.jobs = 0
        self.depth = 0
        self.log: list[str] = []  # "pause", "resume", "item" of stream jobs, in order

    def _admit(self) -> None:
        if self.refuse:
            self.refuse -= 1
            raise QueueFull(self.name, 0)
        self.jobs += 1

    def _deadline(self) -> None:
        if self.late:
            self.late -= 1
            raise DeadlineExceeded(self.name, 0.5)

    async def submit(self, job: Any, deadline_s: float | None = None) -> Any:
        self._admit()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        self._deadline()
        return job()

    def stream(self, job: Any, deadline_s: float | None = None) -> InlineStream:
        self._admit()
        return InlineStream(self, job)


class InlineStream:
    def __init__(self, worker: InlineWorker, job: Any) -> None:
        self._worker = worker
        self._job = job
        self._gen: Iterator[Any] | None = None
        self._done = False
        self._running = asyncio.Event()
        self._running.set()

    def cancel(self) -> None:
        self._done = True
        self._running.set()
        if self._gen is not None:
            self._gen.close()  # type: ignore[attr-defined]

    def pause(self) -> None:
        self._worker.log.append("pause")
        self._running.clear()

    def resume(self) -> None:
        if not self._running.is_set():
            self._worker.log.append("resume")
        self._running.set()

    def __aiter__(self) -> InlineStream:
        return self

    async def __anext__(self) -> Any:
        try:
            while True:
                await asyncio.sleep(0)
                await self._running.wait()
                if self._done:
                    raise StopAsyncIteration
                if self._gen is None:
                    self._worker._deadline()
                    self._gen = iter(self._job())
                try:
                    item = next(self._gen)
                except StopIteration:
                    raise StopAsyncIteration from None
                if isinstance(item, Hold):
                    await item.event.wait()
                    continue
                self._worker.log.append("item")
                return item
        except BaseException:
            self.cancel()
            raise

    async def __aenter__(self) -> InlineStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


# --- a recording call leg ----------------------------------------------------------------


class FakeLeg:
    """Plays queued audio 20 ms per tick(); marks fire as played when reached, as cleared
    (synchronously, inside clear_audio) at barge-in."""

    def __init__(self) -> None:
        self.info = CallInfo("call-1", "sip", caller="alice", callee="bot")
        self.handler: Conversation | None = None
        self.queue: deque[list[Any]] = deque()  # ["audio", pcm, rate, offset] / ["mark", name]
        self.sent: list[tuple[int, int, str | None]] = []  # (bytes, rate, mark)
        self.marks: list[tuple[str, bool]] = []
        self.clears = 0
        self.hangups: list[str] = []
        self.dtmf: list[str] = []

    def send_audio(self, pcm: bytes, rate: int, mark: str | None = None) -> None:
        self.sent.append((len(pcm), rate, mark))
        if pcm:
            self.queue.append(["audio", pcm, rate, 0])
        if mark is not None:
            self.queue.append(["mark", mark])

    def clear_audio(self) -> None:
        self.clears += 1
        marks = [item[1] for item in self.queue if item[0] == "mark"]
        self.queue.clear()
        for m in marks:
            self._fire(m, False)

    def queued_seconds(self) -> float:
        return sum((len(i[1]) - i[3]) / 2 / i[2] for i in self.queue if i[0] == "audio")

    def send_dtmf(self, digits: str) -> None:
        self.dtmf.append(digits)

    async def transfer(self, target: str) -> None:
        raise NotImplementedError

    async def hangup(self, reason: str = "normal") -> None:
        self.hangups.append(reason)

    def tick(self) -> bytes:
        """Play 20 ms; returns the audio played (at its own rate)."""
        played = b""
        budget: float = FRAME_S
        while self.queue:
            item = self.queue[0]
            if item[0] == "mark":
                self.queue.popleft()
                self._fire(item[1], True)
                continue
            if budget <= 1e-9:
                break
            _, pcm, rate, off = item
            n = min(len(pcm) - off, round(budget * rate) * 2)
            played += pcm[off : off + n]
            item[3] = off + n
            budget -= n / 2 / rate
            if item[3] >= len(pcm):
                self.queue.popleft()
        return played

    def _fire(self, mark: str, played: bool) -> None:
        self.marks.append((mark, played))
        assert self.handler is not None
        self.handler.on_mark(mark, played)

    def kinds(self) -> list[str]:
        """Kinds of the marked pieces sent so far: "greeting", "answer", ..."""
        return [m.split("-", 1)[1] for _, _, m in self.sent if m]


# --- the harness ------------------------------------------------------------------------


async def settle() -> None:
    for _ in range(60):
        await asyncio.sleep(0)


class Call:
    def __init__(
        self,
        asr: ScriptedAsr | None = None,
        llm: ScriptedLlm | None = None,
        tts: ScriptedTts | None = None,
        settings: ConversationSettings | None = None,
        **overrides: Any,
    ) -> None:
        self.clock = ManualClock(1000.0)
        self.metrics = Metrics()
        self.asr = asr or ScriptedAsr()
        self.llm = llm or ScriptedLlm()
        self.tts = tts or ScriptedTts()
        self.workers = {n: InlineWorker(n) for n in ("asr", "llm", "tts")}
        self.engines = Engines(
            self.asr, self.llm, self.tts,
            settings=EngineSettings(warm_up=False), metrics=self.metrics, clock=self.clock,
            workers=self.workers,
        )
        # The scripts below are timed against a 400 ms hangover; pin it, whatever the default.
        base = settings or ConversationSettings(filler_after_s=None, hangover_ms=400)
        if overrides:
            from dataclasses import replace

            base = replace(base, **overrides)
        self.conv = Conversation(self.engines, base)
        self.leg = FakeLeg()
        self.leg.handler = self.conv

    async def start(self, play_greeting: bool = True) -> None:
        await self.engines.start()
        await self.conv.on_start(self.leg)
        await settle()
        if play_greeting:
            await self.until_listening()
            await self.feed(silence(0.6))  # past the echo tail of the greeting

    async def feed(self, frames: Iterable[bytes], echo: float | None = None) -> None:
        for f in frames:
            self.clock.advance(FRAME_S)
            played = self.leg.tick()
            if echo is not None and played:
                # The bot's own audio (16 kHz here) comes back attenuated.
                x = np.frombuffer(played[:FRAME_BYTES].ljust(FRAME_BYTES, b"\0"), "<i2")
                f = (x * echo).astype("<i2").tobytes()
            self.conv.on_frame(f)
            await settle()

    async def until_listening(self, limit_s: float = 30.0) -> None:
        for _ in range(round(limit_s / FRAME_S)):
            if self.conv.state is State.LISTENING:
                return
            await self.feed(silence(FRAME_S))
        raise AssertionError(f"still {self.conv.state} after {limit_s} s")

    async def say(self, seconds: float = 1.0, pause: float = 0.6) -> None:
        await self.feed(voice(seconds) + silence(pause))

    def value(self, name: str, **labels: str) -> float:
        v = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    def stage_count(self, stage: str) -> float:
        return self.value("switchboard_stage_duration_seconds_count", stage=stage)

    def errors(self, stage: str, kind: str) -> float:
        return self.value("switchboard_stage_errors_total", stage=stage, kind=kind)

    def history(self) -> list[dict[str, str]]:
        return self.conv.history.messages()[1:]  # without the system prompt


# --- tests ------------------------------------------------------------------------------


async def test_greeting_is_played_at_start_then_listening() -> None:
    c = Call()
    await c.start(play_greeting=False)
    assert c.conv.state is State.SPEAKING
    assert c.leg.kinds() == ["greeting"]
    assert c.tts.texts[-1] != ""  # phrases came from the cache, synthesized at start
    assert c.value("switchboard_phrases_played_total", phrase="greeting") == 1
    await c.until_listening()
    assert c.leg.marks == [(c.leg.sent[0][2], True)]
    events = [e["event"] for e in c.conv.calllog.events]
    assert events[:2] == ["call_start", "say"]


async def test_one_turn_streams_the_answer_and_records_every_timing() -> None:
    c = Call(
        ScriptedAsr("When do you open on Saturday?"),
        ScriptedLlm(["We", " open", " at", " nine,", " on", " Saturday", " morning.",
                     " See", " you", " then!"]),
    )
    await c.start()
    await c.say(1.0, pause=0.6)
    # Spoken chunk by chunk: the first clause first, then the rest.
    assert c.tts.texts[-2:] == ["We open at nine,", "on Saturday morning. See you then!"] or \
        c.tts.texts[-3:] == ["We open at nine,", "on Saturday morning.", "See you then!"]
    assert c.leg.kinds().count("answer") >= 2
    assert c.llm.calls[0][-1] == {"role": "user", "content": "When do you open on Saturday?"}
    await c.until_listening()
    heard = "We open at nine, on Saturday morning. See you then!"
    assert c.history() == [
        {"role": "user", "content": "When do you open on Saturday?"},
        {"role": "assistant", "content": heard},
    ]
    (turn,) = c.conv.calllog.turns
    assert turn.outcome == "answered" and turn.heard == heard and turn.speculative_asr
    assert set(turn.timings) == {"speech", "asr", "llm_first_token", "llm_total",
                                 "tts_first_audio", "tts_total", "response_latency"}
    # Inline engines answer at once: what remains is the hangover (400 ms).
    assert turn.timings["response_latency"] == pytest.approx(0.4)
    for stage in ("asr", "llm_first_token", "llm_total", "tts_first_audio", "tts_total"):
        assert c.stage_count(stage) == 1, stage
    assert c.value("switchboard_response_latency_seconds_count", transport="sip") == 1
    assert c.value("switchboard_turns_total") == 1
    assert c.value("switchboard_vad_segments_total", transport="sip") == 1
    assert c.value("switchboard_asr_speculative_total", outcome="used") == 1


async def test_speculative_asr_is_thrown_away_when_the_caller_goes_on() -> None:
    c = Call(ScriptedAsr("I would like", "I would like to book a table"))
    await c.start()
    # A pause longer than the speculation delay (60 ms) but shorter than the hangover.
    await c.feed(voice(0.6) + silence(0.2) + voice(0.6) + silence(0.6))
    assert len(c.asr.audio) == 2
    assert c.value("switchboard_asr_speculative_total", outcome="discarded") == 1
    assert c.value("switchboard_asr_speculative_total", outcome="used") == 1
    # The result used is the one over the whole utterance.
    assert c.llm.calls[0][-1]["content"] == "I would like to book a table"
    whole = len(c.asr.audio[1]) / 2 / RATE
    assert whole > len(c.asr.audio[0]) / 2 / RATE + 0.5
    assert whole == pytest.approx(0.24 + 1.4, abs=0.1)  # pre-roll + speech and pause


async def test_without_speculation_the_utterance_is_transcribed_at_speech_end() -> None:
    c = Call(ScriptedAsr("Hello there"), speculative_after_ms=1000)
    await c.start()
    await c.say(0.8)
    assert len(c.asr.audio) == 1 and c.asr.audio[0]
    assert c.value("switchboard_asr_speculative_total", outcome="used") == 0
    assert not c.conv.calllog.turns[0].speculative_asr
    assert c.llm.calls[0][-1]["content"] == "Hello there"


async def test_the_speculation_hears_exactly_the_final_utterance() -> None:
    vad = EnergyVad(RATE, hangover_ms=400)
    heard: list[bytes] = []

    def start_asr(audio: bytes) -> asyncio.Task[Any]:
        heard.append(audio)
        return asyncio.ensure_future(asyncio.sleep(0))

    metrics = Metrics()
    u = UtteranceCollector(vad, start_asr=start_asr, metrics=metrics, clock=ManualClock(),
                           speculative_after_ms=60, max_seconds=30)
    ends = []
    for f in silence(0.5) + voice(0.5) + silence(0.2) + voice(0.7) + silence(0.5):
        if (end := u.push(f, vad.process(f))) is not None:
            ends.append(end)
    (end,) = ends
    assert len(heard) == 2 and end.spec is not None
    assert heard[1] == end.audio  # the same bytes: its transcript is the transcript
    assert end.speech_s == pytest.approx(1.4)
    # 240 ms before the onset, the speech, the 60 ms of silence the speculation waited.
    assert len(end.audio) / 2 / RATE == pytest.approx(0.24 + 1.4 + 0.06)
    assert metrics.registry.get_sample_value(
        "switchboard_asr_speculative_total", {"outcome": "discarded"}) == 1


async def test_empty_transcript_goes_back_to_listening_silently() -> None:
    c = Call(ScriptedAsr(""))
    await c.start()
    sent = len(c.leg.sent)
    await c.say(0.5)
    assert c.conv.state is State.LISTENING
    assert len(c.leg.sent) == sent and not c.llm.calls
    assert c.conv.calllog.turns[0].outcome == "empty"


async def test_barge_in_clears_cancels_and_keeps_only_what_was_heard() -> None:
    hold = Hold()
    llm = ScriptedLlm(
        ["Our menu has pizza.", " We also have pasta and salads.", " And soup", hold, " daily."],
        ["Sure."],
    )
    c = Call(ScriptedAsr("What is on the menu?", "Pizza please"), llm)
    await c.start()
    await c.feed(voice(1.0) + silence(0.4))
    assert c.conv.state is State.SPEAKING
    # Chunk 1 (0.4 s) plays out, chunk 2 (0.6 s) is playing when the caller talks.
    await c.feed(silence(0.5))
    assert c.leg.marks[-1][1] is True
    sent_before = len(c.leg.sent)
    bargein_frames = voice(0.3)
    await c.feed(bargein_frames)
    assert c.leg.clears == 1
    assert c.conv.state is State.LISTENING
    assert llm.aborted == 1  # the LLM stream was closed mid-answer
    assert len(c.leg.sent) == sent_before  # nothing of the old answer after the clear
    assert c.history()[-1] == {"role": "assistant", "content": "Our menu has pizza.…"}
    assert c.value("switchboard_bargeins_total", transport="sip") == 1
    assert c.value("switchboard_bargein_latency_seconds_count", transport="sip") == 1
    # Confirmed onset -> clear_audio happen in the same frame: no clock time passes.
    assert c.value("switchboard_bargein_latency_seconds_sum", transport="sip") == 0
    turn = c.conv.calllog.turns[0]
    assert turn.outcome == "interrupted" and turn.heard == "Our menu has pizza."
    # The interrupting speech is being collected from its pre-roll on.
    await c.feed(voice(0.5) + silence(0.5))
    onset_to_end = 0.3 + 0.5
    assert len(c.asr.audio[1]) / 2 / RATE >= onset_to_end
    assert c.llm.calls[1][-1] == {"role": "user", "content": "Pizza please"}
    await c.until_listening()
    assert [e["event"] for e in c.conv.calllog.events].count("barge_in") == 1


async def test_bot_echo_does_not_barge_in_but_loud_speech_does() -> None:
    # 16 kHz TTS so the echo frames are the played audio itself, 20 dB down.
    c = Call(tts=ScriptedTts(rate=RATE))
    await c.start(play_greeting=False)
    await c.feed(silence(1.2), echo=0.1)
    assert c.leg.clears == 0 and c.value("switchboard_vad_segments_total", transport="sip") == 0
    assert c.conv.state is State.LISTENING
    loud = Call(tts=ScriptedTts(rate=RATE))
    await loud.start(play_greeting=False)
    await loud.feed(silence(0.6), echo=1.5)  # louder than the bot: a real talker
    assert loud.leg.clears == 1


async def test_noise_barge_in_goes_back_to_listening_and_reprompts() -> None:
    llm = ScriptedLlm(["Our menu has pizza.", " We also have pasta and fresh salads."])
    c = Call(ScriptedAsr("What is on the menu?", ""), llm, reprompt_after_s=2.0)
    await c.start()
    await c.feed(voice(1.0) + silence(0.4) + silence(0.5))
    await c.feed(voice(0.3) + silence(0.5))  # a door slams: no words
    assert c.leg.clears == 1
    assert c.conv.state is State.LISTENING
    assert len(llm.calls) == 1  # not answered again: the caller heard part of it
    first = c.conv.calllog.turns[0]
    assert first.outcome == "interrupted" and first.heard == "Our menu has pizza."
    assert c.history()[-1]["content"] == "Our menu has pizza.…"
    barge_in = next(e for e in c.conv.calllog.events if e["event"] == "barge_in")
    assert barge_in["turn"] == 1 and barge_in["bot_audio"] == ["answer"]
    assert c.conv.calllog.turns[-1].outcome == "empty"
    await c.feed(silence(2.1))
    assert c.leg.kinds()[-1] == "reprompt"
    await c.until_listening()


async def test_noise_while_thinking_answers_the_open_question_again() -> None:
    hold = Hold()
    llm = ScriptedLlm([hold, "Never heard."], ["We open at nine."])
    c = Call(ScriptedAsr("When do you open?", ""), llm)
    await c.start()
    await c.feed(voice(1.0) + silence(0.4))
    assert c.conv.state is State.THINKING
    await c.feed(voice(0.3) + silence(0.5))  # a cough: cancels the answer, then no words
    assert llm.aborted == 1 and c.leg.clears == 0
    assert len(llm.calls) == 2
    assert llm.calls[1][-1] == {"role": "user", "content": "When do you open?"}
    await c.until_listening()
    assert c.history()[-1] == {"role": "assistant", "content": "We open at nine."}


async def test_speech_during_asr_is_merged_with_the_next_words() -> None:
    asr = ScriptedAsr("When do you open tomorrow?")
    c = Call(asr, speculative_after_ms=1000)
    await c.start()
    c.workers["asr"].gate = asyncio.Event()  # ASR is slow
    await c.feed(voice(0.6) + silence(0.4) + voice(0.4))
    assert c.conv.calllog.turns[0].outcome == "interrupted"
    c.workers["asr"].gate.set()
    await c.feed(silence(0.5))
    # The first utterance was never transcribed: it goes to ASR with the new words.
    (merged,) = asr.audio
    first = 0.32 + 0.6 + 0.06  # pre-roll, speech, the silence kept after it
    second = 0.24 + 0.4 + 0.06  # barge-in confirmation replaces most of the pre-roll
    assert len(merged) / 2 / RATE == pytest.approx(first + 0.2 + second, abs=0.15)
    assert c.llm.calls[0][-1]["content"] == "When do you open tomorrow?"


@pytest.mark.parametrize("stage", ["asr", "llm", "tts"])
async def test_an_engine_error_plays_the_apology_and_the_call_goes_on(stage: str) -> None:
    asr = ScriptedAsr(RuntimeError("whisper broke") if stage == "asr" else "First question",
                      "Second question")
    first = {"asr": [], "llm": [["Fine, thanks.", ValueError("llama broke")]],
             "tts": [["Fine, thanks."]]}[stage]
    llm = ScriptedLlm(*first, ["Second answer."])
    tts = ScriptedTts()
    if stage == "tts":
        tts.fail_on = "Fine"
    c = Call(asr, llm, tts)
    await c.start()
    await c.say(0.8)
    assert "apology" in c.leg.kinds()
    kind = {"asr": "RuntimeError", "llm": "ValueError", "tts": "RuntimeError"}[stage]
    assert c.errors(stage, kind) == 1
    await c.until_listening()
    turn = c.conv.calllog.turns[0]
    assert turn.outcome == "error" and turn.error and turn.error.startswith(stage)
    error_events = [e for e in c.conv.calllog.events if e["event"] == "error"]
    assert error_events[0]["stage"] == stage
    await c.say(0.8)
    await c.until_listening()
    assert c.history()[-1] == {"role": "assistant", "content": "Second answer."}


async def test_deadline_exceeded_is_an_apology() -> None:
    c = Call(ScriptedAsr("Hello"))
    await c.start()
    c.workers["llm"].late = 1
    await c.say(0.8)
    assert c.leg.kinds()[-1] == "apology"
    assert c.errors("llm", "DeadlineExceeded") == 1


async def test_queue_full_says_please_hold_then_retries_once() -> None:
    c = Call(ScriptedAsr("Hello"), ScriptedLlm(["Hi there, how can I help?"]))
    await c.start()
    c.workers["llm"].refuse = 1
    await c.say(0.8)
    assert c.leg.kinds()[-1] == "please_hold"
    await c.until_listening()  # the retry waits until "please hold" has been heard
    assert c.leg.kinds()[-2:] == ["please_hold", "answer"]
    assert c.errors("llm", "QueueFull") == 1
    assert c.history()[-1]["content"] == "Hi there, how can I help?"


async def test_queue_full_twice_apologizes() -> None:
    c = Call(ScriptedAsr("Hello"))
    await c.start()
    c.workers["asr"].refuse = 3  # the speculation, the first try and the retry
    await c.say(0.8)
    await c.until_listening()
    assert c.leg.kinds()[-2:] == ["please_hold", "apology"]
    assert c.errors("asr", "QueueFull") == 2
    assert not c.llm.calls


async def test_filler_plays_when_the_answer_is_slow() -> None:
    hold = Hold()
    c = Call(ScriptedAsr("Tell me a story"), ScriptedLlm([hold, "Once upon a time."]),
             filler_after_s=1.0)
    await c.start()
    await c.say(0.8, pause=0.4)
    await c.feed(silence(0.9))
    assert c.leg.kinds()[-1] == "greeting"
    await c.feed(silence(0.2))
    assert c.leg.kinds()[-1].startswith("filler")
    hold.event.set()
    await c.until_listening()
    assert c.leg.kinds()[-1] == "answer"
    turn = c.conv.calllog.turns[0]
    assert turn.filler is not None and turn.heard == "Once upon a time."
    # Response latency is to the answer's audio, not the filler's.
    assert turn.timings["response_latency"] > 1.0


async def test_silence_reprompts_then_says_goodbye_and_hangs_up() -> None:
    c = Call(reprompt_after_s=3.0, hangup_after_s=2.0)
    await c.start()  # listening for 0.6 s already
    await c.feed(silence(2.3))
    assert c.leg.kinds() == ["greeting"]
    await c.feed(silence(0.2))
    assert c.leg.kinds() == ["greeting", "reprompt"]
    await c.until_listening()
    await c.feed(silence(2.1))
    assert c.leg.kinds()[-1] == "silence_goodbye"
    assert c.conv.state is State.ENDING and not c.leg.hangups
    await c.feed(silence(1.5))  # the goodbye is heard, then the call is hung up
    assert c.leg.hangups == ["silence"]
    await c.conv.on_end("hangup")
    assert c.conv.calllog.end_reason == "hangup"


async def test_callers_goodbye_ends_the_call_politely() -> None:
    c = Call(ScriptedAsr("Okay, thanks. Bye!"))
    await c.start()
    await c.say(0.8)
    assert c.leg.kinds()[-1] == "goodbye" and not c.llm.calls
    await c.feed(voice(0.5))  # no barge-in on the goodbye
    assert c.leg.clears == 0
    await c.feed(silence(2.0))
    assert c.leg.hangups == ["caller_goodbye"]
    assert c.conv.calllog.turns[0].outcome == "goodbye"


async def test_maximum_call_duration() -> None:
    c = Call(ScriptedAsr("Tell me everything"),
             ScriptedLlm(["One. " * 3, Hold()]), max_call_s=4.0)
    await c.start()
    await c.say(0.8)
    await c.feed(silence(4.0 - c.clock.now() + 1000.0))
    assert c.leg.kinds()[-1] == "time_limit"
    assert c.llm.aborted == 1
    await c.feed(silence(2.0))
    assert c.leg.hangups == ["max_duration"]


async def test_stalled_turn_is_given_up_with_an_apology() -> None:
    c = Call(ScriptedAsr("Hello"), ScriptedLlm([Hold()]), stall_s=2.0)
    await c.start()
    await c.say(0.8, pause=0.4)
    await c.feed(silence(2.1))
    assert c.leg.kinds()[-1] == "apology"
    assert c.errors("llm", "TurnStalled") == 1 and c.llm.aborted == 1
    await c.until_listening()


async def test_dtmf_is_logged_and_bad_frames_are_dropped() -> None:
    c = Call()
    await c.start()
    c.conv.on_frame(b"\0" * 100)  # a broken door: dropped, the call goes on
    assert c.conv.state is State.LISTENING and c.conv._bad_frames == 1
    c.conv.on_dtmf("5")
    assert c.conv.calllog.events[-1]["event"] == "dtmf"
    assert c.conv.calllog.events[-1]["digit"] == "5"


async def test_on_end_cancels_every_task_it_owns() -> None:
    c = Call(ScriptedAsr("Hello"), ScriptedLlm([Hold()]))
    await c.start()
    await c.say(0.8, pause=0.4)
    assert c.conv.state is State.THINKING and c.conv._tasks
    await c.conv.on_end("caller hung up")
    assert not c.conv._tasks and c.llm.aborted == 1
    assert c.conv.state is State.ENDED
    record = c.conv.calllog.record()
    assert record["end_reason"] == "caller hung up"
    assert record["turns"][0]["outcome"] == "cancelled"
    c.conv.on_frame(bytes(FRAME_BYTES))  # frames after the end are ignored
    await c.conv.on_end("again")  # idempotent
    assert c.conv.calllog.end_reason == "caller hung up"


@pytest.mark.parametrize(
    "text, bye",
    [
        ("Bye!", True),
        ("Goodbye.", True),
        ("Okay, thanks, bye bye.", True),
        ("That's all, thank you.", True),
        ("No, that's it. Have a nice day!", True),
        ("Thanks for your help, goodbye.", True),
        ("Bye the way, when do you open?", False),
        ("That's all I wanted to ask: what time is it?", False),
        ("Is that all you have?", False),
        ("Thank you.", False),
        ("", False),
    ],
)
def test_goodbye_detection(text: str, bye: bool) -> None:
    assert is_goodbye(text) is bye


# --- the same scripted engines behind real worker threads ---------------------------------


class ThreadLlm(ScriptedLlm):
    """Yields a sentence, then blocks (in its worker thread) until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.closed = threading.Event()

    def stream_chat(self, messages: Any, **kw: Any) -> Iterator[str]:
        try:
            yield "Here is a first sentence for you."
            for _ in range(200):
                if self.release.wait(0.01):
                    break
                yield ""
            yield " And more."
        finally:
            self.closed.set()


async def wait_for(cond: Any, what: str, limit_s: float = 10.0) -> None:
    """Bounded wait for worker threads to hand results back (never a timing assertion)."""
    end = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def test_barge_in_stops_the_llm_in_its_worker_thread() -> None:
    clock = ManualClock(0.0)
    metrics = Metrics()
    llm = ThreadLlm()
    engines = Engines(ScriptedAsr("Hi"), llm, ScriptedTts(), metrics=metrics, clock=clock,
                      settings=EngineSettings(warm_up=False))
    conv = Conversation(engines, ConversationSettings(greeting=None, filler_after_s=None))
    leg = FakeLeg()
    leg.handler = conv
    try:
        await engines.start()
        await conv.on_start(leg)
        for f in voice(0.8) + silence(0.4):
            clock.advance(FRAME_S)
            conv.on_frame(f)
            await asyncio.sleep(0)
        await wait_for(lambda: "answer" in leg.kinds(), "the first answer chunk")
        for f in voice(0.4):
            clock.advance(FRAME_S)
            leg.tick()
            conv.on_frame(f)
        assert leg.clears == 1
        await wait_for(llm.closed.is_set, "the LLM generator to be closed")
        assert not llm.release.is_set()
        assert conv.state is State.LISTENING
    finally:
        await conv.on_end("test over")
        await engines.aclose()
    assert math.isclose(metrics.registry.get_sample_value(
        "switchboard_bargeins_total", {"transport": "sip"}) or 0, 1)


# --- property: whatever the caller does, the call never gets stuck --------------------------

segment = st.one_of(
    st.tuples(st.just("voice"), st.integers(5, 60)),  # frames
    st.tuples(st.just("silence"), st.integers(1, 60)),
)
asr_out = st.one_of(st.just(""), st.just("Tell me more."), st.just("Bye!"),
                    st.builds(RuntimeError, st.just("asr down")))
llm_out = st.one_of(
    st.just(["Sure thing.", " Here it is, in a few words."]),
    st.just(["Okay."]),
    st.just(["Half an answer,", ValueError("llm down")]),
    st.just(["**", "\n"]),  # nothing speakable
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    script=st.lists(segment, min_size=1, max_size=8),
    asr=st.lists(asr_out, max_size=8),
    llm=st.lists(llm_out, max_size=8),
    refuse=st.integers(0, 2),
)
def test_the_call_never_gets_stuck(
    script: list[tuple[str, int]], asr: list[Any], llm: list[Any], refuse: int
) -> None:
    async def run() -> None:
        c = Call(ScriptedAsr(*asr), ScriptedLlm(*llm), filler_after_s=0.3,
                 reprompt_after_s=30.0, stall_s=5.0)
        await c.start(play_greeting=False)
        c.workers["llm"].refuse = refuse
        for kind, n in script:
            await c.feed(voice(n * FRAME_S) if kind == "voice" else silence(n * FRAME_S))
        await c.feed(silence(8.0))  # the bot finishes whatever it was saying
        assert c.conv.state in (State.LISTENING, State.ENDING), c.conv.state
        if c.conv.state is State.ENDING:
            assert c.leg.hangups
        crashes = [s for m in c.metrics.registry.collect() for s in m.samples
                   if s.name == "switchboard_stage_errors_total"
                   and s.labels["stage"] == "conversation"]
        assert not crashes
        assert all(t.outcome != "pending" for t in c.conv.calllog.turns)
        roles = [m["role"] for m in c.history()]
        assert all(a != b for a, b in itertools.pairwise(roles)), roles
        await c.conv.on_end("done")
        assert not c.conv._tasks

    asyncio.run(run())


async def test_generation_stops_after_max_sentences() -> None:
    """A spoken answer is short: after two sentences the LLM stream is closed, so the
    shared worker is free for the next caller."""
    llm = ScriptedLlm(["We open at nine. ", "We close at five. ", "Parking is free. ",
                       "Bring your receipt."])
    c = Call(ScriptedAsr("When do you open?"), llm, max_sentences=2)
    await c.start()
    await c.say(0.8)
    await c.until_listening()
    assert c.history()[-1] == {"role": "assistant",
                               "content": "We open at nine. We close at five."}
    assert llm.aborted == 1
