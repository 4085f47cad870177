"""The engine bundle: one ASR, one LLM and one TTS engine per process, each behind its
own ModelWorker, plus the cache of fixed phrases. Built once at start-up and shared by
every call.

    engines = Engines(asr, llm, tts, settings=EngineSettings(), metrics=metrics)
    await engines.start()      # ASR and TTS warm-up, phrase cache, LLM warm-up request
    engines.readiness()        # {"ready": True, "llm": "llama.cpp:...", "llm_fallback": False, ...}

If the LLM's warm-up fails (an Ollama server that is not there) and a fallback factory
was given, start() builds the fallback engine (the embedded llama.cpp model), warms it
instead and says so in readiness(): the process still answers calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from media.clock import Clock, MonotonicClock
from pipeline.asr import AsrEngine, WhisperAsr, WhisperSettings
from pipeline.llm import (
    LlamaCppEngine,
    LlamaCppSettings,
    LlmEngine,
    OllamaEngine,
    OllamaSettings,
    OpenAICompatEngine,
    OpenAICompatSettings,
)
from pipeline.metrics import Metrics
from pipeline.tts import (
    DEFAULT_PHRASES,
    CoquiHttpEngine,
    CoquiSettings,
    PhraseCache,
    PiperSettings,
    PiperTts,
    TtsEngine,
)
from pipeline.workers import ModelWorker

log = logging.getLogger(__name__)

# Everything the conversation may say without asking the TTS: greeting, errors, fillers,
# reprompt and the goodbyes. Agents may replace texts (their own greeting) but keep keys.
CONVERSATION_PHRASES: Mapping[str, str] = {
    **DEFAULT_PHRASES,
    "reprompt": "Are you still there?",
    "silence_goodbye": "I can't hear anything, so I'll hang up now. Goodbye.",
    "time_limit": "We have reached the time limit for this call. Thanks for calling, goodbye.",
    "transferring": "Let me put you through. One moment please.",
}
FILLERS = ("filler_hmm", "filler_let_me_see", "filler_okay")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    threads: int = 1
    max_queue: int = 4  # jobs waiting beyond the free threads; more is QueueFull
    deadline_s: float = 2.0  # a job that waited this long is never started


@dataclass(frozen=True, slots=True)
class EngineSettings:
    asr: WorkerSettings = WorkerSettings(threads=1, max_queue=4, deadline_s=2.0)
    llm: WorkerSettings = WorkerSettings(threads=1, max_queue=4, deadline_s=3.0)
    tts: WorkerSettings = WorkerSettings(threads=1, max_queue=8, deadline_s=2.0)
    phrases: Mapping[str, str] = field(default_factory=lambda: dict(CONVERSATION_PHRASES))
    warm_up: bool = True  # warm the engines in start(); tests of the wiring skip it


class EngineStartError(RuntimeError):
    """An engine could not be loaded or warmed up; the process must not take calls."""


class Engines:
    """ASR/LLM/TTS engines, their workers and the phrase cache. Workers may be injected
    (tests); by default each engine gets a ModelWorker sized by its WorkerSettings."""

    def __init__(
        self,
        asr: AsrEngine,
        llm: LlmEngine,
        tts: TtsEngine,
        *,
        settings: EngineSettings | None = None,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
        llm_fallback: Callable[[], LlmEngine] | None = None,
        workers: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = s = settings or EngineSettings()
        self.metrics = metrics or Metrics()
        self.clock = clock or MonotonicClock()
        self.asr, self.llm, self.tts = asr, llm, tts
        self._llm_fallback = llm_fallback
        self.phrases = PhraseCache(tts, s.phrases)
        given = dict(workers or {})
        self.asr_worker = given.get("asr") or self._worker("asr", s.asr)
        self.llm_worker = given.get("llm") or self._worker("llm", s.llm)
        self.tts_worker = given.get("tts") or self._worker("tts", s.tts)
        self.started = False
        self.fell_back = False
        self.llm_error: str | None = None
        self.warm_seconds: dict[str, float] = {}

    def _worker(self, name: str, w: WorkerSettings) -> ModelWorker:
        return ModelWorker(
            name, threads=w.threads, max_queue=w.max_queue, metrics=self.metrics, clock=self.clock
        )

    def deadline(self, stage: str) -> float:
        """The queue deadline of a stage's worker: "asr", "llm" or "tts"."""
        w: WorkerSettings = getattr(self.settings, stage)
        return w.deadline_s

    async def start(self) -> None:
        """Fill the phrase cache and warm every engine in its own worker, so the first
        caller pays for nothing. Raises EngineStartError when ASR or TTS fail, or the
        LLM fails with no fallback."""
        jobs = [self._warm_tts()]
        if self.settings.warm_up:
            jobs += [self._warm_asr(), self._warm_llm()]
        await asyncio.gather(*jobs)
        self.started = True

    async def _timed(self, name: str, worker: Any, job: Callable[[], Any]) -> None:
        t0 = self.clock.now()
        await worker.submit(job)
        self.warm_seconds[name] = round(self.clock.now() - t0, 3)

    async def _warm_asr(self) -> None:
        try:
            await self._timed("asr", self.asr_worker, self.asr.warm_up)
        except Exception as e:
            raise EngineStartError(f"ASR {self.asr.name} failed to warm up: {e}") from e

    async def _warm_tts(self) -> None:
        try:
            if self.settings.warm_up:
                await self._timed("tts", self.tts_worker, self.tts.warm_up)
            await self._timed("phrases", self.tts_worker, self.phrases.warm)
        except Exception as e:
            raise EngineStartError(f"TTS {self.tts.name} failed to warm up: {e}") from e

    async def _warm_llm(self) -> None:
        try:
            await self._timed("llm", self.llm_worker, self.llm.warm_up)
            return
        except Exception as e:
            if self._llm_fallback is None:
                raise EngineStartError(f"LLM {self.llm.name} failed to warm up: {e}") from e
            self.llm_error = f"{self.llm.name}: {e}"
            log.warning("LLM %s is not usable (%s); falling back to the embedded model",
                        self.llm.name, e)
        try:
            fallback = await asyncio.to_thread(self._llm_fallback)
            # llama.cpp runs one generation at a time: one thread, whatever the remote had.
            old, self.llm_worker = self.llm_worker, self._worker(
                "llm", WorkerSettings(1, self.settings.llm.max_queue, self.settings.llm.deadline_s)
            )
            if isinstance(old, ModelWorker):
                await old.aclose()
            self.llm = fallback
            self.fell_back = True
            await self._timed("llm", self.llm_worker, self.llm.warm_up)
        except Exception as e:
            raise EngineStartError(
                f"LLM fallback failed too ({e}) after: {self.llm_error}"
            ) from e

    def readiness(self) -> dict[str, Any]:
        return {
            "ready": self.started,
            "asr": self.asr.name,
            "llm": self.llm.name,
            "tts": self.tts.name,
            "llm_fallback": self.fell_back,
            "llm_error": self.llm_error,
            "phrases": len([k for k in self.phrases.phrases if k in self.phrases]),
            "warm_seconds": dict(self.warm_seconds),
            "queues": {
                name: getattr(w, "depth", 0)
                for name, w in (("asr", self.asr_worker), ("llm", self.llm_worker),
                                ("tts", self.tts_worker))
            },
        }

    async def aclose(self) -> None:
        for w in (self.asr_worker, self.llm_worker, self.tts_worker):
            close = getattr(w, "aclose", None)
            if close is not None:
                await close()


