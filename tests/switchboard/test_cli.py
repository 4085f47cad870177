"""The `switchboard` command as a user runs it: a real subprocess."""

import json
import os
import subprocess

from tests.helpers import EXE, switchboard


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


def test_serve_answers_health_and_metrics_then_stops_on_sigterm(tmp_path):
    with switchboard(tmp_path, "--agent", "echo") as server:
        assert server.http_json("/healthz") == {"status": "ok"}
        assert "switchboard_calls_active" in server.metrics()
        server.proc.terminate()
        assert server.proc.wait(timeout=20) == 0, server.log()
