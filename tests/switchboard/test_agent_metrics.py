"""The call metrics by agent (switchboard_agent_calls_*), counted by the call recorder
around real call handlers; the database is a real SQLite file in tmp_path."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from media.clock import ManualClock
from pipeline.leg import CallInfo
from pipeline.metrics import Metrics
from switchboard.config import RecordsConfig
from switchboard.records.recorder import Recorder
from tests.switchboard.test_records import Echo, Leg, info


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def recorder(tmp_path: Path, agent: str) -> tuple[Recorder, ManualClock, Metrics]:
    clock, metrics = ManualClock(), Metrics(CollectorRegistry())
    rec = Recorder(RecordsConfig(path=str(tmp_path / "calls.db")), agent=agent,
                   metrics=metrics, clock=clock)
    assert rec.writer.open()
    rec.writer.start()
    return rec, clock, metrics


async def test_calls_are_counted_by_transport_and_agent(tmp_path: Path) -> None:
    rec, clock, metrics = recorder(tmp_path, "echo")
    sales = rec.wrap(info("s1"), Echo(), agent="sales")  # a dialplan picked the agent
    default = rec.wrap(info("d1"), Echo())  # no dialplan: the configured agent
    await sales.on_start(Leg(info("s1")))
    await default.on_start(Leg(info("d1")))
    assert sample(metrics, "switchboard_agent_calls_active", transport="sip", agent="sales") == 1
    assert sample(metrics, "switchboard_agent_calls_active", transport="sip", agent="echo") == 1

    clock.advance(42.0)
    await sales.on_end("remote_bye")
    sales.call_closed("remote_bye")  # the door's last word: counted once, not twice
    labels = dict(transport="sip", agent="sales")
    assert sample(metrics, "switchboard_agent_calls_active", **labels) == 0
    assert sample(metrics, "switchboard_agent_calls_total", outcome="remote_bye", **labels) == 1
    assert sample(metrics, "switchboard_agent_call_duration_seconds_count", **labels) == 1
    assert sample(metrics, "switchboard_agent_call_duration_seconds_sum", **labels) == 42.0
    assert sample(metrics, "switchboard_agent_call_duration_seconds_bucket", le="30.0",
                  **labels) == 0
    assert sample(metrics, "switchboard_agent_call_duration_seconds_bucket", le="60.0",
                  **labels) == 1

    await default.on_end("no such outcome")  # not a door's outcome: bounded as "error"
    rec.wrap(info("n1"), Echo(), agent="sales").call_closed("ack_timeout")  # never answered
    rec.wrap(info("c1"), Echo(), agent="sales")  # CANCEL while ringing: nothing more comes
    clock.advance(rec.abandon_s)
    rec.tick()
    assert sample(metrics, "switchboard_agent_calls_total", transport="sip", agent="echo",
                  outcome="error") == 1
    assert sample(metrics, "switchboard_agent_calls_active", transport="sip", agent="echo") == 0
    for outcome in ("ack_timeout", "not_answered"):
        assert sample(metrics, "switchboard_agent_calls_total", outcome=outcome, **labels) == 1
    assert sample(metrics, "switchboard_agent_call_duration_seconds_count", **labels) == 1
    assert 'outcome="no such outcome"' not in generate_latest(metrics.registry).decode()
    rec.writer.close()


async def test_shutdown_ends_the_calls_still_up(tmp_path: Path) -> None:
    clock, metrics = ManualClock(), Metrics(CollectorRegistry())
    rec = Recorder(RecordsConfig(path=str(tmp_path / "calls.db")), agent="conversation",
                   metrics=metrics, clock=clock)
    await rec.start()
    twilio = CallInfo("t1", "twilio", "+15550001", "+15550002", {"stream_sid": "MZ1"})
    up = rec.wrap(twilio, Echo())
    await up.on_start(Leg(twilio))
    await rec.stop()
    labels = dict(transport="twilio", agent="conversation")
    assert sample(metrics, "switchboard_agent_calls_active", **labels) == 0
    assert sample(metrics, "switchboard_agent_calls_total", outcome="shutdown", **labels) == 1


async def test_the_agent_label_stays_bounded(tmp_path: Path) -> None:
    rec, _, metrics = recorder(tmp_path, "echo")
    rec.agent_labels.limit = 2
    for n, agent in enumerate(["", "a", "b", "a"]):  # "": the configured agent, echo
        rec.wrap(info(f"x{n}"), Echo(), agent=agent).call_closed("ack_timeout")
    counted = {agent: sample(metrics, "switchboard_agent_calls_total", transport="sip",
                             agent=agent, outcome="ack_timeout")
               for agent in ("echo", "a", "b", "other")}
    assert counted == {"echo": 1, "a": 2, "b": None, "other": 1}
    assert rec.writer.flush(10)
    from switchboard.records import open_store
    from switchboard.records.store import CallQuery

    stored = {c["agent"] for c in open_store(rec.config, readonly=True).list_calls(CallQuery())}
    assert stored == {"a", "b", "echo"}  # the records keep every real name
    rec.writer.close()
