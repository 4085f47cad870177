"""The container deployment: docker-compose.yml validated by docker-compose itself (no Docker
engine needed for `config`), its bind mounts present in the repo, the Prometheus config it
mounts checked by promtool in the same layout the container sees, and the Dockerfile's ports,
health check and user held to the config defaults. No image is built here (no engine).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from switchboard.config import Config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "ollama-entrypoint.sh"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
DOCKER_COMPOSE = shutil.which("docker-compose")


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) for each bind mount; named volumes are left out."""
    out = []
    for spec in service.get("volumes", []):
        host, container = spec.split(":")[:2]
        if host.startswith((".", "/")):
            out.append((host, container))
    return out


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _runtime_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


@pytest.mark.skipif(DOCKER_COMPOSE is None,
                    reason="docker-compose not installed (scripts/setup.sh installs it)")
def test_compose_config_is_valid() -> None:
    result = subprocess.run([DOCKER_COMPOSE, "-f", str(COMPOSE), "config", "-q"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_compose_services_and_bind_mounts_exist() -> None:
    services = _compose()["services"]
    assert set(services) == {"switchboard", "ollama", "prometheus", "grafana"}
    mounts = [m for s in services.values() for m in _bind_mounts(s)]
    assert mounts, "expected bind mounts for the entrypoint and the monitoring config"
    for host, container in mounts:
        assert (ROOT / host).exists(), f"{host} (mounted at {container}) is not in the repo"


def test_compose_switchboard_talks_to_ollama() -> None:
    services = _compose()["services"]
    env = services["switchboard"]["environment"]
    assert env["SWITCHBOARD_LLM__ENGINE"] == "ollama"
    assert env["SWITCHBOARD_LLM__HOST"] == "http://ollama:11434"
    assert "ollama" in services["switchboard"]["depends_on"]
    ollama = services["ollama"]
    assert "/deploy/ollama-entrypoint.sh" in " ".join(ollama["entrypoint"])
    assert any(v.endswith(":/root/.ollama") for v in ollama["volumes"])


def test_compose_rtp_range_matches_published_ports() -> None:
    switchboard = _compose()["services"]["switchboard"]
    env = switchboard["environment"]
    low, high = int(env["SWITCHBOARD_SIP__RTP_PORT_MIN"]), int(env["SWITCHBOARD_SIP__RTP_PORT_MAX"])
    Config.model_validate({"sip": {"rtp_port_min": low, "rtp_port_max": high}})
    assert f"{low}-{high}:{low}-{high}/udp" in switchboard["ports"]
    defaults = Config()
    for port in (f"{defaults.sip.port}/udp", f"{defaults.sip.port}/tcp",
                 f"{defaults.http.port}/tcp"):
        assert any(p.endswith(":" + port) for p in switchboard["ports"]), port


def test_grafana_mounts_dashboards_where_the_provider_reads() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = dict(_bind_mounts(grafana))
    provider = ROOT / "monitoring/grafana/provisioning/dashboards/switchboard.yml"
    path = yaml.safe_load(provider.read_text())["providers"][0]["options"]["path"]
    assert mounts["./monitoring/grafana/dashboards"] == path
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    # The provisioned data source says localhost:9090, right only inside Prometheus' netns.
    datasource = ROOT / "monitoring/grafana/provisioning/datasources/prometheus.yml"
    url = yaml.safe_load(datasource.read_text())["datasources"][0]["url"]
    if "localhost" in url:
        assert grafana["network_mode"] == "service:prometheus"


def test_prometheus_config_as_mounted_passes_promtool(tmp_path: Path) -> None:
    # Rebuild the container's /etc/prometheus from the compose mounts so rule_files
    # resolves exactly as it will there.
    prometheus = _compose()["services"]["prometheus"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_in_container = config_flag.split("=", 1)[1]
    for host, container in _bind_mounts(prometheus):
        if container.startswith("/etc/prometheus/"):
            shutil.copy(ROOT / host, tmp_path / Path(container).name)
    config = tmp_path / Path(config_in_container).name
    assert config.exists(), f"{config_in_container} is not bind-mounted"
    result = subprocess.run([PROMTOOL, "check", "config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout

    scrape = yaml.safe_load(config.read_text())["scrape_configs"]
    job = next(j for j in scrape if j["job_name"] == "switchboard")
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"switchboard:{Config().http.port}"]


def test_dockerfile_exposes_the_config_default_ports() -> None:
    exposed = " ".join(args for word, args in _runtime_stage() if word == "EXPOSE").split()
    defaults = Config()
    for port in (f"{defaults.sip.port}/udp", f"{defaults.sip.port}/tcp",
                 f"{defaults.http.port}/tcp", f"{defaults.streams.audiosocket.port}/tcp"):
        assert port in exposed, f"{port} not EXPOSEd: {exposed}"


def test_dockerfile_healthcheck_user_and_command() -> None:
    runtime = _runtime_stage()
    words = [word for word, _ in runtime]
    health = next(args for word, args in runtime if word == "HEALTHCHECK")
    assert "/healthz" in health and "CMD" in health
    user = next(args for word, args in runtime if word == "USER")
    assert user not in {"root", "0"}
    assert words.index("USER") < words.index("CMD")
    assert next(args for word, args in runtime if word == "CMD") == '["switchboard", "serve"]'
    assert any("libopus0" in args for word, args in runtime if word == "RUN")
    # Compilers stay in the builder stage.
    assert not any("build-essential" in args for word, args in runtime if word == "RUN")


def test_ollama_entrypoint_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = ENTRYPOINT.read_text()
    assert "ollama serve" in text and 'ollama pull "$MODEL"' in text


def test_compose_environment_is_a_valid_switchboard_config() -> None:
    # Every SWITCHBOARD_* override the compose file sets must load (with compose defaults
    # for ${VAR:-default}; a key without a value passes through from the shell only when
    # set there, so it is left out); max_calls must fit the RTP ports the range holds.
    from sip.ports import PortAllocator
    from switchboard.config import load_config

    env = _compose()["services"]["switchboard"]["environment"]
    resolved = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()
                if v is not None}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in resolved.items():
            mp.setenv(key, value)
        config = load_config(None)
    assert config.llm.engine == "ollama"
    assert config.sip.advertised_address
    ports = PortAllocator(config.sip.rtp_port_min, config.sip.rtp_port_max)
    assert config.sip.max_calls <= ports.capacity
