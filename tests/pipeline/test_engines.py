"""The engine bundle on scripted engines behind real ModelWorker threads."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import pytest

from pipeline.engines import (
    CONVERSATION_PHRASES,
    Engines,
    EngineSettings,
    EngineStartError,
    WorkerSettings,
    make_llm,
    make_tts,
)
from pipeline.llm import (
    LlmUnavailable,
    OllamaEngine,
    OllamaSettings,
    OpenAICompatEngine,
    OpenAICompatSettings,
)
from pipeline.metrics import Metrics
from pipeline.tts import CoquiHttpEngine, CoquiSettings
from pipeline.workers import WorkerClosed
from tests.pipeline.test_conversation import ScriptedAsr, ScriptedLlm, ScriptedTts


class Recording:
    """Wraps an engine's warm_up to record the thread it ran on, or fail."""

    def __init__(self, engine, fail: Exception | None = None) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine
        self.fail = fail
        self.threads: list[str] = []
        engine.warm_up = self.warm_up

    def warm_up(self) -> None:
        self.threads.append(threading.current_thread().name)
        if self.fail is not None:
            raise self.fail


@pytest.fixture
async def bundle() -> AsyncIterator[list[Engines]]:
    made: list[Engines] = []
    yield made
    for e in made:
        await e.aclose()


def build(made: list[Engines], *, settings: EngineSettings | None = None, **kw) -> Engines:  # type: ignore[no-untyped-def]
    engines = Engines(
        kw.pop("asr", ScriptedAsr()), kw.pop("llm", ScriptedLlm()), kw.pop("tts", ScriptedTts()),
        settings=settings, metrics=Metrics(), **kw,
    )
    made.append(engines)
    return engines


async def test_start_warms_each_engine_in_its_own_worker_and_fills_the_phrase_cache(
    bundle: list[Engines],
) -> None:
    asr, llm, tts = ScriptedAsr(), ScriptedLlm(), ScriptedTts()
    rec = [Recording(asr), Recording(llm), Recording(tts)]
    e = build(bundle, asr=asr, llm=llm, tts=tts)
    assert not e.readiness()["ready"]
    await e.start()
    assert [r.threads for r in rec] == [["asr-worker-0"], ["llm-worker-0"], ["tts-worker-0"]]
    for key in CONVERSATION_PHRASES:
        assert key in e.phrases and e.phrases.get(key)
    for key in ("greeting", "apology", "please_hold", "reprompt", "goodbye", "filler_hmm"):
        assert key in CONVERSATION_PHRASES
    ready = e.readiness()
    assert ready["ready"] is True
    assert (ready["asr"], ready["llm"], ready["tts"]) == (asr.name, llm.name, tts.name)
    assert ready["llm_fallback"] is False and ready["llm_error"] is None
    assert set(ready["warm_seconds"]) == {"asr", "llm", "tts", "phrases"}  # type: ignore[arg-type]
    assert ready["phrases"] == len(CONVERSATION_PHRASES)


async def test_worker_sizes_and_deadlines_come_from_the_settings(bundle: list[Engines]) -> None:
    s = EngineSettings(
        asr=WorkerSettings(threads=2, max_queue=3, deadline_s=1.5),
        llm=WorkerSettings(threads=1, max_queue=5, deadline_s=2.5),
        tts=WorkerSettings(threads=1, max_queue=7, deadline_s=0.5),
        phrases={"greeting": "Hi."},
        warm_up=False,
    )
    e = build(bundle, settings=s)
    await e.start()
    assert (e.asr_worker.max_queue, e.llm_worker.max_queue, e.tts_worker.max_queue) == (3, 5, 7)
    assert len(e.asr_worker._threads) == 2
    assert (e.deadline("asr"), e.deadline("llm"), e.deadline("tts")) == (1.5, 2.5, 0.5)
    assert list(e.phrases.phrases) == ["greeting"] and "greeting" in e.phrases
    assert e.warm_seconds.keys() == {"phrases"}  # no model warm-ups when switched off


async def test_unreachable_llm_falls_back_to_the_embedded_one(bundle: list[Engines]) -> None:
    remote = ScriptedLlm()
    remote.name = "ollama:llama3.2:1b"
    Recording(remote, LlmUnavailable("Ollama at http://127.0.0.1:9 is unreachable"))
    embedded = ScriptedLlm()
    e = build(bundle, llm=remote, llm_fallback=lambda: embedded,
              settings=EngineSettings(llm=WorkerSettings(threads=4)))
    await e.start()
    assert e.llm is embedded and embedded.warmed == 1
    assert e.llm_worker.name == "llm" and len(e.llm_worker._threads) == 1
    ready = e.readiness()
    assert ready["ready"] and ready["llm_fallback"] is True and ready["llm"] == embedded.name
    assert "unreachable" in str(ready["llm_error"]) and "ollama" in str(ready["llm_error"])


async def test_llm_failure_without_fallback_is_fatal(bundle: list[Engines]) -> None:
    llm = ScriptedLlm()
    Recording(llm, LlmUnavailable("refused"))
    e = build(bundle, llm=llm)
    with pytest.raises(EngineStartError, match="LLM scripted-llm failed to warm up: refused"):
        await e.start()
    assert not e.readiness()["ready"]


async def test_failing_fallback_names_both_failures(bundle: list[Engines]) -> None:
    llm = ScriptedLlm()
    Recording(llm, LlmUnavailable("refused"))

    def broken() -> ScriptedLlm:
        raise FileNotFoundError("no gguf")

    e = build(bundle, llm=llm, llm_fallback=broken)
    with pytest.raises(EngineStartError, match=r"fallback failed too \(no gguf\).*refused"):
        await e.start()


@pytest.mark.parametrize("which", ["asr", "tts"])
async def test_asr_or_tts_failure_is_fatal(bundle: list[Engines], which: str) -> None:
    engine = ScriptedAsr() if which == "asr" else ScriptedTts()
    Recording(engine, RuntimeError("model file corrupt"))
    e = build(bundle, **{which: engine})
    with pytest.raises(EngineStartError, match=f"{which.upper()} .* model file corrupt"):
        await e.start()


async def test_aclose_stops_the_workers(bundle: list[Engines]) -> None:
    e = build(bundle)
    await e.start()
    await e.aclose()
    with pytest.raises(WorkerClosed):
        await e.asr_worker.submit(lambda: None)


def test_engines_are_made_from_plain_settings_without_connecting() -> None:
    ollama = make_llm(OllamaSettings(model="qwen2.5:0.5b", host="http://127.0.0.1:9"))
    assert isinstance(ollama, OllamaEngine) and ollama.name == "ollama:qwen2.5:0.5b"
    openai = make_llm(OpenAICompatSettings(base_url="http://127.0.0.1:9/v1", model="m"))
    assert isinstance(openai, OpenAICompatEngine)
    coqui = make_tts(CoquiSettings(base_url="http://127.0.0.1:9", sample_rate=16000))
    assert isinstance(coqui, CoquiHttpEngine) and coqui.sample_rate == 16000
