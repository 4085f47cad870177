"""Which asyncio event loop `switchboard serve` (and each stream worker) runs on.

uvloop (libuv underneath) is the default: every stream and RTP session costs the loop
a socket wake-up per 20 ms, and uvloop does the epoll wait, the transports' reads and
writes and the callback queue in C, where the standard loop does them in Python. The
standard loop stays selectable (`event_loop: asyncio`) as the reference for a suspected
loop bug, and is used, with a warning, where uvloop is not installed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["EventLoopKind", "loop_factory", "run"]

log = logging.getLogger(__name__)

EventLoopKind = Literal["uvloop", "asyncio"]
T = TypeVar("T")


def loop_factory(kind: EventLoopKind) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function making a new loop of `kind`; the standard loop if uvloop is missing."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("event_loop: uvloop is not installed; running on the asyncio loop")
        else:
            return uvloop.new_event_loop
    elif kind != "asyncio":
        raise ValueError(f"event_loop must be uvloop or asyncio, not {kind!r}")
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], kind: EventLoopKind) -> T:
    """asyncio.run(main) on a loop of `kind`."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)
