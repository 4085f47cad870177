from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.conversation import Conversation
from pipeline.echo import EchoHandler
from pipeline.engines import Engines, EngineStartError, make_llm
from pipeline.leg import CallInfo
from pipeline.llm import LlamaCppSettings, OllamaSettings, OpenAICompatSettings
from pipeline.metrics import Metrics
from pipeline.tts import CoquiSettings, PiperSettings
from switchboard.agents import (
    Agents,
    conversation_settings,
    engine_settings,
    fallback_llm_settings,
    llm_settings,
    tts_settings,
    whisper_settings,
)
from switchboard.config import Config
from tests.pipeline.fake_ollama import DEFAULT_MODEL, FakeOllama
from tests.pipeline.test_conversation import ScriptedAsr, ScriptedLlm, ScriptedTts

INFO = CallInfo("c-1", "sip")


def config(**sections: Any) -> Config:
    return Config.model_validate(sections)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the socket is closed


@pytest.fixture(scope="module")
def ollama() -> Iterator[FakeOllama]:
    server = FakeOllama()
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- config -> plain settings -----------------------------------------------------------


def test_default_config_is_the_embedded_stack() -> None:
    c = config()
    assert llm_settings(c.llm) == LlamaCppSettings(model_path=None, n_threads=1)
    assert fallback_llm_settings(c.llm) is None
    assert tts_settings(c.tts) == PiperSettings()
    w = whisper_settings(c.asr)
    assert (w.model_path, w.device, w.compute_type, w.cpu_threads, w.language) == (
        None, "cpu", "int8", 2, "en")
    assert engine_settings(c).llm.threads == 1  # llama.cpp: one generation at a time


def test_ollama_config_with_fallback() -> None:
    c = config(llm={"engine": "ollama", "host": "http://gpu:11434", "model": "qwen2.5:0.5b",
                    "keep_alive": "1h", "threads": 3})
    assert llm_settings(c.llm) == OllamaSettings(model="qwen2.5:0.5b", host="http://gpu:11434",
                                                 keep_alive="1h")
    assert fallback_llm_settings(c.llm) == LlamaCppSettings(n_threads=3)
    assert engine_settings(c).llm.threads > 1
    off = config(llm={"engine": "ollama", "fallback_to_embedded": False})
    assert fallback_llm_settings(off.llm) is None


@pytest.mark.parametrize(
    "host, base",
    [("http://vllm:8000", "http://vllm:8000/v1"), ("http://vllm:8000/", "http://vllm:8000/v1"),
     ("https://api.example.com/openai/v1", "https://api.example.com/openai/v1")],
)
def test_openai_compatible_base_url(host: str, base: str) -> None:
    c = config(llm={"engine": "openai", "host": host, "model": "m", "api_key": "sk-x"})
    assert llm_settings(c.llm) == OpenAICompatSettings(base_url=base, model="m", api_key="sk-x")


def test_paths_tts_and_conversation_settings() -> None:
    c = config(
        asr={"model_path": "/models/whisper", "hint": "Switchboard, Acme"},
        llm={"model_path": "/models/gemma.gguf", "max_tokens": 50, "temperature": 0.1},
        tts={"voice_path": "/voices/amy.onnx"},
    )
    assert whisper_settings(c.asr).model_path == Path("/models/whisper")
    assert llm_settings(c.llm) == LlamaCppSettings(model_path=Path("/models/gemma.gguf"),
                                                   n_threads=1)
    assert tts_settings(c.tts) == PiperSettings(onnx_path=Path("/voices/amy.onnx"))
    s = conversation_settings(c)
    assert (s.max_tokens, s.temperature, s.asr_hint) == (50, 0.1, "Switchboard, Acme")
    coqui = config(tts={"engine": "coqui", "coqui_url": "http://tts:5002"})
    assert tts_settings(coqui.tts) == CoquiSettings(base_url="http://tts:5002")


# --- the factory -----------------------------------------------------------------------------


