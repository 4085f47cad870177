"""Coverage-guided fuzzing of every parser that reads bytes from the network (atheris).

Each target is one module here, named like the parser it feeds (sip_message.py, rtp.py,
...), exposing `test_one_input(data: bytes)`: it calls the parser and lets only that
parser's documented error pass, so anything else escaping is a bug. Seeds live in
fuzz/corpus/<target>/. `python -m fuzz` runs them (see fuzz/README.md). Modules whose
names start with "_" are the harness, not targets.

This package imports nothing from the project at import time, so that the child process
can import the parsers under `atheris.instrument_imports()`.
"""

from __future__ import annotations

from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
ROOT = FUZZ_DIR.parent
CORPUS_DIR = FUZZ_DIR / "corpus"
REGRESSIONS_DIR = ROOT / "tests" / "fuzz" / "regressions"
# Packages instrumented for coverage when a target is imported in the child process.
INSTRUMENTED = ("fuzz", "sip", "media", "streams", "dialplan")


def target_names() -> list[str]:
    """Every target: the modules of this package not starting with "_"."""
    return sorted(p.stem for p in FUZZ_DIR.glob("*.py") if not p.stem.startswith("_"))
