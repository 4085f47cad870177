"""merge_expositions: several processes' /metrics as one."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.metrics import Metrics
from switchboard.metrics_merge import merge_expositions


def _text(m: Metrics) -> str:
    return generate_latest(m.registry).decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Switchboard's own series (the process_* ones describe this test process)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name.startswith("switchboard_")}


def test_counters_histograms_and_gauges_add_up() -> None:
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    a.calls_total.labels("twilio", "remote_stop").inc(2)
    b.calls_total.labels("twilio", "remote_stop").inc(5)
    b.calls_total.labels("sip", "hangup").inc()
    a.calls_active.labels("twilio").set(3)
    b.calls_active.labels("twilio").set(4)
    a.pacer_lateness_seconds.observe(0.001)
    b.pacer_lateness_seconds.observe(0.030)
    merged = _samples(merge_expositions([_text(a), _text(b)]).decode())
    assert merged[("switchboard_calls_total", (("outcome", "remote_stop"),
                                               ("transport", "twilio")))] == 7
    assert merged[("switchboard_calls_total", (("outcome", "hangup"), ("transport", "sip")))] == 1
    assert merged[("switchboard_calls_active", (("transport", "twilio"),))] == 7
    assert merged[("switchboard_pacer_lateness_seconds_count", ())] == 2
    assert merged[("switchboard_pacer_lateness_seconds_sum", ())] == pytest.approx(0.031)
    assert merged[("switchboard_pacer_lateness_seconds_bucket", (("le", "0.005"),))] == 1
    assert merged[("switchboard_pacer_lateness_seconds_bucket", (("le", "+Inf"),))] == 2


def test_ready_is_the_least_and_created_the_earliest() -> None:
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    a.ready.set(1)
    b.ready.set(0)
    a.calls_total.labels("twilio", "hangup").inc()
    b.calls_total.labels("twilio", "hangup").inc()
    first = _samples(_text(a))[("switchboard_calls_created", (("outcome", "hangup"),
                                                              ("transport", "twilio")))]
    merged = _samples(merge_expositions([_text(a), _text(b)]).decode())
    assert merged[("switchboard_ready", ())] == 0
    assert merged[("switchboard_calls_created", (("outcome", "hangup"),
                                                 ("transport", "twilio")))] == first


def test_one_process_round_trips_and_each_family_appears_once() -> None:
    a = Metrics(CollectorRegistry())
    a.calls_total.labels("twilio", "remote_stop").inc(3)
    text = merge_expositions([_text(a), _text(Metrics(CollectorRegistry()))]).decode()
    assert _samples(text) == _samples(_text(a))
    assert text.count("# TYPE switchboard_calls_total counter") == 1
    assert text.count("python_info{") == 1 and "python_info{" in _text(a)


def test_conflicting_types_are_refused() -> None:
    with pytest.raises(ValueError, match="x is a counter in one process and a gauge"):
        merge_expositions(["# TYPE x counter\nx_total 1\n", "# TYPE x gauge\nx 1\n"])
