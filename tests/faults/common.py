"""Small helpers shared by the fault tests (each test starts a real server)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest.capacity_report import parse_prometheus, total
from tests.helpers import Server

ROOT = Path(__file__).resolve().parents[2]


def get(server: Server, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30, every: float = 0.1
             ) -> Any:
    """Poll check() until it gives something true, at most timeout / every times."""
    for _ in range(int(timeout / every)):
        if result := check():
            return result
        time.sleep(every)
    raise AssertionError(f"no {what} within {timeout} s")


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels, from a /metrics page."""
    return total(parse_prometheus(text), name, **labels)


def ask(server: Server, question: Path, tail_s: float = 7.0) -> dict[str, Any]:
    """One call by the project's UAC (`switchboard call`): the question, then `tail_s`
    of listening; dial's result (call_id, status, hangup, reply_latency_s, ...)."""
    import subprocess

    from tests.helpers import EXE

    out = subprocess.run([EXE, "call", f"sip:bot@127.0.0.1:{server.sip_port}", "--play",
                          str(question), "--tail", str(tail_s)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def record_of(server: Server, call_id: str) -> dict[str, Any] | None:
    """The call's record once it has ended (its outcome written), else None."""
    code, call = get(server, f"/calls/{call_id}")
    return call if code == 200 and call.get("outcome") else None


def ollama_env(ollama: Any, rtp: int) -> dict[str, str]:
    """A server whose LLM is the fake Ollama, with its own RTP port range."""
    return {"SWITCHBOARD_LLM__ENGINE": "ollama", "SWITCHBOARD_LLM__HOST": ollama.url,
            "SWITCHBOARD_LLM__MODEL": "smollm2:135m",
            "SWITCHBOARD_SIP__RTP_PORT_MIN": str(rtp),
            "SWITCHBOARD_SIP__RTP_PORT_MAX": str(rtp + 98)}
