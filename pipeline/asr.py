"""Speech to text: faster-whisper on the packaged Whisper tiny.en (CTranslate2).

One WhisperAsr per process, shared by all calls through a ModelWorker; transcribe() is
blocking and thread-safe (CTranslate2 releases the GIL; give it num_workers >= the
worker's thread count to run calls in parallel).

Utterances arrive already cut by our own VAD, so Whisper's VAD and timestamps are off,
decoding is greedy, and nothing is carried between calls. Whisper invents text on
silence and noise ("Thank you.", "Thanks for watching!"), so results pass a guard:
dropped when the model itself thinks there was no speech and is unsure of its words,
when nothing speakable is left, or when a known phantom phrase comes from quiet audio.

Whisper's encoder always sees a 30 s window, zero-padded; for a 2 s question that
padding is most of the ASR time (tiny.en int8, 2 cores: encoder 226 ms of a 340 ms
transcribe). Like whisper.cpp's `audio_ctx`, we cut the window to `min_window_s` (or the
utterance plus 2 s, if longer): at 10 s the encoder costs ~40 ms. Shorter windows are
faster still but lose the last word of short utterances and loop on repeats more often;
on our 60-utterance phone-line set (espeak-ng through 8 kHz and Piper) the word error
rate was 0.20 at 10 s vs 0.25 with the full window, 0.53 at speech + 2 s. A token cap
scaled to the utterance's length bounds what a repetition loop can cost.
"""

from __future__ import annotations

import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline import models

SAMPLE_RATE = 16000


@dataclass(frozen=True, slots=True)
class AsrResult:
    text: str  # "" when nothing was said (or the guard dropped it)
    no_speech_prob: float
    avg_logprob: float
    duration: float  # seconds of audio transcribed
    language: str
    dropped: str = ""  # why the guard emptied the text: "no_speech", "phantom", ...


@dataclass(frozen=True, slots=True)
class WhisperSettings:
    model_path: Path | None = None  # None: the packaged tiny.en
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 2
    num_workers: int = 1  # parallel transcribe() calls CTranslate2 accepts
    language: str = "en"
    # Hallucination guard.
    no_speech_threshold: float = 0.6  # drop if no_speech_prob is above this ...
    logprob_threshold: float = -1.0  # ... and avg_logprob below this
    quiet_dbfs: float = -35.0  # a phantom phrase from audio quieter than this is dropped
    silence_dbfs: float = -70.0  # audio quieter than this is not even transcribed
    min_duration_s: float = 0.1
    max_prompt_chars: int = 200
    # Encoder window: at least this long (and the utterance + 2 s); None: Whisper's 30 s.
    min_window_s: float | None = 10.0
    max_tokens_per_s: float = 10.0  # speech is ~4 tokens/s; more is a repetition loop


class AsrEngine(Protocol):
    name: str

    def transcribe(self, pcm16k: bytes, hint: str | None = None) -> AsrResult: ...

    def warm_up(self) -> None: ...


# What Whisper says over silence, music and line noise (learned from YouTube subtitles).
PHANTOM_PHRASES = frozenset(
    {
        "thank you", "thank you very much", "thanks", "thanks for watching",
        "thank you for watching", "thanks for watching and see you next time",
        "thanks for listening", "thank you for listening", "please subscribe",
        "subscribe to my channel", "like and subscribe", "see you next time",
        "bye", "bye bye", "goodbye", "you", "so", "oh", "uh", "um", "hmm", "okay",
        "the end", "silence", "music", "applause", "laughter", "foreign",
        "subtitles by the amaraorg community",
    }
)
_ANNOTATION = re.compile(r"^\s*[\[(*♪].*[\])*♪]\s*$")  # "[BLANK_AUDIO]", "(music)", "♪ ♪"
_NON_WORD = re.compile(r"[^\w\s']+")


def _normalized(text: str) -> str:
    return " ".join(_NON_WORD.sub("", text.lower()).split())


