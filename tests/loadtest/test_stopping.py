"""SIGTERM to a benchmark stops the server it started (its `finally` runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for a benchmark: it starts a child in a try/finally, inside asyncio as the
# benchmarks do, says the child's pid, and waits to be killed.
BENCH = textwrap.dedent("""
    import asyncio, subprocess, sys
    from loadtest.stopping import end_on_sigterm
    if sys.argv[1] == "on":
        end_on_sigterm()
    async def main():
        child = subprocess.Popen(["sleep", "60"])
        try:
            print(child.pid, flush=True)
            await asyncio.sleep(60)
        finally:
            child.terminate()
            child.wait()
    asyncio.run(main())
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _run_and_term(mode: str) -> tuple[int, int]:
    bench = subprocess.Popen([sys.executable, "-c", BENCH, mode], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert bench.stdout is not None
    child = int(bench.stdout.readline())
    bench.send_signal(signal.SIGTERM)
    return bench.wait(timeout=20), child


def test_sigterm_runs_the_finally_that_stops_the_server() -> None:
    code, child = _run_and_term("on")
    assert code != 0  # interrupted, not finished
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_without_it_the_server_is_left_running() -> None:
    """Python's default: the benchmark dies, its child lives on (why the helper exists)."""
    code, child = _run_and_term("off")
    try:
        assert code == -signal.SIGTERM
        assert _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)

