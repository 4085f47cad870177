"""Config sections -> the pipeline's plain engine and conversation settings (pure)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from pipeline.asr import WhisperSettings
from pipeline.conversation import ConversationSettings
from pipeline.engines import EngineSettings, LlmSettings, TtsSettings, WorkerSettings
from pipeline.llm import LlamaCppSettings, OllamaSettings, OpenAICompatSettings
from pipeline.tts import CoquiSettings, PiperSettings
from switchboard.config import AsrConfig, Config, LlmConfig, TtsConfig

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
    return engine_settings_for(1 if config.llm.engine == "llamacpp" else _REMOTE_LLM_THREADS)


def engine_settings_for(llm_threads: int) -> EngineSettings:
    return EngineSettings(llm=WorkerSettings(threads=llm_threads, max_queue=4, deadline_s=3.0))


def conversation_settings(config: Config) -> ConversationSettings:
    return ConversationSettings(
        max_tokens=config.llm.max_tokens,
        temperature=config.llm.temperature,
        asr_hint=config.asr.hint,
    )
