"""Text to speech: Piper in-process on the packaged voice, or a Coqui TTS server.

An engine turns text into int16 mono PCM at its `sample_rate`, yielded piece by piece
(one piece per sentence) so the first audio leaves while the rest is synthesized. The
door resamples once from that rate to its wire rate. One engine per process, shared by
all calls through a ModelWorker; Piper's ONNX session is thread-safe.

PhraseCache keeps the fixed phrases (greeting, apology, "please hold", fillers)
synthesized once, so they play at once and cost nothing when the workers are busy.
"""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
import wave
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipeline import models
from pipeline.chunking import ClauseChunker, sanitize_for_speech

log = logging.getLogger(__name__)


class TtsError(RuntimeError):
    """A TTS engine could not produce audio."""


class TtsEngine(Protocol):
    name: str
    sample_rate: int

    def synthesize(self, text: str) -> Iterator[bytes]:
        """int16 mono PCM at sample_rate, one piece per sentence, as soon as each is made."""
        ...

    def warm_up(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PiperSettings:
    onnx_path: Path | None = None  # None: the packaged en_US-joe-medium
    config_path: Path | None = None  # None: onnx_path + ".json"
    threads: int = 1  # ONNX Runtime intra-op threads
    length_scale: float | None = None  # speaking rate: < 1 faster; None: the voice's own
    volume: float = 0.8  # Piper peak-normalizes each sentence; leave headroom for G.711


class PiperTts:
    def __init__(self, settings: PiperSettings | None = None) -> None:
        import onnxruntime
        from piper import PiperConfig, PiperVoice, SynthesisConfig

        self.settings = s = settings or PiperSettings()
        if s.onnx_path is None:
            files = models.piper_voice_files()
            onnx, config = files.onnx, files.config
        else:
            onnx = s.onnx_path
            config = s.config_path or onnx.with_name(onnx.name + ".json")
        with open(config, encoding="utf-8") as f:
            piper_config = PiperConfig.from_dict(json.load(f))
        # PiperVoice.load() gives ONNX Runtime every core; a shared 2-core box needs a say.
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = s.threads
        opts.inter_op_num_threads = 1
        # Each new input length (every sentence) would add a planned memory pattern that
        # is never freed: RSS grew ~100 MB in a 10-minute soak. Off, it plateaus (same CPU).
        opts.enable_mem_pattern = False
        session = onnxruntime.InferenceSession(
            str(onnx), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._voice = PiperVoice(session=session, config=piper_config)
        self._syn = SynthesisConfig(length_scale=s.length_scale, volume=s.volume)
        self.sample_rate: int = piper_config.sample_rate
        self.name = f"piper:{Path(onnx).stem}"

    def synthesize(self, text: str) -> Iterator[bytes]:
        text = sanitize_for_speech(text)
        if not text:
            return
        for chunk in self._voice.synthesize(text, syn_config=self._syn):
            yield chunk.audio_int16_bytes

    def warm_up(self) -> None:
        for _ in self.synthesize("Hello."):
            pass


@dataclass(frozen=True, slots=True)
class CoquiSettings:
    base_url: str = "http://127.0.0.1:5002"
    sample_rate: int = 22050  # what the server's model produces; checked on every reply
    speaker_id: str = ""
    language_id: str = ""
    timeout_s: float = 10.0


class CoquiHttpEngine:
    """A Coqui TTS server (`tts-server`): GET /api/tts?text=... answers a WAV file.
    Text is sent a sentence at a time so the first audio arrives early."""

    def __init__(self, settings: CoquiSettings | None = None) -> None:
        self.settings = settings or CoquiSettings()
        self.sample_rate = self.settings.sample_rate
        self.name = "coqui:" + urllib.parse.urlsplit(self.settings.base_url).netloc

    def synthesize(self, text: str) -> Iterator[bytes]:
        chunker = ClauseChunker()
        sentences = chunker.push(sanitize_for_speech(text) + " ")
        if (rest := chunker.flush()) is not None:
            sentences.append(rest)
        for sentence in sentences:
            yield self._fetch(sentence)

    def warm_up(self) -> None:
        self._fetch("Hello.")

    def _fetch(self, text: str) -> bytes:
        s = self.settings
        query = {
            "text": text,
            "speaker_id": s.speaker_id,
            "style_wav": "",
            "language_id": s.language_id,
        }
        url = s.base_url.rstrip("/") + "/api/tts?" + urllib.parse.urlencode(query)
        try:
            with urllib.request.urlopen(url, timeout=s.timeout_s) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            raise TtsError(f"Coqui TTS at {s.base_url} answered HTTP {e.code}") from e
        except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
            raise TtsError(f"Coqui TTS at {s.base_url} unreachable: {e}") from e
        return self._pcm_from_wav(body)

    def _pcm_from_wav(self, body: bytes) -> bytes:
        try:
            with wave.open(io.BytesIO(body)) as w:
                rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
                frames = w.readframes(w.getnframes())
        except (wave.Error, EOFError) as e:
            raise TtsError(f"Coqui TTS sent a malformed WAV ({len(body)} bytes): {e}") from e
        if (rate, width, channels) != (self.sample_rate, 2, 1):
            raise TtsError(
                f"Coqui TTS sent {rate} Hz, {8 * width}-bit, {channels} channel(s); "
                f"expected {self.sample_rate} Hz 16-bit mono (set CoquiSettings.sample_rate)"
            )
        return frames


DEFAULT_PHRASES: Mapping[str, str] = {
    "greeting": "Hello, thanks for calling. How can I help you?",
    "apology": "Sorry, I didn't catch that. Could you say it again?",
    "please_hold": "One moment please.",
    "error": "Sorry, something went wrong on my side. Please try again later.",
    "goodbye": "Thanks for calling. Goodbye.",
    "filler_hmm": "Hmm.",
    "filler_okay": "Okay.",
    "filler_let_me_see": "Let me see.",
}


class PhraseCache:
    """Fixed phrases synthesized once (warm(), in a worker at start-up) and kept as PCM
    at the engine's rate. get() is cheap and safe on the event loop."""

    def __init__(self, engine: TtsEngine, phrases: Mapping[str, str] | None = None) -> None:
        self.engine = engine
        self.sample_rate = engine.sample_rate
        self.phrases = dict(DEFAULT_PHRASES if phrases is None else phrases)
        self._pcm: dict[str, bytes] = {}

    def warm(self) -> None:
        """Synthesize every phrase not cached yet. Blocking: run it in a worker."""
        for key, text in self.phrases.items():
            if key not in self._pcm:
                self._pcm[key] = b"".join(self.engine.synthesize(text))

    def add(self, key: str, text: str) -> bytes:
        """Synthesize and keep one more phrase (an agent's own greeting). Blocking."""
        self.phrases[key] = text
        pcm = self._pcm[key] = b"".join(self.engine.synthesize(text))
        return pcm

    def get(self, key: str) -> bytes:
        try:
            return self._pcm[key]
        except KeyError:
            known = ", ".join(sorted(self._pcm)) or "none (warm() not run)"
            raise KeyError(f"phrase {key!r} is not cached; cached: {known}") from None

    def text(self, key: str) -> str:
        return self.phrases[key]

    def __contains__(self, key: object) -> bool:
        return key in self._pcm
