"""monitoring/ against real tools: promtool checks the config and rules and runs the alert
unit tests, the dashboards' PromQL is parsed by promtool, every metric name they use is found
in a real /metrics scrape of `switchboard serve --agent echo` after a real SIPp call, and a
real Prometheus scrapes that Switchboard with these rules and answers every dashboard query.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from loadtest.pcap import pcm_to_rtp, write_rtp_pcap
from media.dtmf import encode_digit
from media.rtp import RtpPacket
from pipeline.metrics import Metrics
from tests.helpers import Server, free_port, switchboard

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "monitoring"
DASHBOARDS = sorted((MON / "grafana" / "dashboards").glob("*.json"))
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
# Series Prometheus makes itself, never in a /metrics scrape.
SYNTHETIC = {"up"}
INSTANCE = 'instance=~"$instance"'

# -- PromQL: metric selectors out of an expression ------------------------------------------

_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>\.?\d[\w.]*)
  | (?P<ident>[a-zA-Z_:][\w:]*)
  | (?P<space>\s+)
  | (?P<other>.)
""", re.VERBOSE)
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, matcher text) for every vector selector: functions, aggregations,
    keywords, grouping labels, label matchers, strings, ranges and numbers are skipped."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr) if m.lastgroup != "space"]
    found: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in _GROUPING:
            if nxt == "(":  # a label list: skip to its ")"
                i += 2
                while i < len(tokens) and tokens[i][1] != ")":
                    i += 1
        elif kind == "ident" and nxt not in ("(", "by", "without") \
                and text.lower() not in _KEYWORDS:  # not a function nor `sum by (...) (...)`
            matchers = ""
            if nxt == "{":
                j = i + 2
                while j < len(tokens) and tokens[j][1] != "}":
                    j += 1
                matchers = "".join(t for _, t in tokens[i + 2:j])
                i = j
            found.append((text, matchers))
        elif text == "{":  # a selector with no name ({__name__=...}): matchers only
            while i < len(tokens) and tokens[i][1] != "}":
                i += 1
        i += 1
    return found


def metric_names(expr: str) -> set[str]:
    """The metric families an expression reads (histogram _bucket/_sum/_count stripped)."""
    return {_SUFFIX.sub("", name) for name, _ in selectors(expr)}


def test_selectors_skip_everything_that_is_not_a_metric():
    expr = ('histogram_quantile(0.95, sum by (instance, le) (rate(foo_seconds_bucket'
            '{a="x}(y", le!="1e3"}[5m]))) > 1e3 and on (instance) group_left () '
            'bar_total offset 5m / ignoring(job) baz unless sum without(le)(qux_count)')
    assert metric_names(expr) == {"foo_seconds", "bar_total", "baz", "qux"}
    assert selectors("up{job='switchboard'} == 0") == [("up", "job='switchboard'")]


# -- the files -------------------------------------------------------------------------------

def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(MON / "alerts.yml")["groups"] for rule in group["rules"]]


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARDS}


def dashboard_exprs() -> list[str]:
    return [t["expr"] for d in dashboards().values() for p in d["panels"] for t in p["targets"]]


def variable_metric_names() -> set[str]:
    names = set()
    for d in dashboards().values():
        for var in d["templating"]["list"]:
            if var["type"] == "query":
                names |= set(re.findall(r"label_values\((\w+)\s*,", var["definition"]))
    return names


def used_metric_names() -> set[str]:
    exprs = [rule["expr"] for rule in alert_rules()] + dashboard_exprs()
    return set().union(*map(metric_names, exprs)) | variable_metric_names()


def grafana_to_promql(expr: str, instance_regex: str = ".+") -> str:
    """What Grafana sends: its interval variables and the instance variable filled in (and
    the agent variable as All)."""
    for var, value in (("$__rate_interval", "1m"), ("$__interval", "15s"),
                       ("$__range", "1h"), ("$agent", ".*")):
        expr = expr.replace(var, value)
    return expr.replace("$instance", instance_regex)


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if not Path(PROMTOOL).exists():
        pytest.fail("promtool not found: run scripts/setup.sh (Debian package prometheus)")
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


# -- Prometheus config and rules -------------------------------------------------------------

