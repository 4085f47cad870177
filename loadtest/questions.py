"""Short caller questions for the latency benchmark, spoken as a phone line carries them.

QUESTIONS are what a call-centre bot hears all day (hours, bookings, orders, prices,
"can I speak to a person"); INTERRUPTIONS are what a caller says over the bot. Each text
is synthesized once with espeak-ng (several voices and speeds, so the VAD and Whisper do
not hear one voice all day) or, where espeak-ng is not installed, with the packaged Piper
voice; the speech is trimmed to its voiced part, resampled to 8 kHz mono int16 and
cached as a WAV in a temp dir keyed by engine, voice, speed and text.

    clip = speak("What time do you open on Saturday?", VOICES[0])   # 8 kHz int16
    pcm = compose([(4.0, clip)], tail_s=0.5)       # 4 s of silence, then the question
    write_wav(path, pcm)
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["INTERRUPTIONS", "QUESTIONS", "RATE", "VOICES", "SpeechError", "Voice", "compose",
           "default_cache_dir", "question", "speak", "write_wav"]

RATE = 8000  # what a G.711 call carries
_TRIM_DBFS = -45.0  # frames quieter than this at either end are cut off
_MARGIN_S = 0.02  # kept around the voiced part, so no syllable is clipped

QUESTIONS: tuple[str, ...] = (
    "What time do you open on Saturday?",
    "Are you open on Sunday?",
    "What are your opening hours today?",
    "I'd like to book a table for two tonight.",
    "Can I make an appointment for next Tuesday?",
    "I need to change my booking.",
    "Where is my order?",
    "My parcel hasn't arrived yet.",
    "Can you check the status of order one two three four?",
    "What is your address?",
    "Where can I park near the shop?",
    "How much does a haircut cost?",
    "What are your prices for delivery?",
    "Do you have any discounts for students?",
    "Can I speak to a person please?",
    "I want to talk to a real human.",
    "How do I return an item?",
    "Can I get a refund?",
    "Do you deliver on weekends?",
    "Is there a phone number for the manager?",
    "How long does shipping take?",
    "Do you take credit cards?",
    "I forgot my password, can you help?",
    "Is the store wheelchair accessible?",
)

# Said over the bot; none of them reads as a goodbye (that would end the call).
INTERRUPTIONS: tuple[str, ...] = (
    "Wait, wait, I need to talk to a person please.",
    "Sorry, stop, that is not what I asked.",
    "Hold on, can I ask something else?",
    "No, I want to cancel my order.",
    "Excuse me, what was the price again?",
    "Actually, I need to change my address.",
)


@dataclass(frozen=True, slots=True)
class Voice:
    """An espeak-ng voice (language plus variant) and its speed in words per minute."""

    name: str
    speed: int


VOICES: tuple[Voice, ...] = (
    Voice("en-us", 155),
    Voice("en-gb", 165),
    Voice("en-us+f3", 150),
    Voice("en-gb-x-rp+m3", 160),
    Voice("en-us+f2", 170),
    Voice("en-gb-scotland", 150),
)


class SpeechError(RuntimeError):
    """A question could not be synthesized (no engine, or the engine failed)."""


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "switchboard-loadtest-speech"


def question(index: int) -> tuple[str, Voice]:
    """The index-th question of a run and the voice that asks it: every question once
    before any repeats, each in a different voice from its neighbours."""
    return QUESTIONS[index % len(QUESTIONS)], VOICES[index % len(VOICES)]


def speak(text: str, voice: Voice, *, cache_dir: Path | None = None,
          engine: str = "auto") -> np.ndarray:
    """`text` spoken, trimmed to its voiced part, as 8 kHz int16. engine: "espeak",
    "piper" or "auto" (espeak-ng when installed, else Piper)."""
    if engine == "auto":
        engine = "espeak" if shutil.which("espeak-ng") else "piper"
    if engine not in ("espeak", "piper"):
        raise SpeechError(f"unknown speech engine {engine!r}; use espeak, piper or auto")
    cache = cache_dir or default_cache_dir()
    key = hashlib.sha1(f"{engine}|{voice.name}|{voice.speed}|{text}".encode()).hexdigest()[:16]
    path = cache / f"{engine}-{key}.wav"
    if path.exists():
        return _read_wav(path)
    pcm, rate = _espeak(text, voice) if engine == "espeak" else _piper(text)
    clip = _trim(_resample(pcm, rate, RATE))
    if not len(clip):
        raise SpeechError(f"{engine} produced no audible speech for {text!r}")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    write_wav(tmp, clip)
    tmp.replace(path)  # atomic: concurrent runs never read half a file
    return clip


def compose(parts: Sequence[tuple[float, np.ndarray]], tail_s: float = 0.0) -> np.ndarray:
    """Silence with each clip placed at its start time (seconds), then `tail_s` more."""
    end = max((round(at * RATE) + len(clip) for at, clip in parts), default=0)
    out = np.zeros(end + round(tail_s * RATE), dtype=np.int16)
    for at, clip in parts:
        start = round(at * RATE)
        out[start:start + len(clip)] = clip
    return out


def write_wav(path: Path, pcm: np.ndarray, rate: int = RATE) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        if (w.getnchannels(), w.getsampwidth()) != (1, 2):
            raise SpeechError(f"{path}: not 16-bit mono")
        data = w.readframes(w.getnframes())
        rate = w.getframerate()
    return _resample(np.frombuffer(data, dtype="<i2"), rate, RATE)


def _espeak(text: str, voice: Voice) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        cmd = ["espeak-ng", "-v", voice.name, "-s", str(voice.speed), "-w", str(out), text]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as e:
            raise SpeechError(f"espeak-ng failed for {text!r} ({voice.name}): {e}") from None
        with wave.open(str(out), "rb") as w:
            return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


@functools.lru_cache(maxsize=1)
def _piper_engine():  # type: ignore[no-untyped-def]
    from pipeline.tts import PiperTts  # loads an ONNX model: only when espeak-ng is missing

    return PiperTts()


def _piper(text: str) -> tuple[np.ndarray, int]:
    tts = _piper_engine()
    pcm = b"".join(tts.synthesize(text))
    return np.frombuffer(pcm, dtype="<i2"), tts.sample_rate


def _resample(pcm: np.ndarray, rate: int, to: int) -> np.ndarray:
    if rate == to:
        return pcm.astype(np.int16)
    import soxr

    out = soxr.resample(pcm.astype(np.float32), rate, to, quality="HQ")
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def _trim(pcm: np.ndarray) -> np.ndarray:
    """Cut silence at both ends (20 ms frames below _TRIM_DBFS), keeping a small margin."""
    n = RATE // 50
    frames = len(pcm) // n
    if not frames:
        return pcm[:0]
    x = pcm[: frames * n].astype(np.float64).reshape(frames, n)
    level = 20 * np.log10(np.maximum(np.sqrt((x * x).mean(axis=1)), 1e-3) / 32768)
    loud = np.flatnonzero(level > _TRIM_DBFS)
    if not len(loud):
        return pcm[:0]
    margin = round(_MARGIN_S * RATE)
    start = max(0, loud[0] * n - margin)
    end = min(len(pcm), (loud[-1] + 1) * n + margin)
    return pcm[start:end].astype(np.int16)
