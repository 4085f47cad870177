"""One turn of a conversation: the caller's utterance -> ASR -> LLM -> TTS -> the leg.

A TurnRunner runs inside a task owned by the Conversation, which cancels it at
barge-in or hang-up. It streams: LLM pieces go through the speech sanitizer and the
clause chunker, and each chunk goes to TTS (a second task, so the LLM keeps generating
while the first clause is synthesized); TTS audio goes to the leg as it comes, one mark
per chunk, so the marks tell which chunks the caller heard.

Failures are handled here, per stage: QueueFull plays the cached "please hold", waits
for it to be heard and retries once; any other error (DeadlineExceeded, an engine
exception, a second QueueFull) plays the cached apology. Every failure is logged with
the call id and counted in stage_errors_total{stage,kind}; the call goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from media.clock import Clock
from pipeline.actions import ActionRules, CallAction, action_for_tool, tool_specs
from pipeline.asr import AsrResult
from pipeline.calllog import CallLog, TurnRecord
from pipeline.chunking import ChunkPolicy, ClauseChunker, SpeechSanitizer, clean_inline
from pipeline.engines import FILLERS, Engines
from pipeline.llm import DEFAULT_SYSTEM_PROMPT, ConversationHistory, ToolCall
from pipeline.metrics import Metrics
from pipeline.speaker import Speaker, Spoken
from pipeline.utterance import Speculation
from pipeline.workers import QueueFull, WorkerError

log = logging.getLogger(__name__)

T = TypeVar("T")
_SPEAKABLE = re.compile(r"\w")


@dataclass(frozen=True, slots=True)
class ConversationSettings:
    greeting: str | None = "greeting"  # phrase key played at call start; None: none
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_tokens: int = 80
    # A spoken answer is short: stop generating after this many sentences, which frees
    # the shared LLM worker for the next caller instead of writing what nobody hears.
    max_sentences: int = 2
    # When other calls wait for the LLM, stop after this many sentences: on a busy box a
    # shorter answer now beats a long one that makes the next caller wait.
    max_sentences_when_busy: int = 1
    # Hold the LLM while the first chunk is synthesized: on a small box the two share the
    # CPU, and the caller waits for that chunk's audio, not for the next chunk's tokens
    # (which are ready long before the first chunk has played). At most this long; not
    # when other calls wait for the LLM.
    llm_pause_for_first_audio_s: float = 1.0
    temperature: float = 0.3
    history_turns: int = 8
    asr_hint: str | None = None
    chunk_policy: ChunkPolicy = field(default_factory=ChunkPolicy)
    # Endpointing (see media.vad.EnergyVad).
    onset_ms: float = 80
    hangover_ms: float = 300  # trailing silence that ends the caller's turn
    barge_in_ms: float = 240  # speech over the bot needed to interrupt it
    preroll_ms: float = 240
    speculative_after_ms: float = 60  # silence before the speculative ASR starts
    max_utterance_s: float = 30.0  # longer speech is cut (Whisper's window)
    # Timers (counted in 20 ms frames).
    filler_after_s: float | None = 2.0  # no answer audio by then: play a filler
    reprompt_after_s: float = 8.0  # caller silent this long: "Are you still there?"
    max_reprompts: int = 1
    hangup_after_s: float = 8.0  # silent this long after the last reprompt: goodbye
    max_call_s: float = 900.0
    stall_s: float = 15.0  # a turn that makes no progress this long is given up
    goodbye_detection: bool = True
    # Per agent (the dialplan): cached phrase keys for fillers and the reprompt; whether
    # caller speech over the bot interrupts it; transfer / hang-up / DTMF rules.
    fillers: tuple[str, ...] = FILLERS
    reprompt: str = "reprompt"
    barge_in: bool = True
    actions: ActionRules = field(default_factory=ActionRules)


# --- the caller's goodbye ---------------------------------------------------------------

_GOODBYE = re.compile(
    r"\b(?:good ?bye|bye(?: bye)?|see you(?: later)?|talk to you later|that'?s all|"
    r"that is all|that'?s it|that is it|nothing else|i'?m done|i am done|hang up|"
    r"have a (?:nice|good|great) (?:day|one|evening|night|weekend))\b"
)
_POLITE = frozenset(
    "ok okay thanks thank you so much very no nope alright all right great well then for "
    "your the help and oh cool perfect fine good now i think bye yes yeah sir madam "
    "appreciate it that was".split()
)
_NON_WORD = re.compile(r"[^\w\s']+")


def is_goodbye(text: str) -> bool:
    """The caller is taking leave: a goodbye phrase and nothing but politeness around
    it ("Okay, thanks, bye!"), not "Bye the way, what time do you open?"."""
    norm = " ".join(_NON_WORD.sub(" ", text.lower()).split())
    if not _GOODBYE.search(norm):
        return False
    return all(w in _POLITE for w in _GOODBYE.sub(" ", norm).split())


# --- a turn ---------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Turn:
    record: TurnRecord
    speech_end: float | None  # clock time of the caller's last speech frame
    audio: bytes = b""  # the utterance, for ASR when the speculation cannot be used
    spec: Speculation | None = None
    resume: bool = False  # no ASR: answer the history as it stands
    stage: str = "asr"
    start_frame: int = 0
    chunks: list[Spoken] = field(default_factory=list)  # marked answer audio
    first_audio: float | None = None
    speaking: asyncio.Task[None] | None = None  # the TTS side of the answer
    outcome: str = "answered"
    closed: bool = False
    action: CallAction | None = None  # the caller asked for one (a phrase rule)
    resume_llm: Callable[[], None] | None = None  # set while the LLM waits for TTS

    @property
    def heard(self) -> str:
        return " ".join(s.text for s in self.chunks if s.played)


class StageFailed(Exception):
    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage}: {type(error).__name__}: {error}")
        self.stage = stage
        self.error = error


class EmptyAnswer(RuntimeError):
    """The LLM produced nothing that can be spoken."""


@contextlib.contextmanager
def _stage(turn: Turn, stage: str) -> Iterator[None]:
    """Any failure inside is this stage's (cancellation passes through untouched)."""
    turn.stage = stage
    try:
        yield
    except StageFailed:
        raise
    except Exception as e:
        raise StageFailed(stage, e) from e


