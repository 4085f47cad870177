"""Shared test helpers: free ports and a real `switchboard serve` subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

EXE = str(Path(sys.executable).with_name("switchboard"))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (SIP listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        try:
            with socket.socket(socket.AF_INET, other) as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


@dataclass
class Server:
    proc: subprocess.Popen[str]
    http_port: int
    sip_port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def http_json(self, path: str) -> object:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
            return json.loads(r.read())

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()


@contextmanager
def switchboard(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                ready_timeout: float = 120.0, prefix: Sequence[str] = ()) -> Iterator[Server]:
    """Start `switchboard serve ARGS` on free loopback ports; wait for /readyz; stop it.
    `prefix`: a command that execs the rest (same process), e.g. unshare."""
    http_port, sip_port = free_port(), free_port()
    full_env = {**os.environ, "SWITCHBOARD_HTTP__PORT": str(http_port),
                "SWITCHBOARD_HTTP__LISTEN": "127.0.0.1", "SWITCHBOARD_SIP__PORT": str(sip_port),
                "SWITCHBOARD_SIP__LISTEN": "127.0.0.1",
                # Tests stop servers with calls up; they expect a prompt BYE, not a drain.
                "SWITCHBOARD_SHUTDOWN_DRAIN_SECONDS": "0",
                # Keep each server's call records in its own temp dir, not the checkout.
                "SWITCHBOARD_RECORDS__PATH": str(tmp_path / f"calls-{sip_port}.db"),
                **(env or {})}
    log_path = tmp_path / f"switchboard-{sip_port}.log"
    logf = log_path.open("w")
    proc = subprocess.Popen([*prefix, EXE, "serve", *args], env=full_env, stdout=logf,
                            stderr=subprocess.STDOUT, text=True)
    server = Server(proc, http_port, sip_port, log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"switchboard exited with {proc.returncode}:\n{server.log()}")
            try:
                if server.http_json("/readyz").get("ready"):  # type: ignore[union-attr]
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"switchboard not ready in {ready_timeout}s:\n{server.log()}")
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        logf.close()
