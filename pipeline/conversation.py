"""The conversation: a CallHandler that listens, thinks and speaks, one turn at a time.

State, derived after every change from three facts (is bot audio outstanding, is a turn
running, is the call ending):

    LISTENING --caller's SpeechEnd--> THINKING --first answer audio--> SPEAKING
        ^                                |                                |
        +-------- answer heard (all marks back) / empty transcript -------+
    THINKING or SPEAKING --caller's SpeechStart--> LISTENING  (barge-in)
    any --goodbye / silence / time limit--> ENDING --goodbye heard--> hangup --> ENDED

on_frame runs on the event loop every 20 ms and never blocks: it feeds the VAD (after
telling it the bot's own outbound level, so the bot's echo does not barge in), collects
the caller's utterance from the VAD's pre-roll on, and starts work as tasks the
conversation owns. Timers count frames. Time for metrics comes from the injected clock.

Endpointing is speculative: ASR starts on the utterance so far once the silence has
lasted `speculative_after_ms`; if the caller speaks again (SpeechResumed) that result is
thrown away; at SpeechEnd it is used when its audio is the whole utterance.

Barge-in (caller speech while the bot thinks or speaks): clear_audio at once, the turn's
LLM and TTS streams cancelled, and the history keeps only the chunks whose marks came
back played; a chunk cut off part way is dropped whole (we cannot tell which of its
words were heard), and ConversationHistory marks the answer as interrupted. If nothing
of the answer was heard, the question stays open: it is merged with the caller's next
words, or, when the interruption turns out to be noise (empty transcript), answered
again at once. Noise that cut off an answer the caller had started to hear sends the
bot back to listening, where the reprompt timer runs as after any answer.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Coroutine
from functools import partial
from typing import Any

from media.clock import Clock
from media.vad import EnergyVad, SpeechStart
from pipeline.actions import CallAction, perform
from pipeline.calllog import CallLog
from pipeline.engines import Engines
from pipeline.leg import FRAME_BYTES, FRAME_MS, PIPELINE_RATE, CallLeg
from pipeline.llm import ConversationHistory
from pipeline.metrics import Metrics
from pipeline.speaker import Speaker, Spoken
from pipeline.turns import ConversationSettings, Turn, TurnRunner
from pipeline.utterance import GAP, Utterance, UtteranceCollector

__all__ = ["Conversation", "ConversationSettings", "State"]

log = logging.getLogger(__name__)

_FRAME_S = FRAME_MS / 1000


class State(enum.Enum):
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    ENDING = "ending"
    ENDED = "ended"


class TurnStalled(TimeoutError):
    """A turn made no progress for ConversationSettings.stall_s."""


def _frames(seconds: float) -> int:
    return max(1, round(seconds / _FRAME_S))


class Conversation:
    def __init__(
        self,
        engines: Engines,
        settings: ConversationSettings | None = None,
        *,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.engines = engines
        self.settings = s = settings or ConversationSettings()
        self.metrics = metrics or engines.metrics
        self.clock = clock or engines.clock
        self.vad = EnergyVad(
            PIPELINE_RATE,
            onset_ms=s.onset_ms,
            hangover_ms=s.hangover_ms,
            barge_in_ms=s.barge_in_ms,
            preroll_ms=s.preroll_ms,
        )
        self.history = ConversationHistory(s.system_prompt, max_turns=s.history_turns)
        self.state = State.LISTENING
        self.leg: CallLeg | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._frame = 0
        self._turn: Turn | None = None  # the turn whose answer is not closed yet
        self._response: asyncio.Task[None] | None = None
        self._progress = 0  # frame of the running turn's last progress
        self._resume = False  # the history ends with a question nobody heard answered
        self._idle = 0  # silent frames while LISTENING
        self._reprompts = 0
        self._fillers = 0
        self._ending: str | None = None
        self._hangup_frame = 0
        self._hung_up = False
        self._bad_frames = 0
        self._deaf = False  # this utterance began over the bot with barge-in off: ignored
        self._transfer_task: asyncio.Task[None] | None = None
        self.utterance = UtteranceCollector(
            self.vad,
            start_asr=self._start_asr,
            metrics=self.metrics,
            clock=self.clock,
            speculative_after_ms=s.speculative_after_ms,
            max_seconds=s.max_utterance_s,
        )
        self._max_call = _frames(s.max_call_s)
        self._filler_after = None if s.filler_after_s is None else _frames(s.filler_after_s)
        self._stall_after = _frames(s.stall_s)
        self._reprompt_after = _frames(s.reprompt_after_s)
        self._hangup_after = _frames(s.hangup_after_s)

    # --- CallHandler --------------------------------------------------------------------

    async def on_start(self, leg: CallLeg) -> None:
        self.leg = leg
        self.transport = leg.info.transport
        self.calllog = CallLog(leg.info, self.clock)
        self._extra = {"call_id": leg.info.call_id}
        self.speaker = Speaker(leg, self.vad, on_change=self._update_state)
        self.runner = TurnRunner(
            engines=self.engines,
            settings=self.settings,
            speaker=self.speaker,
            history=self.history,
            calllog=self.calllog,
            metrics=self.metrics,
            clock=self.clock,
            transport=self.transport,
            say=self._say,
            spawn=lambda coro, name: self._spawn(coro, name, critical=False),
            progress=self._note_progress,
        )
        self.calllog.call_start()
        if self.settings.greeting:
            self._say(self.settings.greeting)

    def on_frame(self, pcm: bytes) -> None:
        if self.leg is None or self.state is State.ENDED:
            return
        if len(pcm) != FRAME_BYTES:  # a door bug, not the caller's: drop it, keep the call
            self._bad_frames += 1
            if self._bad_frames == 1:
                log.warning("dropping a %d-byte frame (want %d)", len(pcm), FRAME_BYTES,
                            extra=self._extra)
            return
        self._frame += 1
        self.speaker.tick()
        ev = self.vad.process(pcm)
        utterance = self.utterance.push(pcm, ev, speculate=not (self._ending or self._deaf))
        if isinstance(ev, SpeechStart):
            self._on_speech_start(ev)
        elif utterance is not None:
            self._on_utterance(utterance)
        self._timers()

    def on_dtmf(self, digit: str) -> None:
        if self.leg is None or self.state is State.ENDED:
            return
        self._idle = 0
        self.calllog.event("dtmf", digit=digit)
        action = self.settings.actions.for_dtmf(digit)
        if action is not None:
            self._act(action, f"dtmf {digit}")

    def on_mark(self, mark: str, played: bool) -> None:
        if self.leg is None:
            return
        if mark in self.speaker:
            self.calllog.event("mark", logging.DEBUG, mark=mark, played=played)
        self.speaker.on_mark(mark, played)

    async def on_end(self, reason: str) -> None:
        if self.leg is None or self.state is State.ENDED:
            return
        self.state = State.ENDED
        if self._turn is not None:
            self._close_turn(self._turn, "cancelled")
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not me]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self.calllog.call_end(reason)

    # --- VAD events -----------------------------------------------------------------------

    def _on_speech_start(self, ev: SpeechStart) -> None:
        self.metrics.vad_segments_total.labels(transport=self.transport).inc()
        self._idle = 0
        if self._ending:
            return
        if ev.barge_in and not self.settings.barge_in:
            self._deaf = True  # the caller talks over the bot: not heard, by choice
            return
        if self.state in (State.THINKING, State.SPEAKING):
            self._interrupt(ev)

    def _start_asr(self, audio: bytes) -> asyncio.Task[Any]:
        """A speculative ASR job, owned by the call; its consumer handles its errors."""
        e = self.engines
        job = partial(e.asr.transcribe, audio, self.settings.asr_hint)
        return self._spawn(e.asr_worker.submit(job, deadline_s=e.deadline("asr")), "asr-spec",
                           critical=False)

    def _on_utterance(self, u: Utterance) -> None:
        deaf, self._deaf = self._deaf, False
        if self._ending or deaf:
            if u.spec is not None:
                u.spec.task.cancel()
            return
        self.calllog.event("speech_end", speech_s=round(u.speech_s, 3))
        turn = Turn(self.calllog.new_turn(u.speech_end), u.speech_end, u.audio, u.spec)
        turn.record.timings["speech"] = u.speech_s
        self._start_turn(turn)

    # --- turns ---------------------------------------------------------------------------

    def _start_turn(self, turn: Turn) -> None:
        turn.start_frame = self._progress = self._frame
        self._turn = turn
        self._response = self._spawn(self._run_turn(turn), f"turn-{turn.record.index}")
        self._update_state()

    async def _run_turn(self, turn: Turn) -> None:
        turn.outcome = await self.runner.run(turn)
        if turn.outcome == "goodbye":
            self._close_turn(turn, "goodbye")
            self._end_call("caller_goodbye", "goodbye")
        elif turn.outcome == "action" and turn.action is not None:
            self._close_turn(turn, "answered")
            self._act(turn.action, f"said {turn.record.transcript[:60]!r}")
        elif turn.outcome == "empty":
            self._close_turn(turn, "empty")
            if self._resume and not self._ending:
                self._resume = False
                self._start_turn(Turn(self.calllog.new_turn(self.clock.now()), None, resume=True))
        # answered / error: the turn closes when its audio has been played (_update_state).

    def _close_turn(self, turn: Turn, outcome: str) -> None:
        if turn.closed:
            return
        turn.closed = True
        heard = turn.heard
        turn.record.heard = heard
        if turn.record.answer:
            self.history.add_assistant(turn.record.answer, heard=heard)
        if heard:
            self._resume = False
        if turn.record.transcript:
            self._reprompts = 0
        if outcome in ("answered", "interrupted", "goodbye"):
            self.metrics.turns_total.inc()
        self.calllog.turn_done(turn.record, outcome)
        if self._turn is turn:
            self._turn = None

    def _interrupt(self, ev: SpeechStart) -> None:
        """Barge-in: the caller talks while the bot thinks or speaks."""
        t0 = self.clock.now()
        turn = self._turn
        if turn is not None:
            # Set first: clearing may close the turn (its marks come back unplayed).
            turn.outcome = "interrupted"
        cleared: list[Spoken] = []
        if not self.speaker.idle:
            cleared = self.speaker.clear()
            latency = self.clock.now() - t0
            self.metrics.bargein_latency_seconds.labels(transport=self.transport).observe(latency)
            self.metrics.bargeins_total.labels(transport=self.transport).inc()
        self._cancel_response()
        if turn is not None:
            if not turn.resume and not turn.record.transcript:
                # Not transcribed yet: it is said again with the caller's next words.
                self.utterance.carry = turn.audio + GAP
            elif not turn.heard:
                self._resume = True
            self._close_turn(turn, "interrupted")
        self.calllog.event(
            "barge_in",
            turn=turn.record.index if turn else None,
            vad_barge_in=ev.barge_in,
            detect_ms=(ev.frame - ev.onset_frame + 1) * FRAME_MS,
            bot_audio=[s.kind for s in cleared],
        )
        self._update_state()

    def _cancel_response(self) -> None:
        """Stop the running turn now: both its LLM side and its TTS side, so no audio of
        it can reach the leg after this returns (the current task is left to finish)."""
        me = asyncio.current_task()
        tasks = [self._response, self._turn.speaking if self._turn is not None else None]
        self._response = None
        for task in tasks:
            if task is not None and task is not me and not task.done():
                task.cancel()

    # --- speech out --------------------------------------------------------------------

    def _say(self, key: str) -> Spoken | None:
        """Play a cached phrase; None when it is not cached (logged, never fatal)."""
        phrases = self.engines.phrases
        if key not in phrases:
            log.warning("phrase %r is not cached; not played", key, extra=self._extra)
            return None
        # Agents' own phrases are keyed "<kind>:<hash>": the label is the kind.
        key_kind = key.split(":", 1)[0]
        label = "filler" if key_kind.startswith("filler") else key_kind
        self.metrics.phrases_played_total.labels(phrase=label).inc()
        self.calllog.event("say", phrase=key, text=phrases.text(key))
        return self.speaker.send_marked(
            phrases.get(key), phrases.sample_rate, text=phrases.text(key), kind=key
        )

    def _update_state(self) -> None:
        if self.state is State.ENDED:
            return
        if self._ending:
            self.state = State.ENDING
            return
        running = self._response is not None and not self._response.done()
        if not self.speaker.idle:
            new = State.SPEAKING
        elif running:
            new = State.THINKING
        else:
            new = State.LISTENING
            if self._turn is not None and not running:
                self._close_turn(self._turn, self._turn.outcome)
        if new is not self.state:
            if new is State.LISTENING:
                self._idle = 0
            self.calllog.event("state", logging.DEBUG, state=new.value)
            self.state = new

    # --- timers (frame counts) -----------------------------------------------------------

    def _note_progress(self) -> None:
        self._progress = self._frame

    def _timers(self) -> None:
        s, f = self.settings, self._frame
        if self._ending:
            if self._ending != "transfer" and f >= self._hangup_frame:
                self._hangup()
            return
        if f >= self._max_call:
            self._end_call("max_duration", "time_limit")
            return
        turn = self._turn
        running = self._response is not None and not self._response.done()
        if turn is not None and running:
            if (
                self._filler_after is not None
                and self.state is State.THINKING
                and turn.first_audio is None
                and turn.record.filler is None
                and f - turn.start_frame >= self._filler_after
            ):
                self._play_filler(turn)
            if f - self._progress >= self._stall_after:
                self._stalled(turn)
        if self.state is State.LISTENING and not self.utterance.collecting:
            self._idle += 1
            if self._reprompts < s.max_reprompts:
                if self._idle >= self._reprompt_after:
                    self._reprompts += 1
                    self._idle = 0
                    self._say(s.reprompt)
            elif self._idle >= self._hangup_after:
                self._end_call("silence", "silence_goodbye")

    def _play_filler(self, turn: Turn) -> None:
        cached = [k for k in self.settings.fillers if k in self.engines.phrases]
        if not cached:
            return
        key = cached[self._fillers % len(cached)]
        self._fillers += 1
        turn.record.filler = key
        self._say(key)

    def _stalled(self, turn: Turn) -> None:
        self._cancel_response()
        error = TurnStalled(f"no progress for {self.settings.stall_s} s in {turn.stage}")
        self.runner.fail(turn, turn.stage, error)
        self._close_turn(turn, "error")
        self._update_state()

    # --- ending ------------------------------------------------------------------------

    def _end_call(self, reason: str, phrase: str) -> None:
        """Say goodbye, then hang up once it has been heard (or after its length + 2 s,
        if the leg never reports the mark)."""
        if self._ending or self.state is State.ENDED:
            return
        self._ending = reason
        self.calllog.event("ending", reason=reason)
        self.utterance.drop_speculation()
        self._cancel_response()
        if self._turn is not None:
            self._close_turn(self._turn, "interrupted")
        if not self.speaker.idle:
            self.speaker.clear()
        self._update_state()
        spoken = self._say(phrase)
        seconds = spoken.seconds if spoken is not None else 0.0
        self._hangup_frame = self._frame + _frames(seconds + 2.0)
        if spoken is None:
            self._hangup()
        else:
            spoken.done.add_done_callback(lambda _: self._hangup())

    # --- actions (transfer, hang up, DTMF) -------------------------------------------------

    def _act(self, action: CallAction, why: str) -> None:
        """A rule matched. DTMF goes out at once; hang-up says goodbye first; transfer
        stops the conversation, says so, and hands the call over. A failed transfer
        brings the conversation back to listening, with an apology."""
        if self._ending or self.state is State.ENDED or self.leg is None:
            return
        self.calllog.event("action", action=action.do, arg=action.arg, why=why)
        if action.do == "send_dtmf":
            self._spawn(perform(self.leg, action, metrics=self.metrics), "send-dtmf")
        elif action.do == "hangup":
            self._end_call("action_hangup", "goodbye")
        else:
            self._ending = "transfer"
            self.utterance.drop_speculation()
            self._cancel_response()
            if self._turn is not None:
                self._close_turn(self._turn, "interrupted")
            if not self.speaker.idle:
                self.speaker.clear()
            self._update_state()
            spoken = self._say("transferring")
            # Not owned by the call (_spawn): the transfer ends the call before it
            # returns, and on_end must not cancel it then. It is bounded by the leg.
            self._transfer_task = asyncio.get_running_loop().create_task(
                self._transfer(action, spoken), name=f"{self.calllog.info.call_id}:transfer")

    async def _transfer(self, action: CallAction, spoken: Spoken | None) -> None:
        if spoken is not None:
            await asyncio.wait([spoken.done], timeout=spoken.seconds + 2.0)
        if self.leg is None or self.state is State.ENDED:
            return  # the caller hung up first
        if await perform(self.leg, action, metrics=self.metrics) == "ok":
            return  # the leg ends (transfer): on_end follows
        if self.state is State.ENDED:
            return
        self._ending = None
        self._update_state()
        self._say("apology")

    def _hangup(self) -> None:
        if self._hung_up or self.leg is None or self.state is State.ENDED:
            return
        self._hung_up = True
        self._spawn(self._do_hangup(self.leg, self._ending or "normal"), "hangup")

    async def _do_hangup(self, leg: CallLeg, reason: str) -> None:
        self.calllog.event("hangup", reason=reason)
        await leg.hangup(reason)

    # --- task ownership -----------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str, *, critical: bool = True
               ) -> asyncio.Task[Any]:
        """A task owned by this call: cancelled by on_end. A critical task that fails is
        a bug: logged with the call id, counted, and the caller hears the apology."""
        task = asyncio.get_running_loop().create_task(
            coro, name=f"{self.calllog.info.call_id}:{name}"
        )
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(t, critical))
        return task

    def _task_done(self, task: asyncio.Task[Any], critical: bool) -> None:
        self._tasks.discard(task)
        if task is self._response:
            self._response = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            if critical:
                log.error("%s crashed", task.get_name(), exc_info=exc, extra=self._extra)
                self.metrics.stage_errors_total.labels(
                    stage="conversation", kind=type(exc).__name__
                ).inc()
                self.calllog.error("conversation", exc)
                if self._turn is not None:
                    self._close_turn(self._turn, "error")
                if not self._ending and self.state is not State.ENDED:
                    self._say("apology")
            else:  # its owner awaits it and handles the error, or it was given up
                log.debug("%s ended with %r", task.get_name(), exc, extra=self._extra)
        self._update_state()