def speech_level_dbfs(samples: np.ndarray, frame: int = SAMPLE_RATE // 50) -> float:
    """Level of the loud part of an utterance, in dBFS: the 90th percentile of the 20 ms
    frame RMS values, so the silence the VAD leaves around speech does not pull it down
    and a single click does not push it up."""
    n = samples.size // frame
    if n == 0:
        frames = samples[None, :] if samples.size else np.zeros((1, 1), np.float32)
    else:
        frames = samples[: n * frame].reshape(n, frame)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    level = float(np.percentile(rms, 90))
    return 20.0 * math.log10(level) if level > 0 else -math.inf


def guard(
    text: str, no_speech_prob: float, avg_logprob: float, level_dbfs: float, s: WhisperSettings
) -> str:
    """Why a transcript must be dropped ("" to keep it)."""
    if no_speech_prob > s.no_speech_threshold and avg_logprob < s.logprob_threshold:
        return "no_speech"
    if _ANNOTATION.match(text):
        return "annotation"
    norm = _normalized(text)
    if not norm:
        return "empty"
    if norm in PHANTOM_PHRASES and level_dbfs < s.quiet_dbfs:
        return "phantom"
    return ""


FEATURE_FRAMES_PER_S = 100  # Whisper's log-mel hop: 10 ms
FULL_WINDOW_FRAMES = 3000  # 30 s
_WINDOW_PADDING_S = 2.0  # silence after the speech, so the decoder sees it end


def encoder_frames(duration_s: float, min_window_s: float | None) -> int:
    """How many log-mel frames the encoder sees for an utterance of `duration_s`: at
    least `min_window_s`, else the utterance plus 2 s in whole seconds; at most 30 s."""
    if min_window_s is None:
        return FULL_WINDOW_FRAMES
    seconds = max(min_window_s, math.ceil(duration_s + _WINDOW_PADDING_S))
    return min(FULL_WINDOW_FRAMES, round(seconds * FEATURE_FRAMES_PER_S))


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    if len(pcm) % 2:
        raise ValueError(f"PCM16 audio must have an even byte count, got {len(pcm)}")
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


class WhisperAsr:
    """faster-whisper on a local CTranslate2 model directory (never the hub)."""

    def __init__(self, settings: WhisperSettings | None = None) -> None:
        # Belt and braces: the local path below already keeps faster-whisper offline.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel  # heavy import, paid only when used

        self.settings = s = settings or WhisperSettings()
        path = s.model_path or models.whisper_model_dir()
        if not (Path(path) / "model.bin").is_file():
            raise models.ModelNotInstalled(f"no CTranslate2 Whisper model.bin in {path}")
        self.name = f"whisper:{Path(path).name}"
        self._model = _windowed_model_class(WhisperModel)(
            str(path),
            device=s.device,
            compute_type=s.compute_type,
            cpu_threads=s.cpu_threads,
            num_workers=s.num_workers,
            local_files_only=True,
        )

    def warm_up(self) -> None:
        """One decode of quiet noise, so the first caller does not pay for lazy setup."""
        noise = np.random.default_rng(0).normal(0, 0.003, SAMPLE_RATE).astype(np.float32)
        self._decode(noise, None)

    def transcribe(self, pcm16k: bytes, hint: str | None = None) -> AsrResult:
        """Transcribe one utterance of 16 kHz mono int16 PCM. `hint`: words likely to be
        said (names, products), given to Whisper as its prompt."""
        s = self.settings
        audio = pcm16_to_float(pcm16k)
        duration = audio.size / SAMPLE_RATE
        level = speech_level_dbfs(audio)
        if duration < s.min_duration_s:
            return AsrResult("", 1.0, 0.0, duration, s.language, dropped="too_short")
        if level < s.silence_dbfs:
            return AsrResult("", 1.0, 0.0, duration, s.language, dropped="silence")
        text, no_speech, logprob, language = self._decode(audio, hint)
        why = guard(text, no_speech, logprob, level, s)
        return AsrResult("" if why else text, no_speech, logprob, duration, language, why)

    def _decode(self, audio: np.ndarray, hint: str | None) -> tuple[str, float, float, str]:
        s = self.settings
        prompt = " ".join(hint.split())[: s.max_prompt_chars] if hint else None
        duration = audio.size / SAMPLE_RATE
        self._model.window.frames = encoder_frames(duration, s.min_window_s)
        segments, info = self._model.transcribe(
            audio,
            language=s.language,
            beam_size=1,
            best_of=1,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
            initial_prompt=prompt or None,
            max_new_tokens=round(duration * s.max_tokens_per_s) + 10,
            # Our guard decides on the numbers, so Whisper's own skip rule is off.
            no_speech_threshold=None,
            log_prob_threshold=None,
        )
        texts: list[str] = []
        weight = no_speech = logprob = 0.0
        for seg in segments:  # a lazy generator: decoding happens here
            n = max(len(seg.tokens), 1)
            texts.append(seg.text.strip())
            weight += n
            no_speech += seg.no_speech_prob * n
            logprob += seg.avg_logprob * n
        if not weight:
            return "", 1.0, 0.0, info.language
        return " ".join(t for t in texts if t), no_speech / weight, logprob / weight, info.language


def _windowed_model_class(base: type) -> type:
    """faster-whisper's WhisperModel whose encoder sees only the first `window.frames`
    feature frames of each (already 30 s, zero-padded) segment. The frame count is
    per thread, so concurrent transcribe() calls from a worker pool don't mix."""

    class WindowedWhisperModel(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            self.window = threading.local()

        def encode(self, features: np.ndarray):  # type: ignore[no-untyped-def]
            frames = getattr(self.window, "frames", FULL_WINDOW_FRAMES)
            if features.shape[-1] > frames:
                features = np.ascontiguousarray(features[..., :frames])
            return super().encode(features)

    return WindowedWhisperModel