def test_promtool_check_config():
    out = promtool("check", "config", "monitoring/prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 1 rule files found" in out.stdout


def test_promtool_check_rules():
    out = promtool("check", "rules", "monitoring/alerts.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in out.stdout


def test_promtool_alert_unit_tests_pass():
    out = promtool("test", "rules", "monitoring/alerts_test.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_alert_unit_tests_fail_when_a_rule_breaks(tmp_path):
    rules = (MON / "alerts.yml").read_text()
    assert 'up{job="switchboard"} == 0' in rules
    (tmp_path / "alerts.yml").write_text(rules.replace('up{job="switchboard"} == 0',
                                                       'up{job="switchboard"} == 2'))
    shutil.copy(MON / "alerts_test.yml", tmp_path / "alerts_test.yml")
    out = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert out.returncode != 0
    assert "alertname: SwitchboardDown" in out.stdout + out.stderr


def test_alert_unit_tests_cover_firing_alerts_that_exist():
    names = {rule["alert"] for rule in alert_rules()}
    cases = [case for test in load_yaml(MON / "alerts_test.yml")["tests"]
             for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    assert {case["alertname"] for case in cases} <= names
    assert len(firing) >= 2
    assert {"SwitchboardDown", "SwitchboardResponseLatencyHigh"} <= firing


def test_every_alert_has_for_severity_summary_and_description():
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"].split()) >= 10, name


@pytest.mark.parametrize(("what", "needle"), [
    ("p95 response latency", "histogram_quantile(0.95"),
    ("p95 response latency", "switchboard_response_latency_seconds_bucket"),
    ("error rate by stage", "switchboard_stage_errors_total"),
    ("calls refused at the limit", "switchboard_calls_rejected_total"),
    ("RTP loss", "switchboard_rtp_packets_lost_total"),
    ("RTP loss", "switchboard_rtp_packets_received_total"),
    ("model queue backing up", "switchboard_queue_depth"),
    ("model queue refusing jobs", "switchboard_queue_rejected_total"),
    ("node down", 'up{job="switchboard"} == 0'),
    ("pacer skipping ticks", "switchboard_pacer_skipped_ticks_total"),
    ("not ready", "switchboard_ready == 0"),
])
def test_alert_rules_cover(what, needle):
    assert any(needle in " ".join(rule["expr"].split()) for rule in alert_rules()), what


def test_prometheus_scrapes_switchboard_and_loads_the_rules():
    config = load_yaml(MON / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "switchboard")
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["localhost:8080"]
    assert "file_sd_configs" in (MON / "prometheus.yml").read_text()  # the multi-node note


# -- Grafana ---------------------------------------------------------------------------------

def test_grafana_provisioning():
    sources = load_yaml(MON / "grafana/provisioning/datasources/prometheus.yml")
    assert sources["apiVersion"] == 1
    [source] = sources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    prometheus = load_yaml(MON / "prometheus.yml")
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "switchboard")
    assert source["jsonData"]["timeInterval"] == job["scrape_interval"]
    providers = load_yaml(MON / "grafana/provisioning/dashboards/switchboard.yml")
    assert providers["apiVersion"] == 1
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    # The README's run commands mount the dashboards where the provider looks.
    assert f"grafana/dashboards:{provider['options']['path']}" in (MON / "README.md").read_text()


def test_the_four_dashboards_have_unique_uids():
    boards = dashboards()
    assert sorted(boards) == ["switchboard-calls.json", "switchboard-capacity.json",
                              "switchboard-latency.json", "switchboard-media.json"]
    assert len({d["uid"] for d in boards.values()}) == 4


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_variables_and_panel_queries(path):
    board = json.loads(path.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query" and instance["multi"] and instance["includeAll"]
    assert instance["definition"] == "label_values(switchboard_ready, instance)"
    assert instance["datasource"]["uid"] == "${datasource}"
    assert board["panels"]
    for panel in board["panels"]:
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel["targets"], title
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), title
        for target in panel["targets"]:
            assert target["expr"].strip(), title
            assert target["datasource"]["uid"] == "${datasource}", title
            found = selectors(target["expr"])
            assert found, (title, target["expr"])
            for name, matchers in found:  # every series is filtered by the instance variable
                assert INSTANCE in matchers, (title, name)


@pytest.mark.parametrize(("board", "needles"), [
    ("calls", ["switchboard_calls_active", "switchboard_calls_total", "by (transport)",
               "by (outcome)", "switchboard_call_duration_seconds_bucket",
               "switchboard_agent_calls_active", "switchboard_agent_calls_total",
               "by (transport, agent)", "by (agent, outcome)", 'agent=~"$agent"',
               "switchboard_agent_call_duration_seconds_bucket"]),
    ("latency", ["switchboard_stage_duration_seconds_bucket", 'stage="asr"',
                 'stage="llm_first_token"', 'stage="tts_first_audio"', "by (stage, le)",
                 "switchboard_response_latency_seconds_bucket",
                 "switchboard_bargein_latency_seconds_bucket", "histogram_quantile(0.5,",
                 "histogram_quantile(0.95,"]),
    ("media", ["switchboard_rtp_packets_lost_total", "switchboard_rtp_interarrival_jitter",
               "switchboard_jitter_buffer_delay_seconds", "switchboard_jitter_concealed_frames",
               "switchboard_jitter_late_packets_total", "switchboard_dtmf_digits_total"]),
    ("capacity", ["switchboard_queue_depth", "switchboard_calls_rejected_total",
                  "process_cpu_seconds_total", "process_resident_memory_bytes",
                  "switchboard_event_loop_lag_seconds_bucket",
                  "switchboard_pacer_lateness_seconds_bucket",
                  "switchboard_pacer_skipped_ticks_total"]),
])
def test_dashboard_shows(board, needles):
    exprs = "\n".join(t["expr"] for p in dashboards()[f"switchboard-{board}.json"]["panels"]
                      for t in p["targets"])
    for needle in needles:
        assert needle in exprs, needle


def test_promtool_parses_every_dashboard_query(tmp_path):
    rules = [{"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}
             for i, expr in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = promtool("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules)} rules found" in out.stdout


def test_every_used_metric_is_defined_in_pipeline_metrics():
    """A fresh registry (no server) already names every metric, labelled or not."""
    defined = {m.name for m in Metrics(CollectorRegistry()).registry.collect()}
    defined |= {name + "_total" for name in defined}  # counters: family name without _total
    missing = used_metric_names() - defined - SYNTHETIC
    assert not missing, f"not defined in pipeline/metrics.py: {sorted(missing)}"


# -- a real Switchboard, a real SIPp call, a real Prometheus ---------------------------------

@dataclass
class Scrape:
    types: dict[str, str]  # from # TYPE lines
    helps: set[str]  # from # HELP lines
    sampled: set[str]  # sample names, as exposed (foo_bucket, foo_total, ...)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        types, helps, sampled = {}, set(), set()
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                types[name] = kind
            elif line.startswith("# HELP "):
                helps.add(line.split(" ", 3)[2])
            elif line and not line.startswith("#"):
                sampled.add(re.split(r"[{ ]", line, maxsplit=1)[0])
        return cls(types, helps, sampled)

    def has_samples(self, name: str) -> bool:
        if self.types.get(name) == "histogram":
            return f"{name}_count" in self.sampled
        return name in self.sampled


@dataclass
class Live:
    server: Server
    scrape: Scrape
    text: str
    workdir: Path


SCENARIOS = ROOT / "loadtest" / "sipp"


def sipp(server: Server, workdir: Path, *scenario: str) -> None:
    if shutil.which("sipp") is None:
        pytest.fail("sipp not found: run scripts/setup.sh (Debian package sip-tester)")
    cmd = ["sipp", *scenario, "-m", "1", "-i", "127.0.0.1", "-p", str(free_port()),
           "-mp", str(free_port()), "-nostdin", "-timeout", "30s", "-timeout_error",
           "-trace_err", f"127.0.0.1:{server.sip_port}"]
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    errors = "".join(p.read_text() for p in workdir.glob("*_errors.log"))
    assert out.returncode == 0, f"{cmd}: exit {out.returncode}\n{errors}\n{server.log()}"


def write_call_audio(path: Path) -> None:
    """What uac_pcmu plays: 1 s of a 440 Hz tone as PCMU, then the digit 5 as RFC 4733."""
    t = np.arange(8000) / 8000
    packets = pcm_to_rtp((np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes())
    last = packets[-1]
    start = last.timestamp + 160
    for n, dtmf in enumerate(encode_digit("5")):
        packets.append(RtpPacket(101, last.sequence + 1 + n, start + dtmf.timestamp_offset,
                                 last.ssrc, bytes(dtmf.event), marker=dtmf.marker))
    write_rtp_pcap(path, packets)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The echo agent after three real SIPp calls: SIPp's built-in UAC (INVITE, ACK, 1 s,
    BYE), uac_pcmu sending audio and a DTMF digit, and uac_488 refused for its codec."""
    workdir = tmp_path_factory.mktemp("monitoring-live")
    write_call_audio(workdir / "speech.pcap")
    with switchboard(workdir, "--agent", "echo") as server:
        sipp(server, workdir, "-sn", "uac", "-d", "1000")
        # The capture lasts 1.2 s; the call outlasts it so the digit arrives before BYE.
        sipp(server, workdir, "-sf", str(SCENARIOS / "uac_pcmu.xml"), "-d", "2000")
        sipp(server, workdir, "-sf", str(SCENARIOS / "uac_488.xml"))
        text = server.metrics()
        yield Live(server, Scrape.parse(text), text, workdir)


@pytest.mark.slow
def test_every_metric_in_the_dashboards_and_rules_is_in_a_real_scrape(live):
    scrape = live.scrape
    used = used_metric_names() - SYNTHETIC
    for name in sorted(used):
        assert name in scrape.helps and name in scrape.types, f"{name} is not exported"
    # Unlabelled metrics always have a sample; only labelled ones may have none yet (the
    # echo agent runs no conversation, no call sent a bad packet), and they are still named
    # by their HELP and TYPE lines.
    labelled = {m._name if m._type != "counter" else m._name + "_total"
                for m in vars(Metrics(CollectorRegistry())).values()
                if getattr(m, "_labelnames", ())}
    unsampled = {name for name in used if not scrape.has_samples(name)}
    assert unsampled <= labelled, f"unlabelled yet no sample: {sorted(unsampled - labelled)}"
    # The SIPp calls themselves are in the scrape.
    for name in ("switchboard_calls_total", "switchboard_call_duration_seconds",
                 "switchboard_calls_active", "switchboard_sip_requests_total",
                 "switchboard_calls_rejected_total", "switchboard_dtmf_digits_total"):
        assert scrape.has_samples(name), name
    for sample in ('switchboard_calls_total{outcome="remote_bye",transport="sip"} 2.0',
                   # the same calls by agent (counted by the call recorder)
                   'switchboard_agent_calls_total{agent="echo",outcome="remote_bye",'
                   'transport="sip"} 2.0',
                   'switchboard_agent_call_duration_seconds_count{agent="echo",'
                   'transport="sip"} 2.0',
                   'switchboard_agent_calls_active{agent="echo",transport="sip"} 0.0',
                   'switchboard_calls_rejected_total{reason="codec",transport="sip"} 1.0',
                   'switchboard_dtmf_digits_total{method="rfc4733",transport="sip"} 1.0'):
        assert sample in live.text, sample
    [received] = re.findall(r"^switchboard_rtp_packets_received_total (\S+)$", live.text, re.M)
    assert float(received) >= 50  # 1 s of tone in 20 ms packets, then the digit


@dataclass
class Prometheus:
    url: str
    instance: str

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.get("/api/v1/query", query=expr)["result"]

    def wait_for(self, what: str, ok: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus: no {what} within {timeout}s")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def prometheus(live: Live) -> Iterator[Prometheus]:
    """monitoring/prometheus.yml with its switchboard target pointed at the live server and
    one-second intervals; its rule_files are monitoring/alerts.yml."""
    if not Path(PROMETHEUS).exists():
        pytest.fail("prometheus not found: run scripts/setup.sh (Debian package prometheus)")
    workdir, port = live.workdir, free_port()
    instance = f"127.0.0.1:{live.server.http_port}"
    config = load_yaml(MON / "prometheus.yml")
    config["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    config["rule_files"] = [str(MON / f) for f in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["switchboard"].update(scrape_interval="1s", scrape_timeout="1s")
    jobs["switchboard"]["static_configs"][0]["targets"] = [instance]
    jobs["prometheus"]["static_configs"][0]["targets"] = [f"127.0.0.1:{port}"]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    prom = Prometheus(f"http://127.0.0.1:{port}", instance)
    try:
        def ready() -> bool:
            assert proc.poll() is None, (workdir / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        prom.wait_for("readiness", ready)
        # Enough scrapes of the live server for every rate() over one minute.
        prom.wait_for("scrapes", lambda: any(
            float(s["value"][1]) >= 3 for s in
            prom.query('count_over_time(up{job="switchboard"}[1m])')))
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_real_prometheus_scrapes_switchboard_and_evaluates_the_rules(prometheus):
    [up] = prometheus.query('up{job="switchboard"}')
    assert up["metric"]["instance"] == prometheus.instance and up["value"][1] == "1"
    groups = load_yaml(MON / "alerts.yml")["groups"]

    def evaluated() -> bool:
        loaded = prometheus.get("/api/v1/rules")["groups"]
        return len(loaded) == len(groups) and all(
            r["health"] != "unknown" for g in loaded for r in g["rules"])
    prometheus.wait_for("rule evaluation", evaluated)
    loaded = prometheus.get("/api/v1/rules")["groups"]
    assert sorted(g["name"] for g in loaded) == sorted(g["name"] for g in groups)
    for rule in (r for g in loaded for r in g["rules"]):
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))


@pytest.mark.slow
def test_real_prometheus_answers_every_dashboard_query(prometheus):
    values = prometheus.get("/api/v1/label/instance/values", **{"match[]": "switchboard_ready"})
    assert values == [prometheus.instance]  # what the instance variable offers
    # Grafana escapes a chosen value as a regex inside the PromQL string.
    regex = re.escape(prometheus.instance).replace("\\", "\\\\")
    drawn = 0
    for expr in dashboard_exprs():
        promql = grafana_to_promql(expr, regex)
        result = prometheus.query(promql)
        # When every selector in it matches series, the query must draw something (NaN
        # counts: a quantile of no traffic is NaN, not missing); else a join or a label is
        # wrong.
        if all(prometheus.query(f"{name}{{{matchers}}}") for name, matchers in selectors(promql)):
            assert result, promql
            drawn += 1
    assert drawn >= len(dashboard_exprs()) // 2
