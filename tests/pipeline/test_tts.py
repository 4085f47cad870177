from __future__ import annotations

import io
import threading
import urllib.parse
import wave
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from pipeline.tts import CoquiHttpEngine, CoquiSettings, PhraseCache, PiperTts, TtsError


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def voiced_seconds(pcm: bytes, rate: int) -> float:
    """Seconds of 20 ms frames louder than -40 dBFS."""
    x = samples(pcm)
    frame = rate // 50
    n = x.size // frame
    rms = np.sqrt(np.mean(np.square(x[: n * frame].reshape(n, frame)), axis=1))
    return float(np.count_nonzero(rms > 0.01)) * 0.02


# --- Piper, the real voice -------------------------------------------------------------


@pytest.mark.slow
def test_piper_speaks_a_sentence_at_its_rate(piper_tts: PiperTts) -> None:
    assert piper_tts.sample_rate == 22050
    pcm = b"".join(piper_tts.synthesize("Your appointment is on Friday at ten in the morning."))
    assert len(pcm) % 2 == 0
    seconds = len(pcm) / 2 / piper_tts.sample_rate
    # 10 words at a normal speaking rate (2 to 4 words a second).
    assert 2.0 < seconds < 5.5
    assert voiced_seconds(pcm, piper_tts.sample_rate) > 0.6 * seconds
    peak = float(np.max(np.abs(samples(pcm))))
    assert 0.5 < peak <= 0.81  # normalized, with the configured headroom (volume 0.8)


@pytest.mark.slow
def test_piper_streams_one_piece_per_sentence(piper_tts: PiperTts) -> None:
    pieces = list(piper_tts.synthesize("Hello there. How are you today? Fine, thanks."))
    assert len(pieces) == 3
    assert all(len(p) > 0.3 * 2 * piper_tts.sample_rate for p in pieces)


@pytest.mark.slow
def test_piper_markdown_and_empty_text(piper_tts: PiperTts) -> None:
    assert list(piper_tts.synthesize("")) == []
    assert list(piper_tts.synthesize("**  **  😀")) == []
    plain = b"".join(piper_tts.synthesize("Good morning."))
    marked = b"".join(piper_tts.synthesize("**Good** morning. 😀"))
    # Same words, same length: the markup was not read aloud.
    assert abs(len(plain) - len(marked)) < 0.25 * len(plain)


@pytest.mark.slow
def test_phrase_cache_synthesizes_once(piper_tts: PiperTts) -> None:
    class Counting:
        name, sample_rate, calls = "counting", piper_tts.sample_rate, 0

        def synthesize(self, text: str) -> Iterator[bytes]:
            Counting.calls += 1
            return piper_tts.synthesize(text)

        def warm_up(self) -> None: ...

    cache = PhraseCache(Counting(), {"hold": "One moment please.", "hi": "Hello."})
    assert "hold" not in cache
    with pytest.raises(KeyError, match="warm"):
        cache.get("hold")
    cache.warm()
    cache.warm()
    assert Counting.calls == 2
    assert cache.get("hold") is cache.get("hold")
    assert len(cache.get("hold")) / 2 / cache.sample_rate > 0.5
    cache.add("bye", "Goodbye.")
    assert "bye" in cache and cache.text("bye") == "Goodbye."
    with pytest.raises(KeyError, match="'nope' is not cached; cached: bye, hi, hold"):
        cache.get("nope")


# --- Coqui, against a tiny fake of its HTTP API -------------------------------------


def wav_bytes(rate: int, n: int, channels: int = 1) -> bytes:
    t = np.arange(n) / rate
    pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(pcm, channels).tobytes())
    return buf.getvalue()


class FakeCoqui:
    """GET /api/tts?text=... -> WAV, as Coqui's tts-server answers."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.status = 200
        self.rate = 22050
        self.body: bytes | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                if url.path != "/api/tts" or "text" not in query:
                    self.send_error(404)
                    return
                fake.texts.append(query["text"][0])
                if fake.status != 200:
                    self.send_error(fake.status)
                    return
                words = len(query["text"][0].split())
                body = fake.body if fake.body is not None else wav_bytes(fake.rate, 5000 * words)
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()


@pytest.fixture
def coqui() -> Iterator[FakeCoqui]:
    fake = FakeCoqui()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_coqui_fetches_a_wav_per_sentence(coqui: FakeCoqui) -> None:
    engine = CoquiHttpEngine(CoquiSettings(base_url=coqui.url))
    pieces = list(engine.synthesize("Hello there, **friend**. How are you today?"))
    assert coqui.texts == ["Hello there, friend.", "How are you today?"]
    assert [len(p) for p in pieces] == [2 * 5000 * 3, 2 * 5000 * 4]
    assert engine.sample_rate == 22050 and engine.name.startswith("coqui:127.0.0.1:")


def test_coqui_rejects_a_rate_it_was_not_told(coqui: FakeCoqui) -> None:
    coqui.rate = 16000
    engine = CoquiHttpEngine(CoquiSettings(base_url=coqui.url))
    with pytest.raises(TtsError, match=r"sent 16000 Hz, 16-bit, 1 channel.*expected 22050 Hz"):
        engine.warm_up()


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (500, None, "answered HTTP 500"),
        (200, b"RIFF....not a wav", "malformed WAV"),
    ],
)
def test_coqui_errors(coqui: FakeCoqui, status: int, body: bytes | None, message: str) -> None:
    coqui.status, coqui.body = status, body
    with pytest.raises(TtsError, match=message):
        list(CoquiHttpEngine(CoquiSettings(base_url=coqui.url)).synthesize("Hi."))


def test_coqui_unreachable() -> None:
    engine = CoquiHttpEngine(CoquiSettings(base_url="http://127.0.0.1:9", timeout_s=2))
    with pytest.raises(TtsError, match="unreachable"):
        engine.warm_up()
