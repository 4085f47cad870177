"""Shared fixtures for the pipeline tests: each real model is loaded once per session."""

from __future__ import annotations

import subprocess
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import soxr
from prometheus_client import CollectorRegistry

from pipeline.metrics import Metrics

if TYPE_CHECKING:
    from pipeline.asr import WhisperAsr
    from pipeline.llm import LlamaCppEngine
    from pipeline.tts import PiperTts
    from tests.pipeline.fake_ollama import FakeOllama


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture(scope="session")
def whisper_asr() -> WhisperAsr:
    from pipeline.asr import WhisperAsr

    return WhisperAsr()


@pytest.fixture(scope="session")
def piper_tts() -> PiperTts:
    from pipeline.tts import PiperTts

    return PiperTts()


@pytest.fixture(scope="session")
def llama_llm() -> LlamaCppEngine:
    from pipeline.llm import LlamaCppEngine

    return LlamaCppEngine()


def to_16k(pcm: bytes, rate: int) -> bytes:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    out = soxr.resample(samples, rate, 16000)
    return (np.clip(out, -1.0, 1.0) * 32767).astype("<i2").tobytes()


@pytest.fixture(scope="session")
def piper_speech_16k(piper_tts: PiperTts) -> Callable[[str], bytes]:
    """Text -> 16 kHz PCM spoken by the packaged Piper voice, cached per text."""
    cache: dict[str, bytes] = {}

    def speak(text: str) -> bytes:
        if text not in cache:
            pcm = b"".join(piper_tts.synthesize(text))
            cache[text] = to_16k(pcm, piper_tts.sample_rate)
        return cache[text]

    return speak


@pytest.fixture(scope="session")
def espeak_speech_16k(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], bytes]:
    """Text -> 16 kHz PCM spoken by espeak-ng: a second, unrelated voice."""
    folder: Path = tmp_path_factory.mktemp("espeak")

    def speak(text: str) -> bytes:
        path = folder / f"{abs(hash(text))}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        with wave.open(str(path)) as w:
            return to_16k(w.readframes(w.getnframes()), w.getframerate())

    return speak


@pytest.fixture(scope="session")
def fake_ollama() -> Iterator[FakeOllama]:
    from tests.pipeline.fake_ollama import FakeOllama

    server = FakeOllama()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ollama_server(fake_ollama: FakeOllama) -> FakeOllama:
    """The shared fake, reset to its default behaviour for each test."""
    fake_ollama.reset()
    return fake_ollama