class TurnRunner:
    def __init__(
        self,
        *,
        engines: Engines,
        settings: ConversationSettings,
        speaker: Speaker,
        history: ConversationHistory,
        calllog: CallLog,
        metrics: Metrics,
        clock: Clock,
        transport: str,
        say: Callable[[str], Spoken | None],
        spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]],
        progress: Callable[[], None],
    ) -> None:
        self.engines = engines
        self.settings = settings
        self.speaker = speaker
        self.history = history
        self.calllog = calllog
        self.metrics = metrics
        self.clock = clock
        self.transport = transport
        self.say = say
        self.spawn = spawn
        self.progress = progress
        self._extra = {"call_id": calllog.info.call_id}

    async def run(self, turn: Turn) -> str:
        """Returns the outcome: "answered", "empty" (nothing said), "goodbye" (the caller
        said goodbye: the conversation ends the call), "action" (a phrase rule matched:
        turn.action) or "error" (apology played)."""
        try:
            if not turn.resume:
                text = await self._transcribe(turn)
                if not text:
                    return "empty"
                turn.record.transcript = text
                # Live followers (the browser console) show the words before the answer.
                self.calllog.event("caller_said", logging.DEBUG, turn=turn.record.index,
                                   text=text)
                turn.action = self.settings.actions.for_phrase(text)
                if turn.action is not None:
                    self.history.add_user(text)
                    return "action"
                if self.settings.goodbye_detection and is_goodbye(text):
                    self.history.add_user(text)
                    return "goodbye"
                self.history.add_user(text)
            await self._answer(turn)
            return "answered" if turn.action is None else "action"
        except StageFailed as e:
            self.fail(turn, e.stage, e.error)
            return "error"

    def fail(self, turn: Turn, stage: str, error: BaseException) -> None:
        """Count, log and apologize. The caller hears the apology; the call goes on."""
        self.count_error(stage, error, turn)
        self.say("apology")

    def count_error(self, stage: str, error: BaseException, turn: Turn | None) -> None:
        kind = type(error).__name__
        self.metrics.stage_errors_total.labels(stage=stage, kind=kind).inc()
        self.calllog.error(stage, error, turn.record if turn else None)
        # Queue and deadline refusals are load, not bugs: no traceback for them.
        exc_info = None if isinstance(error, WorkerError | TimeoutError) else error
        log.warning("%s failed: %s: %s", stage, kind, error, exc_info=exc_info, extra=self._extra)

    def _observe(self, turn: Turn, stage: str, seconds: float) -> None:
        turn.record.timings[stage] = seconds
        self.metrics.stage_duration_seconds.labels(stage=stage).observe(seconds)

    async def _hold_retry(
        self, turn: Turn, stage: str, attempt: Callable[[], Awaitable[T]]
    ) -> T:
        """QueueFull: say "please hold", wait until it has been heard, try once more."""
        try:
            return await attempt()
        except QueueFull as e:
            self.count_error(stage, e, turn)
            spoken = self.say("please_hold")
            if spoken is not None:
                await spoken.done
            self.progress()
            return await attempt()

    # --- ASR ------------------------------------------------------------------------

    async def _transcribe(self, turn: Turn) -> str:
        e = self.engines
        result: AsrResult | None = None
        t0 = self.clock.now()
        t1: float | None = None  # a speculative result may have waited for SpeechEnd
        with _stage(turn, "asr"):
            spec = turn.spec
            if spec is not None:
                try:
                    result = await spec.task
                    t0 = spec.started
                    t1 = spec.finished
                    turn.record.speculative_asr = True
                except QueueFull:
                    result, t0 = None, self.clock.now()  # it never ran: the normal road
            if result is None:
                job = partial(e.asr.transcribe, turn.audio, self.settings.asr_hint)
                result = await self._hold_retry(
                    turn, "asr", lambda: e.asr_worker.submit(job, deadline_s=e.deadline("asr"))
                )
        self._observe(turn, "asr", (t1 if t1 is not None else self.clock.now()) - t0)
        self.progress()
        if result.dropped:
            self.calllog.event("asr_dropped", turn=turn.record.index, reason=result.dropped)
        return result.text.strip()

    # --- LLM -> chunks -> TTS ----------------------------------------------------------

    async def _answer(self, turn: Turn) -> None:
        chunks: asyncio.Queue[str | None] = asyncio.Queue()
        speaking = turn.speaking = self.spawn(self._speak(turn, chunks), "speak")
        try:
            await self._generate(turn, chunks, speaking)
            chunks.put_nowait(None)
            await speaking
        finally:
            if not speaking.done():
                speaking.cancel()

    async def _generate(
        self, turn: Turn, chunks: asyncio.Queue[str | None], speaking: asyncio.Task[None]
    ) -> None:
        e, s = self.engines, self.settings
        extra: dict[str, Any] = {}
        if getattr(e.llm, "supports_tools", False) and (tools := tool_specs(s.actions)):
            extra["tools"] = tools  # the model may transfer, hang up or send DTMF
        job = partial(
            e.llm.stream_chat,
            self.history.messages(),
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            **extra,
        )
        sent = 0

        sentences = 0

        def put(texts: list[str] | str | None) -> None:
            nonlocal sent, sentences
            for raw in [texts] if isinstance(texts, str) else texts or []:
                text = clean_inline(raw)
                if _SPEAKABLE.search(text):
                    chunks.put_nowait(text)
                    sent += 1
                    sentences += text.rstrip("\"')”’ ").endswith((".", "!", "?", "…"))
                    if sent == 1:
                        pause_until_first_audio()

        def pause_until_first_audio() -> None:
            limit = s.llm_pause_for_first_audio_s
            if limit <= 0 or stream is None or e.llm_worker.depth > 0:
                return
            stream.pause()
            turn.resume_llm = stream.resume
            asyncio.get_running_loop().call_later(limit, stream.resume)

        stream: Any = None

        async def open_stream() -> Any:
            return e.llm_worker.stream(job, deadline_s=e.deadline("llm"))

        t0 = self.clock.now()
        with _stage(turn, "llm"):
            stream = await self._hold_retry(turn, "llm", open_stream)
            sanitizer, chunker = SpeechSanitizer(), ClauseChunker(s.chunk_policy)
            first = True
            async with stream:  # leaving it cancels the generation, paused or not
                async for piece in stream:
                    if first:
                        self._observe(turn, "llm_first_token", self.clock.now() - t0)
                        first = False
                    self.progress()
                    if isinstance(piece, ToolCall):
                        turn.action = action_for_tool(piece.name, piece.arguments, s.actions)
                        self.calllog.event("tool_call", turn=turn.record.index,
                                           name=piece.name[:40], used=turn.action is not None)
                        if turn.action is not None:  # say what was said so far, then act
                            put(chunker.push(sanitizer.flush()))
                            put(chunker.flush())
                            break
                        continue
                    put(chunker.push(sanitizer.feed(piece)))
                    if speaking.done():  # TTS failed: stop generating, report its error
                        return
                    if sentences >= s.max_sentences or (
                        sentences >= s.max_sentences_when_busy and e.llm_worker.depth > 0
                    ):
                        break  # leaving the stream cancels the generation
                else:
                    put(chunker.push(sanitizer.flush()))
                    put(chunker.flush())
            self._observe(turn, "llm_total", self.clock.now() - t0)
            if not sent and turn.action is None:
                raise EmptyAnswer(f"{e.llm.name} said nothing speakable")

    @staticmethod
    def _resume_llm(turn: Turn) -> None:
        if turn.resume_llm is not None:
            turn.resume_llm()
            turn.resume_llm = None

    async def _speak(self, turn: Turn, chunks: asyncio.Queue[str | None]) -> None:
        e = self.engines
        rate = e.tts.sample_rate
        tail = rate // 50 * 2  # the last 20 ms of each chunk waits to carry its mark
        t0: float | None = None
        while (text := await chunks.get()) is not None:
            turn.record.answer = f"{turn.record.answer} {text}".lstrip()
            if t0 is None:
                t0 = self.clock.now()
            job = partial(e.tts.synthesize, text)

            async def open_stream(job: Callable[[], Any] = job) -> Any:
                return e.tts_worker.stream(job, deadline_s=e.deadline("tts"))

            held = b""
            with _stage(turn, "tts"):
                stream = await self._hold_retry(turn, "tts", open_stream)
                async with stream:
                    async for pcm in stream:
                        if not pcm:
                            continue
                        if "tts_first_audio" not in turn.record.timings:
                            self._observe(turn, "tts_first_audio", self.clock.now() - t0)
                            self._resume_llm(turn)
                        pcm, held = held + pcm[: -tail], pcm[-tail:]
                        if pcm:
                            self._first_audio(turn)
                            self.speaker.send(pcm, rate)
                        self.progress()
            self._resume_llm(turn)  # a chunk that gave no audio must not hold the LLM
            if held:
                self._first_audio(turn)
                turn.chunks.append(
                    self.speaker.send_marked(held, rate, text=text, kind="answer", owner=turn)
                )
                # Live followers (the browser console) show it as it is heard.
                self.calllog.event("agent_said", logging.DEBUG, turn=turn.record.index,
                                   text=text)
        if t0 is not None:
            self._observe(turn, "tts_total", self.clock.now() - t0)

    def _first_audio(self, turn: Turn) -> None:
        """Response latency: caller's last speech frame -> first answer audio queued."""
        if turn.first_audio is not None:
            return
        turn.first_audio = now = self.clock.now()
        if turn.speech_end is not None:
            latency = now - turn.speech_end
            turn.record.timings["response_latency"] = latency
            self.metrics.response_latency_seconds.labels(transport=self.transport).observe(
                latency
            )
