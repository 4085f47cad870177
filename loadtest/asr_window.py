"""Word error rate and time of Whisper with different encoder windows (asr.min_window_s).

    python -m loadtest.asr_window                      # 10 s vs the full 30 s window
    python -m loadtest.asr_window --windows 5 10 15 full

The utterances are loadtest.questions' QUESTIONS and INTERRUPTIONS, each spoken twice:
by espeak-ng through an 8 kHz phone line (upsampled back to 16 kHz, as calls reach
Whisper) and by the packaged Piper voice; each gets 200 ms of silence before it and the
VAD's 60 ms tail after it. Prints, per window: WER against the texts, p50/max transcribe
time, and how many transcripts ran into a repetition loop.
"""

from __future__ import annotations

import argparse
import re
import time
import zlib

import numpy as np
import soxr

from loadtest.questions import INTERRUPTIONS, QUESTIONS, VOICES, speak
from pipeline.asr import WhisperAsr, WhisperSettings
from pipeline.tts import PiperTts


def to_16k(pcm: bytes, rate: int) -> bytes:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    return (np.clip(soxr.resample(samples, rate, 16000), -1, 1) * 32767).astype("<i2").tobytes()


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[:], i
        for j, h in enumerate(hyp, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (r != h))
    return row[-1]


def looped(text: str) -> bool:
    """A transcript that compresses this well repeats itself (Whisper's own test)."""
    raw = text.encode()
    return len(raw) > 40 and len(raw) / len(zlib.compress(raw)) > 2.0


def utterances() -> list[tuple[str, bytes]]:
    tts = PiperTts()
    out = []
    lead, tail = bytes(int(0.2 * 32000)), bytes(int(0.06 * 32000))
    for i, text in enumerate(QUESTIONS + INTERRUPTIONS):
        phone = speak(text, VOICES[i % len(VOICES)]).astype(np.int16).tobytes()
        out.append((text, lead + to_16k(phone, 8000) + tail))
        piper = b"".join(tts.synthesize(text))
        out.append((text, lead + to_16k(piper, tts.sample_rate) + tail))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", nargs="+", default=["10", "full"],
                    help="min_window_s values in seconds, or 'full' for Whisper's 30 s")
    args = ap.parse_args(argv)
    clips = utterances()
    print(f"{len(clips)} utterances")
    for w in args.windows:
        asr = WhisperAsr(WhisperSettings(min_window_s=None if w == "full" else float(w)))
        asr.warm_up()
        errors = total = loops = 0
        times = []
        for text, audio in clips:
            t0 = time.perf_counter()
            result = asr.transcribe(audio)
            times.append(time.perf_counter() - t0)
            ref = words(text)
            errors += edit_distance(ref, words(result.text))
            total += len(ref)
            loops += looped(result.text)
        ms = np.array(times) * 1000
        print(f"window {w:>4}: WER {errors / total:.3f}  transcribe p50 {np.median(ms):.0f} ms"
              f"  max {ms.max():.0f} ms  loops {loops}")


if __name__ == "__main__":
    main()
