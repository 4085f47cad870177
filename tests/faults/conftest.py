"""Fixtures of the fault tests: the fake Ollama (in this process) and a spoken question."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pipeline.fake_ollama import FakeOllama

ANSWER = ("We", " open", " at", " nine", " on", " Saturday", ".")


@pytest.fixture(scope="module")
def ollama() -> Iterator[FakeOllama]:
    server = FakeOllama()
    server.start()
    server.reply = ANSWER
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def question(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.sip.test_conversation_call import say

    path = tmp_path_factory.mktemp("speech") / "question.wav"
    say(path, "What time do you open on Saturday?", lead_s=4.0)  # after the greeting
    return path
