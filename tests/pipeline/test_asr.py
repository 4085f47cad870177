from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline import models
from pipeline.asr import (
    AsrResult,
    WhisperAsr,
    WhisperSettings,
    guard,
    pcm16_to_float,
    speech_level_dbfs,
)
from pipeline.models import ModelNotInstalled

S = WhisperSettings()


def pcm(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def noise(seconds: float, dbfs: float, seed: int = 1) -> bytes:
    rms = 10 ** (dbfs / 20)
    return pcm(np.random.default_rng(seed).normal(0, rms, int(16000 * seconds)))


# --- the guard, pure ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "no_speech", "logprob", "level", "why"),
    [
        ("Book a table for two.", 0.05, -0.3, -25.0, ""),
        ("Book a table for two.", 0.9, -0.3, -25.0, ""),  # sure of its words: kept
        ("Book a table for two.", 0.9, -1.4, -25.0, "no_speech"),
        (" .", 0.2, -0.5, -25.0, "empty"),
        ("[BLANK_AUDIO]", 0.2, -0.5, -25.0, "annotation"),
        ("(music)", 0.2, -0.5, -25.0, "annotation"),
        ("Thank you.", 0.3, -0.6, -50.0, "phantom"),
        ("Thanks for watching!", 0.3, -0.6, -45.0, "phantom"),
        ("Thank you.", 0.3, -0.6, -22.0, ""),  # said out loud: kept
        ("Thank you, that's all.", 0.3, -0.6, -50.0, ""),  # more than the phantom
    ],
)
def test_guard(text: str, no_speech: float, logprob: float, level: float, why: str) -> None:
    assert guard(text, no_speech, logprob, level, S) == why


def test_speech_level_ignores_surrounding_silence() -> None:
    tone = 0.1 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)  # -23 dBFS RMS
    padded = np.concatenate([np.zeros(16000), tone, np.zeros(16000)])
    assert speech_level_dbfs(tone) == pytest.approx(-23.0, abs=0.2)
    assert speech_level_dbfs(padded) == pytest.approx(-23.0, abs=0.2)
    assert speech_level_dbfs(np.zeros(320)) == -math.inf
    assert speech_level_dbfs(np.zeros(0)) == -math.inf


def test_pcm16_to_float_rejects_odd_bytes() -> None:
    with pytest.raises(ValueError, match="even byte count"):
        pcm16_to_float(b"\x00\x01\x02")
    assert pcm16_to_float(b"\x00\x80").tolist() == [-1.0]


# --- the real model -----------------------------------------------------------------


def words(result: AsrResult) -> set[str]:
    return {w.strip(".,!?").lower() for w in result.text.split()}


@pytest.mark.slow
def test_transcribes_a_piper_sentence(
    whisper_asr: WhisperAsr, piper_speech_16k: Callable[[str], bytes]
) -> None:
    audio = piper_speech_16k("I would like to book a table for dinner tomorrow.")
    result = whisper_asr.transcribe(audio)
    assert {"book", "table", "dinner", "tomorrow"} <= words(result), result
    assert result.dropped == ""
    assert result.language == "en"
    assert result.duration == pytest.approx(len(audio) / 32000)
    assert result.no_speech_prob < 0.5 and result.avg_logprob > -1.0


@pytest.mark.slow
def test_transcribes_espeak_with_silence_around(
    whisper_asr: WhisperAsr, espeak_speech_16k: Callable[[str], bytes]
) -> None:
    speech = espeak_speech_16k("Please call me back this afternoon.")
    silence = bytes(16000)  # half a second either side, as the VAD leaves it
    result = whisper_asr.transcribe(silence + speech + silence)
    assert {"call", "back", "afternoon"} <= words(result), result


@pytest.mark.slow
def test_hint_steers_spelling(
    whisper_asr: WhisperAsr, piper_speech_16k: Callable[[str], bytes]
) -> None:
    audio = piper_speech_16k("My name is Kowalczyk.")
    hinted = whisper_asr.transcribe(audio, hint="Kowalczyk")
    assert "kowalczyk" in words(hinted), hinted


@pytest.mark.slow
@pytest.mark.parametrize(
    ("audio", "why"),
    [
        (bytes(32000), {"silence"}),  # digital silence is not even decoded
        (noise(1.0, -60), {"no_speech", "empty", "phantom"}),
        (noise(1.0, -40), {"no_speech", "empty", "phantom"}),
        (noise(1.5, -25, seed=7), {"no_speech", "empty", "phantom", "annotation"}),
        (bytes(1000), {"too_short"}),
    ],
    ids=["digital-silence", "noise-60dB", "noise-40dB", "noise-25dB", "too-short"],
)
def test_silence_and_noise_give_nothing(
    whisper_asr: WhisperAsr, audio: bytes, why: set[str]
) -> None:
    result = whisper_asr.transcribe(audio)
    assert result.text == ""
    assert result.dropped in why, result


# --- finding the packaged models (pipeline.models) ---------------------------------


def test_missing_model_package_is_named() -> None:
    with pytest.raises(ModelNotInstalled, match=r"'no-such-models' \(import name 'no_such_mod"):
        models.package_dir("no_such_models_pkg", "no-such-models")


def test_package_without_a_gguf_is_named() -> None:
    with pytest.raises(ModelNotInstalled, match=r"'json-pkg' is installed at .* no \.gguf file"):
        models.gguf_model("json", "json-pkg")


def test_packaged_model_files_are_found() -> None:
    assert (models.whisper_model_dir() / "model.bin").is_file()
    voice = models.piper_voice_files()
    assert voice.onnx.suffix == ".onnx" and voice.config.name.endswith(".onnx.json")
    assert models.gguf_model().name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_whisper_refuses_a_directory_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotInstalled, match=r"no CTranslate2 Whisper model\.bin"):
        WhisperAsr(WhisperSettings(model_path=tmp_path))


def test_encoder_window_is_the_minimum_or_the_utterance_plus_two_seconds():
    from pipeline.asr import FULL_WINDOW_FRAMES, encoder_frames

    assert encoder_frames(2.3, 10.0) == 1000
    assert encoder_frames(8.5, 10.0) == 1100  # 8.5 s + 2 s, in whole seconds
    assert encoder_frames(2.3, 4.0) == 500
    assert encoder_frames(29.0, 10.0) == FULL_WINDOW_FRAMES  # never more than Whisper's 30 s
    assert encoder_frames(2.3, None) == FULL_WINDOW_FRAMES


@pytest.mark.slow
def test_the_encoder_sees_the_short_window_and_still_hears_the_words(
    whisper_asr: WhisperAsr, piper_speech_16k: Callable[[str], bytes]
) -> None:
    from pipeline.asr import encoder_frames

    audio = piper_speech_16k("I would like to book a table for dinner tomorrow.")
    seen: list[int] = []
    model = whisper_asr._model
    real_encode = type(model).__mro__[1].encode  # faster-whisper's own encode

    def spy(self, features):  # type: ignore[no-untyped-def]
        seen.append(features.shape[-1])
        return real_encode(self, features)

    type(model).__mro__[1].encode, saved = spy, real_encode
    try:
        result = whisper_asr.transcribe(audio)
    finally:
        type(model).__mro__[1].encode = saved
    assert seen == [encoder_frames(len(audio) / 32000, 10.0)]
    assert seen[0] < 3000  # not Whisper's 30 s
    assert {"book", "table", "dinner", "tomorrow"} <= words(result), result