# --- building the engines from plain settings ----------------------------------------

LlmSettings = LlamaCppSettings | OllamaSettings | OpenAICompatSettings
TtsSettings = PiperSettings | CoquiSettings


def make_llm(s: LlmSettings) -> LlmEngine:
    """The engine for these settings. llama.cpp loads its model here (blocking); the
    HTTP engines connect only when first used."""
    if isinstance(s, LlamaCppSettings):
        return LlamaCppEngine(s)
    if isinstance(s, OllamaSettings):
        return OllamaEngine(s)
    return OpenAICompatEngine(s)


def make_tts(s: TtsSettings) -> TtsEngine:
    return PiperTts(s) if isinstance(s, PiperSettings) else CoquiHttpEngine(s)


def build_engines(
    *,
    asr: WhisperSettings,
    llm: LlmSettings,
    tts: TtsSettings,
    fallback_llm: LlamaCppSettings | None = None,
    settings: EngineSettings | None = None,
    metrics: Metrics | None = None,
    clock: Clock | None = None,
) -> Engines:
    """Load the models and wire the bundle. Blocking (model loads): call it in a thread,
    then `await engines.start()` on the loop. `fallback_llm`: the embedded model to use
    when `llm` cannot be warmed up at start."""
    fallback = None if fallback_llm is None else lambda: LlamaCppEngine(fallback_llm)
    return Engines(
        WhisperAsr(asr),
        make_llm(llm),
        make_tts(tts),
        settings=settings,
        metrics=metrics,
        clock=clock,
        llm_fallback=fallback,
    )
