"""Subprocesses the tests start (`switchboard serve`, `python -m loadtest...`) import this
checkout, even when it is a git worktree beside the one the venv was installed from."""

import os
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_ROOT, os.environ.get("PYTHONPATH", "")) if p
)
