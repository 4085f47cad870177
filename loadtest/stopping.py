"""SIGTERM ends a benchmark the way Ctrl-C does.

A benchmark that starts its own server stops it in a `finally`. Python's default for
SIGTERM (what `kill` and `pkill` send) is to die at once, with no `finally` run, which
leaves the server (and its stream workers) running and eating the CPU of the next
measurement. Turning SIGTERM into KeyboardInterrupt unwinds the stack instead.
"""

from __future__ import annotations

import signal
from types import FrameType

__all__ = ["end_on_sigterm"]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def end_on_sigterm() -> None:
    """From now on SIGTERM raises KeyboardInterrupt in the main thread."""
    signal.signal(signal.SIGTERM, _interrupt)