async def test_echo_agent_needs_no_models() -> None:
    agents = Agents(config(agent="echo"), build=lambda **kw: pytest.fail("no engines needed"))
    await agents.start()
    assert agents.readiness() == {"ready": True, "agent": "echo"}
    assert isinstance(agents.make_handler(INFO), EchoHandler)


def scripted_build(fallback: list[ScriptedLlm]) -> Any:
    """build_engines with scripted ASR/TTS, the configured LLM engine for real, and a
    scripted embedded model to fall back to."""

    def build(**kw: Any) -> Engines:
        embedded = ScriptedLlm()
        embedded.name = "llama.cpp:scripted"
        fallback.append(embedded)
        return Engines(
            ScriptedAsr(), make_llm(kw["llm"]), ScriptedTts(),
            settings=kw["settings"], metrics=kw["metrics"], clock=kw["clock"],
            llm_fallback=(lambda: embedded) if kw["fallback_llm"] else None,
        )

    return build


async def test_conversation_agent_on_a_reachable_ollama(ollama: FakeOllama) -> None:
    ollama.reset()
    fallback: list[ScriptedLlm] = []
    c = config(llm={"engine": "ollama", "host": ollama.url, "model": DEFAULT_MODEL})
    agents = Agents(c, metrics=Metrics(), build=scripted_build(fallback))
    assert agents.readiness()["ready"] is False
    with pytest.raises(RuntimeError, match="not started"):
        agents.make_handler(INFO)
    await agents.start()
    try:
        ready = agents.readiness()
        assert ready["ready"] is True and ready["agent"] == "conversation"
        assert ready["engines"]["llm"] == f"ollama:{DEFAULT_MODEL}"
        assert ready["engines"]["llm_fallback"] is False
        assert [path for path, _ in ollama.requests] == [
            "/api/tags", "/api/chat", "/api/show"]  # warm-up, then: can it call tools?
        assert ollama.requests[1][1]["keep_alive"] == "30m"
        one, two = agents.make_handler(INFO), agents.make_handler(CallInfo("c-2", "twilio"))
        assert isinstance(one, Conversation) and isinstance(two, Conversation)
        assert one is not two and one.engines is two.engines is agents.engines
        assert one.settings.max_tokens == c.llm.max_tokens
    finally:
        await agents.aclose()


async def test_unreachable_ollama_falls_back_to_the_embedded_model() -> None:
    fallback: list[ScriptedLlm] = []
    c = config(llm={"engine": "ollama", "host": closed_port_url()})
    agents = Agents(c, build=scripted_build(fallback))
    await agents.start()
    try:
        engines = agents.readiness()["engines"]
        assert engines["llm_fallback"] is True and engines["llm"] == "llama.cpp:scripted"
        assert "unreachable" in engines["llm_error"]
        assert agents.engines is not None and agents.engines.llm is fallback[0]
    finally:
        await agents.aclose()


async def test_unreachable_ollama_without_fallback_is_not_ready() -> None:
    c = config(llm={"engine": "ollama", "host": closed_port_url(), "fallback_to_embedded": False})
    agents = Agents(c, build=scripted_build([]))
    with pytest.raises(EngineStartError, match="unreachable"):
        await agents.start()
    try:
        ready = agents.readiness()
        assert ready["ready"] is False and "EngineStartError" in ready["error"]
    finally:
        await agents.aclose()


@pytest.mark.slow
async def test_real_models_with_ollama_down_fall_back_to_packaged_smollm2() -> None:
    c = config(llm={"engine": "ollama", "host": closed_port_url()})
    agents = Agents(c, metrics=Metrics())
    await agents.start()
    try:
        ready = agents.readiness()
        engines = ready["engines"]
        assert ready["ready"] is True and engines["llm_fallback"] is True
        assert engines["asr"].startswith("whisper:")
        assert engines["llm"].startswith("llama.cpp:")
        assert engines["tts"] == "piper:en_US-joe-medium"
        assert set(engines["warm_seconds"]) == {"asr", "llm", "tts", "phrases"}
        assert isinstance(agents.make_handler(INFO), Conversation)
    finally:
        await agents.aclose()
