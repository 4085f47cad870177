"""One target under atheris: `python -m fuzz._child TARGET [libFuzzer flags] [corpus dirs]`.

`python -m fuzz` starts this once per target in its own process: libFuzzer ends the
process on the first crash, and that must not end the whole run.
"""

from __future__ import annotations

import importlib
import os
import sys

import atheris

from fuzz import INSTRUMENTED, ROOT

DEFAULT_MAX_LEN = 8192


def main(argv: list[str]) -> None:
    name, flags = argv[1], argv[2:]
    # Only modules imported inside this block get coverage counters: the parsers.
    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        module = importlib.import_module(f"fuzz.{name}")
    if not any(flag.startswith("-max_len=") for flag in flags):
        flags.insert(0, f"-max_len={getattr(module, 'MAX_LEN', DEFAULT_MAX_LEN)}")
    if any(os.path.isdir(arg) for arg in flags):  # fuzzing a corpus, not replaying a file
        flags += [str(ROOT / extra) for extra in getattr(module, "MORE_SEEDS", ())]
    atheris.Setup([argv[0], *flags], module.test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
