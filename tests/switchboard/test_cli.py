"""The `switchboard` command as a user runs it: a real subprocess."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).with_name("switchboard"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_version():
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("switchboard 0.")


def test_check_config_reports_bad_value_with_file_line_and_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("http:\n  port: -1\n")
    out = run("check-config", "--config", str(cfg))
    assert out.returncode == 2
    assert f"{cfg}, line 2: http.port" in out.stderr


def test_check_config_never_prints_secrets(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("sip:\n  trunk:\n    registrar: trunk.example\n    username: u\n"
                   "    password: s3cret\n")
    out = run("check-config", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "s3cret" not in out.stdout + out.stderr
    assert json.loads(out.stdout)["sip"]["trunk"]["username"] == "u"


def test_serve_answers_health_and_metrics_then_stops_on_sigterm():
    http_port, sip_port = free_port(), free_port()
    env = {**os.environ, "SWITCHBOARD_HTTP__PORT": str(http_port),
           "SWITCHBOARD_HTTP__LISTEN": "127.0.0.1", "SWITCHBOARD_SIP__PORT": str(sip_port),
           "SWITCHBOARD_SIP__LISTEN": "127.0.0.1"}
    proc = subprocess.Popen([EXE, "serve", "--agent", "echo"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                url = f"http://127.0.0.1:{http_port}/healthz"
                with urllib.request.urlopen(url, timeout=2) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.2)
        assert body == {"status": "ok"}
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert "switchboard_calls_active" in text
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("switchboard did not stop on SIGTERM")
    assert proc.returncode == 0, out
