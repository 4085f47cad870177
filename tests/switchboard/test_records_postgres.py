"""What only the PostgreSQL call-record store has to get right, against a real PostgreSQL
server (tests/postgres.py): a server out of reach at start, a connection dropped under
the writer, schema creation by several nodes at once, data the server refuses, and the
DSN's password never shown. What both stores do is tested in test_records.py."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path

import psycopg
import pytest

from media.clock import ManualClock
from pipeline.metrics import Metrics
from switchboard.config import ConfigError, RecordsConfig, load_config
from switchboard.records import check_backend, open_store
from switchboard.records.postgres import PostgresStore, describe_dsn
from switchboard.records.recorder import Recorder
from switchboard.records.store import CallEnded, CallQuery, RecordStoreError, TurnSaved
from switchboard.records.writer import RecordWriter
from tests.helpers import EXE, free_port, switchboard
from tests.postgres import PASSWORD, PostgresServer
from tests.switchboard.test_records import T0, Echo, Leg, errors, info, started


def pg(dsn: str) -> RecordsConfig:
    return RecordsConfig(backend="postgresql", dsn=dsn)


def recorder(cfg: RecordsConfig) -> tuple[Recorder, Metrics]:
    metrics = Metrics()
    rec = Recorder(cfg, agent="echo", metrics=metrics, clock=ManualClock())
    rec.writer.retry_min = rec.writer.retry_max = 0.05  # retry at once in tests
    return rec, metrics


async def test_a_server_out_of_reach_at_start_is_reported_and_calls_go_on(
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there
    cfg = pg(f"postgresql://switchboard:{PASSWORD}@127.0.0.1:{port}/calls")
    rec, metrics = recorder(cfg)
    with caplog.at_level(logging.INFO, logger="switchboard.records"):
        await rec.start()
        agent = Echo()
        handler = rec.wrap(info(), agent)
        await handler.on_start(Leg(info()))
        handler.on_dtmf("1")
        await handler.on_end("remote_bye")
        assert agent.digits == ["1"] and agent.ended == "remote_bye"  # the call went on
        state = rec.readiness()["records"]
        assert state["failing"] == "unavailable" and state["pending"] >= 3
        assert f"127.0.0.1:{port}" in state["error"] and "refused" in state["error"].lower()
        assert state["store"] == f"postgresql://switchboard@127.0.0.1:{port}/calls"
        assert errors(metrics, "unavailable") >= 1
        await rec.stop(timeout=0.2)
    assert f"postgresql://switchboard@127.0.0.1:{port}/calls cannot be written now" in caplog.text
    assert "writes could not be saved at shutdown" in caplog.text
    assert PASSWORD not in caplog.text + repr(state) + repr(cfg)


async def test_records_wait_for_a_database_that_does_not_exist_yet(
        postgres_server: PostgresServer) -> None:
    name = f"later_{os.getpid()}"
    rec, _ = recorder(pg(postgres_server.dsn(name)))
    await rec.start()
    rec.wrap(info(), Echo()).call_closed("ack_timeout")
    assert rec.writer.failed.wait(10) and rec.writer.failing == "unavailable"
    assert "does not exist" in (rec.writer.last_error or "")
    postgres_server.admin(f"CREATE DATABASE {name}")
    assert rec.writer.flush(20)
    assert rec.readiness()["records"] | {"store": None} == {
        "backend": "postgresql", "store": None, "pending": 0, "failing": None, "error": None}
    row = open_store(rec.config, readonly=True).get_call("c1")
    assert row is not None and row["outcome"] == "ack_timeout"
    await rec.stop()


def test_a_dropped_connection_is_reopened(postgres_dsn: str) -> None:
    metrics = Metrics()
    writer = RecordWriter(lambda: open_store(pg(postgres_dsn)), metrics=metrics,
                          retry_min=0.05, retry_max=0.1)
    assert writer.open()
    writer.start()
    writer.submit(started("a", T0))
    assert writer.flush(10)
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:  # as a server restart does
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE datname = current_database() AND pid <> pg_backend_pid()")
    writer.submit(CallEnded("a", T0 + 3, "remote_bye", "caller", 0, "{}"))
    assert writer.flush(10)
    assert errors(metrics, "unavailable") == 1  # the write on the dead connection
    row = open_store(pg(postgres_dsn), readonly=True).get_call("a")
    assert row is not None and row["outcome"] == "remote_bye"
    assert writer.close() == 0


def test_nodes_starting_together_make_the_schema_once(postgres_dsn: str) -> None:
    opened: list[PostgresStore] = []
    failed: list[BaseException] = []

    def node() -> None:
        try:
            opened.append(PostgresStore(postgres_dsn))
        except BaseException as e:  # collected, asserted below
            failed.append(e)

    threads = [threading.Thread(target=node) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failed == [] and [s.schema_version for s in opened] == [1, 1, 1, 1]
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        assert admin.execute("SELECT version FROM switchboard_records_schema").fetchall() == [
            (1,)]
        admin.execute("UPDATE switchboard_records_schema SET version = 99")
    with pytest.raises(RecordStoreError, match="schema is version 99, newer than this"):
        PostgresStore(postgres_dsn)
    for store in opened:
        store.close()


def test_a_reader_finds_no_tables_and_makes_none(postgres_dsn: str) -> None:
    reader = open_store(pg(postgres_dsn), readonly=True)
    with pytest.raises(RecordStoreError, match="no call records here yet") as e:
        reader.list_calls(CallQuery())
    assert e.value.kind == "unavailable"
    with psycopg.connect(postgres_dsn) as admin:
        assert admin.execute("SELECT to_regclass('calls')").fetchone() == (None,)


def test_a_write_the_server_refuses_is_given_up_alone(postgres_dsn: str) -> None:
    metrics = Metrics()
    writer = RecordWriter(lambda: open_store(pg(postgres_dsn)), metrics=metrics)
    assert writer.open()
    writer.start()
    for op in (started("a", T0, caller="al\x00ice"), TurnSaved("a", 1, '{"transcript":"hi"}'),
               TurnSaved("a", 2**40, "{}"),  # out of an INTEGER's range: a DataError
               CallEnded("a", T0 + 3, "remote_bye", "caller", 1, "{}")):
        writer.submit(op)
    assert writer.flush(10)
    assert errors(metrics, "other") == 1 and writer.failing is None
    row = open_store(pg(postgres_dsn), readonly=True).get_call("a")
    assert row is not None and row["caller"] == "alice" and row["outcome"] == "remote_bye"
    assert [t["transcript"] for t in row["turns"]] == ["hi"]
    assert writer.close() == 0


def test_the_password_is_never_shown(tmp_path: Path) -> None:
    assert describe_dsn(f"host=db.example port=6432 user=sb password={PASSWORD} dbname=calls"
                        ) == "postgresql://sb@db.example:6432/calls"
    with pytest.raises(ConfigError, match="not a PostgreSQL connection string") as e:
        check_backend(pg(f"host=db.example password={PASSWORD} nonsense"))
    assert PASSWORD not in str(e.value)
    with pytest.raises(ConfigError, match=r"records\.dsn") as e:
        load_config(None, env={"SWITCHBOARD_RECORDS__BACKEND": "postgresql"})
    assert load_config(None, env={"SWITCHBOARD_RECORDS__BACKEND": "postgres",
                                  "SWITCHBOARD_RECORDS__DSN": "host=x"}
                       ).records.backend == "postgresql"  # the short name is accepted

    dsn = f"postgresql://sb:{PASSWORD}@127.0.0.1:{free_port()}/calls"
    env = {**os.environ, "SWITCHBOARD_RECORDS__BACKEND": "postgresql",
           "SWITCHBOARD_RECORDS__DSN": dsn}
    check = subprocess.run([EXE, "check-config"], capture_output=True, text=True, timeout=60,
                           env=env)
    assert check.returncode == 0 and '"backend": "postgresql"' in check.stdout
    calls = subprocess.run([EXE, "calls"], capture_output=True, text=True, timeout=60, env=env,
                           cwd=tmp_path)
    assert calls.returncode == 1 and "no call records to read (postgresql://sb@127.0.0.1:" in (
        calls.stderr)
    for out in (check.stdout + check.stderr, calls.stdout + calls.stderr):
        assert PASSWORD not in out


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp (sip-tester) not installed")
def test_a_real_server_takes_calls_while_the_database_is_away(
        tmp_path: Path, postgres_server: PostgresServer) -> None:
    """`switchboard serve` whose database does not exist yet: ready all the same, says why
    records fail, takes a SIPp call; once the database is there, the record is written."""
    from tests.switchboard.test_records_api import finished, get, sipp, wait_for

    name = f"away_{os.getpid()}"
    env = {"SWITCHBOARD_RECORDS__BACKEND": "postgresql",
           "SWITCHBOARD_RECORDS__DSN": postgres_server.dsn(name),
           "SWITCHBOARD_SIP__RTP_PORT_MIN": "43800", "SWITCHBOARD_SIP__RTP_PORT_MAX": "43898"}
    with switchboard(tmp_path, "--agent", "echo", env=env) as server:
        code, ready = get(server, "/readyz")
        assert code == 200 and ready["records"]["failing"] == "unavailable", ready
        assert f'database "{name}" does not exist' in ready["records"]["error"]
        assert finished(sipp(server, tmp_path, "-sn", "uac", "-d", "200")) == 0
        assert "switchboard_records_write_errors_total{kind=\"unavailable\"}" in (
            server.metrics())
        code, body = get(server, "/calls")
        assert code == 503 and "call records cannot be read (unavailable)" in body["error"]

        postgres_server.admin(f"CREATE DATABASE {name}")
        [call] = wait_for("the call's record, once the database exists",
                          lambda: [c for c in get(server, "/calls")[1].get("calls", [])
                                   if c["outcome"]], timeout=40)
        assert (call["outcome"], call["agent"], call["transport"]) == ("remote_bye", "echo",
                                                                      "sip")
        assert get(server, "/readyz")[1]["records"]["failing"] is None
    assert PASSWORD not in server.log()
    assert "call records: writing again after unavailable" in server.log()
