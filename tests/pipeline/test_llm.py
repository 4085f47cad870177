from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest

from pipeline.chunking import speech_chunks
from pipeline.llm import (
    DEFAULT_SYSTEM_PROMPT,
    ConversationHistory,
    LlamaCppEngine,
    LlmEngine,
    LlmError,
    LlmHttpError,
    LlmStreamError,
    LlmTimeout,
    LlmUnavailable,
    OllamaEngine,
    OllamaSettings,
    OpenAICompatEngine,
    OpenAICompatSettings,
)
from pipeline.metrics import Metrics
from pipeline.workers import ModelWorker
from tests.pipeline.fake_ollama import DEFAULT_MODEL, DEFAULT_REPLY, FakeOllama

QUESTION = [
    {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
    {"role": "user", "content": "When do you open on Saturday?"},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Wait for the fake server's thread to catch up (bounded; not a timing assertion)."""
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


# --- conversation history -----------------------------------------------------------


def test_history_alternates_and_starts_with_system() -> None:
    h = ConversationHistory("Be brief.")
    h.add_user("Hi there")
    h.add_assistant("Hello! How can I help?")
    h.add_user("  ")  # nothing said: nothing stored
    h.add_user("Opening hours?")
    assert h.messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Opening hours?"},
    ]


def test_history_keeps_only_what_was_heard() -> None:
    h = ConversationHistory()
    h.add_user("Tell me about the menu")
    said = "We have pizza, pasta and salads. The soup of the day is"
    h.add_assistant(said, heard="We have pizza,")
    assert h.messages()[-1] == {"role": "assistant", "content": "We have pizza,…"}
    h.add_user("Pizza please")
    h.add_assistant("Great choice.", heard="Great choice.")  # heard in full: no mark
    assert h.messages()[-1]["content"] == "Great choice."


def test_history_unheard_answer_merges_user_turns() -> None:
    h = ConversationHistory("")
    h.add_user("Hello")
    h.add_assistant("Hi, what can", heard="")  # barged in before any audio played
    h.add_user("I want to book")
    assert h.messages() == [{"role": "user", "content": "Hello I want to book"}]


def test_history_is_capped_and_starts_with_a_user_turn() -> None:
    h = ConversationHistory("S", max_turns=2, max_chars=10_000)
    for i in range(5):
        h.add_user(f"q{i}")
        h.add_assistant(f"a{i}")
    assert [m["content"] for m in h.messages()] == ["S", "q3", "a3", "q4", "a4"]
    h = ConversationHistory("S", max_turns=50, max_chars=25)
    for i in range(5):
        h.add_user(f"question {i}")
        h.add_assistant(f"answer {i}")
    msgs = h.messages()
    assert msgs[1]["role"] == "user"
    assert sum(len(m["content"]) for m in msgs[1:]) <= 25
    assert msgs[-1]["content"] == "answer 4"


# --- Ollama, against the fake ----------------------------------------------------------


def ollama(server: FakeOllama, **kw: object) -> OllamaEngine:
    settings = {"model": DEFAULT_MODEL, "host": server.url, "timeout_s": 5.0, **kw}
    return OllamaEngine(OllamaSettings(**settings))  # type: ignore[arg-type]


def openai(server: FakeOllama, **kw: object) -> OpenAICompatEngine:
    settings = {"base_url": server.url + "/v1", "model": DEFAULT_MODEL, "timeout_s": 5.0, **kw}
    return OpenAICompatEngine(OpenAICompatSettings(**settings))  # type: ignore[arg-type]


ENGINES = [ollama, openai]


def test_ollama_streams_chat_with_keep_alive_and_options(ollama_server: FakeOllama) -> None:
    engine = ollama(ollama_server, keep_alive="1h", num_ctx=2048)
    pieces = list(engine.stream_chat(QUESTION, max_tokens=50, temperature=0.2))
    assert pieces == list(DEFAULT_REPLY)
    path, body = ollama_server.requests[-1]
    assert path == "/api/chat"
    assert body["model"] == DEFAULT_MODEL and body["stream"] is True
    assert body["messages"] == QUESTION
    assert body["keep_alive"] == "1h"
    assert body["options"] == {"num_predict": 50, "temperature": 0.2, "num_ctx": 2048}
    assert engine.name == f"ollama:{DEFAULT_MODEL}"


def test_ollama_warm_up_checks_tags_then_loads(ollama_server: FakeOllama) -> None:
    ollama(ollama_server).warm_up()
    assert [p for p, _ in ollama_server.requests] == ["/api/tags", "/api/chat",
                                                       "/api/show"]  # tools?
    load = ollama_server.requests[1][1]
    assert load["messages"] == [] and load["keep_alive"] == "30m"


def test_ollama_warm_up_names_a_missing_model(ollama_server: FakeOllama) -> None:
    with pytest.raises(LlmError, match=r"has no model 'llama3\.2' \(it has: smollm2:135m\)"):
        ollama(ollama_server, model="llama3.2").warm_up()
    ollama_server.models = ("llama3.2:latest",)
    ollama(ollama_server, model="llama3.2").warm_up()  # ":latest" is implied


def test_ollama_unknown_model_is_an_http_error(ollama_server: FakeOllama) -> None:
    with pytest.raises(LlmHttpError, match="not found, try pulling it first") as caught:
        list(ollama(ollama_server, model="nope:1b").stream_chat(QUESTION))
    assert caught.value.status == 404


@pytest.mark.parametrize("make", ENGINES)
def test_server_error_500(ollama_server: FakeOllama, make: Callable[..., LlmEngine]) -> None:
    ollama_server.mode = "error"
    with pytest.raises(LlmHttpError, match="llama runner process has terminated") as caught:
        list(make(ollama_server).stream_chat(QUESTION))
    assert caught.value.status == 500


@pytest.mark.parametrize("make", ENGINES)
def test_connection_dropped_mid_answer(
    ollama_server: FakeOllama, make: Callable[..., LlmEngine]
) -> None:
    ollama_server.mode, ollama_server.fail_after = "close", 3
    got: list[str] = []
    with pytest.raises(LlmStreamError, match=r"broke|ended"):
        for piece in make(ollama_server).stream_chat(QUESTION):
            got.append(piece)
    assert got == list(DEFAULT_REPLY[:3])


@pytest.mark.parametrize("make", ENGINES)
def test_stream_ending_without_done(
    ollama_server: FakeOllama, make: Callable[..., LlmEngine]
) -> None:
    ollama_server.mode = "no_done"
    with pytest.raises(LlmStreamError, match="ended"):
        list(make(ollama_server).stream_chat(QUESTION))


@pytest.mark.parametrize("make", ENGINES)
def test_server_hangs_mid_answer(ollama_server: FakeOllama, make: Callable[..., LlmEngine]) -> None:
    ollama_server.mode, ollama_server.fail_after = "hang", 1
    got: list[str] = []
    with pytest.raises(LlmTimeout):
        for piece in make(ollama_server, timeout_s=0.3).stream_chat(QUESTION):
            got.append(piece)
    assert got == [DEFAULT_REPLY[0]]


@pytest.mark.parametrize("make", ENGINES)
def test_server_not_running(make: Callable[..., LlmEngine]) -> None:
    class Nowhere:
        url = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(LlmUnavailable, match="unreachable"):
        list(make(Nowhere).stream_chat(QUESTION))


@pytest.mark.parametrize("make", ENGINES)
def test_closing_the_stream_closes_the_connection(
    ollama_server: FakeOllama, make: Callable[..., LlmEngine]
) -> None:
    ollama_server.mode, ollama_server.fail_after = "hang", 2
    stream = make(ollama_server).stream_chat(QUESTION)
    assert [next(stream), next(stream)] == list(DEFAULT_REPLY[:2])
    stream.close()  # what the worker does on barge-in
    assert wait_until(lambda: ollama_server.disconnects == 1)


def test_openai_compat_streams_sse(ollama_server: FakeOllama) -> None:
    engine = openai(ollama_server, api_key="sk-test")
    assert list(engine.stream_chat(QUESTION, max_tokens=20, temperature=0.1)) == list(DEFAULT_REPLY)
    path, body = ollama_server.requests[-1]
    assert path == "/v1/chat/completions"
    assert body == {
        "model": DEFAULT_MODEL,
        "messages": QUESTION,
        "stream": True,
        "max_tokens": 20,
        "temperature": 0.1,
    }
    engine.warm_up()
    assert ollama_server.requests[-1][1]["max_tokens"] == 1


async def test_http_engine_behind_a_worker_cancelled_mid_answer(
    ollama_server: FakeOllama, metrics: Metrics
) -> None:
    ollama_server.mode, ollama_server.fail_after = "hang", 3
    engine: LlmEngine = ollama(ollama_server)
    worker = ModelWorker("llm", threads=1, max_queue=2, metrics=metrics)
    try:
        async with worker.stream(lambda: engine.stream_chat(QUESTION)) as tokens:
            got = [await anext(tokens) for _ in range(3)]
        assert got == list(DEFAULT_REPLY[:3])
        # The thread is stuck in a read until the next piece or the timeout; the next
        # piece never comes, so the reset from the fake releases it.
        ollama_server.mode = "ok"
        ollama_server.reset()
        answer = await asyncio.wait_for(
            worker.submit(lambda: "".join(engine.stream_chat(QUESTION))), 10
        )
        assert answer == "".join(DEFAULT_REPLY)
    finally:
        worker.close()


# --- llama.cpp on the packaged SmolLM2 ------------------------------------------------


@pytest.mark.slow
def test_llama_streams_a_short_answer(llama_llm: LlamaCppEngine) -> None:
    assert llama_llm.chat_format == "chat_template.default"  # the GGUF's own template
    llama_llm.warm_up()
    pieces = list(llama_llm.stream_chat(QUESTION, max_tokens=40, temperature=0.0))
    text = "".join(pieces).strip()
    assert text
    assert 1 <= len(pieces) <= 40
    assert len(text.split()) <= 60
    assert list(speech_chunks(pieces))  # something speakable comes out


@pytest.mark.slow
def test_llama_closing_early_frees_the_model(llama_llm: LlamaCppEngine) -> None:
    stream = llama_llm.stream_chat(QUESTION, max_tokens=60, temperature=0.0)
    next(stream)
    stream.close()
    # The lock was released: a new generation starts at once.
    assert "".join(llama_llm.stream_chat(QUESTION, max_tokens=5, temperature=0.0))


@pytest.mark.slow
def test_llama_context_overflow_is_an_llm_error(llama_llm: LlamaCppEngine) -> None:
    huge = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(LlmError, match="context"):
        list(llama_llm.stream_chat(huge, max_tokens=5))
