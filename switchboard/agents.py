"""Who answers a call: the echo agent, or a conversation on the engines the config names.

    agents = Agents(config, metrics=metrics)
    await agents.start()                 # loads and warms the models (seconds)
    handler = agents.make_handler(info)  # one CallHandler per call, sharing the engines
    agents.readiness()                   # for /readyz: which engines, did we fall back

The LLM is the embedded llama.cpp model unless `llm.engine` names Ollama or an
OpenAI-compatible server. If that server cannot be used at start (not running, model
not pulled) and `llm.fallback_to_embedded` is set, the embedded model answers instead,
and readiness says so. Nothing is downloaded: the embedded models ship as packages.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from media.clock import Clock, MonotonicClock
from pipeline.asr import WhisperSettings
from pipeline.conversation import Conversation, ConversationSettings
from pipeline.echo import EchoHandler
from pipeline.engines import (
    Engines,
    EngineSettings,
    LlmSettings,
    TtsSettings,
    WorkerSettings,
    build_engines,
)
from pipeline.leg import CallHandler, CallInfo
from pipeline.llm import LlamaCppSettings, OllamaSettings, OpenAICompatSettings
from pipeline.metrics import Metrics
from pipeline.tts import CoquiSettings, PiperSettings
from switchboard.config import AsrConfig, Config, LlmConfig, TtsConfig

log = logging.getLogger(__name__)

# Remote LLM servers take several requests at once; llama.cpp in-process takes one.
_REMOTE_LLM_THREADS = 4


def whisper_settings(c: AsrConfig) -> WhisperSettings:
    return WhisperSettings(
        model_path=Path(c.model_path) if c.model_path else None,
        device=c.device,
        compute_type=c.compute_type,
        cpu_threads=c.cpu_threads,
        language=c.language,
        min_window_s=c.min_window_s,
    )


def llm_settings(c: LlmConfig) -> LlmSettings:
    if c.engine == "ollama":
        return OllamaSettings(model=c.model, host=c.host, keep_alive=c.keep_alive)
    if c.engine == "openai":
        base = c.host.rstrip("/")
        if urllib.parse.urlsplit(base).path in ("", "/"):
            base += "/v1"  # a bare host: the usual versioned root
        return OpenAICompatSettings(base_url=base, model=c.model, api_key=c.api_key or "")
    return embedded_llm_settings(c)


def embedded_llm_settings(c: LlmConfig) -> LlamaCppSettings:
    return LlamaCppSettings(
        model_path=Path(c.model_path) if c.model_path else None, n_threads=c.threads
    )


def fallback_llm_settings(c: LlmConfig) -> LlamaCppSettings | None:
    """The embedded model to fall back to, when a remote engine is configured."""
    if c.engine == "llamacpp" or not c.fallback_to_embedded:
        return None
    return embedded_llm_settings(c)


def tts_settings(c: TtsConfig) -> TtsSettings:
    if c.engine == "coqui":
        return CoquiSettings(base_url=c.coqui_url)
    return PiperSettings(onnx_path=Path(c.voice_path) if c.voice_path else None)


def engine_settings(config: Config) -> EngineSettings:
    threads = 1 if config.llm.engine == "llamacpp" else _REMOTE_LLM_THREADS
    return EngineSettings(llm=WorkerSettings(threads=threads, max_queue=4, deadline_s=3.0))


def conversation_settings(config: Config) -> ConversationSettings:
    return ConversationSettings(
        max_tokens=config.llm.max_tokens,
        temperature=config.llm.temperature,
        asr_hint=config.asr.hint,
    )


class Agents:
    """The handler factory for one process. `build` is the engine loader (a seam for
    tests); it is called in a thread, since loading models blocks."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
        build: Callable[..., Engines] = build_engines,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.clock = clock or MonotonicClock()
        self._build = build
        self.engines: Engines | None = None
        self.conversation_settings = conversation_settings(config)
        self.error: str | None = None

    async def start(self) -> None:
        """Load and warm what the agent needs. Raises (EngineStartError, ModelNotInstalled,
        ...) when the process cannot take calls; readiness() then shows the error."""
        if self.config.agent == "echo":
            return
        c = self.config
        try:
            engines = await asyncio.to_thread(
                self._build,
                asr=whisper_settings(c.asr),
                llm=llm_settings(c.llm),
                tts=tts_settings(c.tts),
                fallback_llm=fallback_llm_settings(c.llm),
                settings=engine_settings(c),
                metrics=self.metrics,
                clock=self.clock,
            )
            self.engines = engines
            await engines.start()
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            raise
        r = engines.readiness()
        log.info("conversation engines ready: asr=%s llm=%s%s tts=%s", r["asr"], r["llm"],
                 " (fallback)" if r["llm_fallback"] else "", r["tts"])

    @property
    def ready(self) -> bool:
        if self.config.agent == "echo":
            return True
        return self.engines is not None and self.engines.started

    def make_handler(self, call_info: CallInfo) -> CallHandler:
        """A fresh handler for one call. `call_info` will choose the agent profile once
        the dialplan exists; today every call gets the configured agent."""
        if self.config.agent == "echo":
            return EchoHandler()
        if self.engines is None or not self.engines.started:
            raise RuntimeError("the conversation engines are not started; call start() first")
        return Conversation(
            self.engines, self.conversation_settings, metrics=self.metrics, clock=self.clock
        )

    def readiness(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ready": self.ready, "agent": self.config.agent}
        if self.engines is not None:
            out["engines"] = self.engines.readiness()
        if self.error is not None:
            out["error"] = self.error
        return out

    async def aclose(self) -> None:
        if self.engines is not None:
            await self.engines.aclose()
