"""Call records: the store, the writer thread, the recorder around a call's handler,
redaction and retention. Every test that takes `records_config` runs twice: on a real
SQLite file in tmp_path and on a real PostgreSQL database (tests/switchboard/conftest.py).
Time from a ManualClock."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.clock import ManualClock
from pipeline.calllog import CallLog
from pipeline.leg import CallInfo
from pipeline.metrics import Metrics
from pipeline.record import REDACTED, redact_digits
from switchboard.config import ConfigError, RecordsConfig, load_config
from switchboard.records import open_store
from switchboard.records.api import parse_query, parse_time
from switchboard.records.recorder import Recorder, hangup_cause
from switchboard.records.sqlite import SqliteStore
from switchboard.records.store import (
    CallAnswered,
    CallEnded,
    CallQuery,
    CallStarted,
    Purge,
    RecordStore,
    RecordStoreError,
)

without_psycopg = pytest.mark.skipif(importlib.util.find_spec("psycopg") is not None,
                                     reason="psycopg is installed")
T0 = 1_700_000_000.0  # wall-clock epoch of the fake wall


class Wall:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


class Leg:
    def __init__(self, info: CallInfo) -> None:
        self.info = info


class Echo:
    """An agent without a call log (like pipeline.echo.EchoHandler)."""

    def __init__(self) -> None:
        self.frames = 0
        self.digits: list[str] = []
        self.ended: str | None = None

    async def on_start(self, leg: Any) -> None: ...

    def on_frame(self, pcm: bytes) -> None:
        self.frames += 1

    def on_dtmf(self, digit: str) -> None:
        self.digits.append(digit)

    def on_mark(self, mark: str, played: bool) -> None: ...

    async def on_end(self, reason: str) -> None:
        self.ended = reason


class Talker(Echo):
    """An agent with a call log, as pipeline.conversation.Conversation has."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock
        self.calllog: CallLog | None = None

    async def on_start(self, leg: Any) -> None:
        self.calllog = CallLog(leg.info, self.clock)
        self.calllog.call_start()

    def turn(self, said: str, heard: str) -> None:
        assert self.calllog is not None
        turn = self.calllog.new_turn(self.clock.now())
        turn.transcript, turn.answer, turn.heard = said, heard, heard
        turn.timings["response_latency"] = 0.8
        self.calllog.turn_done(turn, "answered")

    async def on_end(self, reason: str) -> None:
        assert self.calllog is not None
        self.calllog.call_end(reason)


def info(call_id: str = "c1", **params: str) -> CallInfo:
    return CallInfo(call_id, "sip", "alice", "bot", params or {"source": "udp:1.2.3.4:5060"})


def make(cfg: RecordsConfig, **config: Any) -> tuple[Recorder, ManualClock, Wall, Metrics]:
    clock, wall, metrics = ManualClock(), Wall(), Metrics()
    rec = Recorder(cfg.model_copy(update=config), agent="echo", metrics=metrics, clock=clock,
                   wall=wall)
    assert rec.writer.open()
    rec.writer.start()
    return rec, clock, wall, metrics


def reader(cfg: RecordsConfig) -> RecordStore:
    """Another connection, as another process would have."""
    return open_store(cfg, readonly=True)


def errors(metrics: Metrics, kind: str) -> float:
    return metrics.records_write_errors_total.labels(kind)._value.get()


# -- redaction ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, want", [
    ("my card is 4111 1111 1111 1111 thanks", f"my card is {REDACTED} thanks"),
    ("call me at 555-123-4567", f"call me at {REDACTED}"),
    ("(555) 123.4567", f"({REDACTED}"),
    ("pin 1234", f"pin {REDACTED}"),
    ("My card number is 4,100,100,100.", f"My card number is {REDACTED}."),
    ("3 items in 15 minutes, room 101", "3 items in 15 minutes, room 101"),
    ("no digits at all", "no digits at all"),
])
def test_redact_digit_runs(text: str, want: str) -> None:
    assert redact_digits(text) == want


def longest_digit_run(text: str) -> int:
    """Digits joined by at most two separators, counted by hand (not by the regex)."""
    best = run = gap = 0
    for c in text:
        if c.isdigit():
            run = run + 1 if run and gap <= 2 else 1
            gap = 0
        elif c in " \t-.,/()":
            gap += 1
        else:
            run = gap = 0
        best = max(best, run)
    return best


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789 -.,()/ab"), max_size=60))
def test_redaction_leaves_no_run_of_four_digits(text: str) -> None:
    out = redact_digits(text)
    assert longest_digit_run(out) < 4
    if longest_digit_run(text) < 4:
        assert out == text


# -- the store ---------------------------------------------------------------------------


def started(uid: str, t: float, **kw: Any) -> CallStarted:
    fields = dict(uid=uid, call_id=f"call-{uid}", transport="sip", direction="inbound",
                  caller="alice", callee="bot", agent="echo", node="n:1", started_at=t,
                  params="{}")
    fields.update(kw)
    return CallStarted(**fields)


def test_sqlite_store_uses_wal(tmp_path: Path) -> None:
    assert SqliteStore(tmp_path / "calls.db").journal_mode == "wal"


def test_store_serves_queries(records_config: RecordsConfig) -> None:
    store = open_store(records_config)
    store.apply([started("a", T0), started("b", T0 + 10, agent="conversation", transport="twilio"),
                 started("c", T0 + 20), CallAnswered("a", T0 + 1),
                 CallEnded("a", T0 + 5, "remote_bye", "caller", 0, '{"dtmf": "12"}'),
                 CallEnded("c", T0 + 25, "shutdown", "shutdown", 0, "{}")])
    ids = lambda q: [c["id"] for c in store.list_calls(q)]  # noqa: E731
    assert ids(CallQuery()) == ["c", "b", "a"]  # newest first
    assert ids(CallQuery(since=T0 + 10)) == ["c", "b"]
    assert ids(CallQuery(until=T0 + 10)) == ["a"]
    assert ids(CallQuery(agent="conversation")) == ["b"]
    assert ids(CallQuery(outcome="shutdown")) == ["c"]
    assert ids(CallQuery(transport="twilio")) == ["b"]
    assert ids(CallQuery(limit=1, offset=1)) == ["b"]
    a = store.get_call("call-a")
    assert a is not None and a["duration_s"] == 4.0 and a["dtmf"] == "12"
    assert a["started_at"] == "2023-11-14T22:13:20.000Z" and a["outcome"] == "remote_bye"
    assert store.get_call("a") == a  # by record id too
    assert store.get_call("nope") is None
    store.close()


def test_ops_are_idempotent_so_a_failed_batch_can_be_applied_again(
        records_config: RecordsConfig) -> None:
    store = open_store(records_config)
    ops = [started("a", T0), CallAnswered("a", T0 + 1)]
    store.apply(ops)
    store.apply(ops)
    assert [c["id"] for c in store.list_calls(CallQuery())] == ["a"]


def test_purge_deletes_old_calls_a_bounded_number_at_a_time(
        records_config: RecordsConfig) -> None:
    store = open_store(records_config)
    store.apply([started(str(i), T0 + i) for i in range(5)])
    assert store.apply([Purge(before=T0 + 3, limit=2)]) == 2
    assert store.apply([Purge(before=T0 + 3, limit=2)]) == 1
    assert store.apply([Purge(before=T0 + 3, limit=2)]) == 0
    assert [c["id"] for c in store.list_calls(CallQuery())] == ["4", "3"]


def test_a_reader_never_creates_the_database(tmp_path: Path) -> None:
    with pytest.raises(RecordStoreError) as e:
        SqliteStore(tmp_path / "none.db", readonly=True)
    assert e.value.kind == "unavailable"
    assert not (tmp_path / "none.db").exists()


def test_postgres_without_psycopg_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed: import fails
    monkeypatch.delitem(sys.modules, "switchboard.records.postgres", raising=False)
    cfg = RecordsConfig(backend="postgres", dsn="postgresql://u@h/db")
    with pytest.raises(ConfigError, match="postgresql backend needs the psycopg package"):
        open_store(cfg)
    with pytest.raises(ConfigError, match=r"records\.dsn"):
        load_config(None, env={"SWITCHBOARD_RECORDS__BACKEND": "postgres"})


# -- the recorder around a call ------------------------------------------------------------


async def test_an_echo_call_leaves_a_record_with_its_dtmf(records_config: RecordsConfig) -> None:
    rec, clock, wall, _ = make(records_config)
    agent = Echo()
    handler = rec.wrap(info(), agent)
    assert rec.writer.flush(5)
    row = reader(records_config).get_call("c1")
    assert row is not None and row["answered_at"] is None and row["outcome"] is None

    clock.advance(1.0)
    wall.t += 1.0
    await handler.on_start(Leg(info()))
    assert handler.on_frame == agent.on_frame  # the door calls the agent straight
    handler.on_frame(b"")
    handler.on_dtmf("5")
    clock.advance(2.0)
    handler.on_dtmf("#")
    wall.t += 3.0
    await handler.on_end("remote_bye")
    handler.call_closed("remote_bye")  # the door's last word changes nothing now
    assert agent.frames == 1 and agent.digits == ["5", "#"] and agent.ended == "remote_bye"
    assert rec.writer.flush(5)

    row = reader(records_config).get_call("c1")
    assert row is not None
    assert (row["outcome"], row["cause"], row["dtmf"], row["duration_s"]) == (
        "remote_bye", "caller", "5#", 3.0)
    assert [(e["event"], e["digit"], e["t"]) for e in row["events"]] == [
        ("dtmf", "5", 0.0), ("dtmf", "#", 2.0)]
    assert row["params"] == {"source": "udp:1.2.3.4:5060"} and row["agent"] == "echo"
    assert rec.live == {}
    rec.writer.close()


async def test_each_turn_is_written_as_it_completes(records_config: RecordsConfig) -> None:
    """A crash keeps every completed turn: read from another connection, never ended."""
    rec, clock, _, _ = make(records_config)
    agent = Talker(clock)
    handler = rec.wrap(info(), agent)
    await handler.on_start(Leg(info()))
    clock.advance(3.0)
    agent.turn("what are your hours", "We open at nine.")
    assert agent.calllog is not None
    agent.calllog.event("barge_in", turn=1, vad_barge_in=True, detect_ms=100, bot_audio=[])
    rec.tick()
    assert rec.writer.flush(5)

    row = reader(records_config).get_call("c1")
    assert row is not None and row["ended_at"] is None and row["turn_count"] == 1
    assert row["transcript"] == [{"role": "caller", "text": "what are your hours"},
                                 {"role": "bot", "text": "We open at nine."}]
    assert row["turns"][0]["timings"] == {"response_latency": 0.8}
    assert [e["event"] for e in row["events"]] == ["call_start", "barge_in"]

    agent.turn("thanks, bye", "Goodbye.")
    agent.calllog.event("ending", reason="caller_goodbye")
    await handler.on_end("hangup")
    assert rec.writer.flush(5)
    row = reader(records_config).get_call("c1")
    assert row is not None and row["turn_count"] == 2 and row["barge_ins"] == 1
    assert (row["outcome"], row["cause"]) == ("hangup", "caller_goodbye")
    assert row["events"][-1]["event"] == "call_end"
    rec.writer.close()


async def test_redaction_of_turns_and_keypad_digits(records_config: RecordsConfig) -> None:
    rec, clock, _, _ = make(records_config, redact_digits=True)
    agent = Talker(clock)
    handler = rec.wrap(info(), agent)
    await handler.on_start(Leg(info()))
    agent.turn("card 4111 1111 1111 1111 please", "You said 4111-1111-1111-1111.")
    handler.on_dtmf("7")
    handler.on_dtmf("#")
    await handler.on_end("remote_bye")
    assert rec.writer.flush(5)
    row = reader(records_config).get_call("c1")
    assert row is not None
    stored = json.dumps(row)
    assert "4111" not in stored and '"7"' not in stored
    assert row["turns"][0]["transcript"] == f"card {REDACTED} please"
    assert row["dtmf"] == "x#"
    rec.writer.close()


async def test_calls_that_never_started_are_closed_too(records_config: RecordsConfig) -> None:
    rec, clock, _, _ = make(records_config)
    no_ack = rec.wrap(info("no-ack"), Echo())
    no_ack.call_closed("ack_timeout")  # SIP: 200 OK sent, the ACK never came
    rec.wrap(info("cancelled"), Echo())  # a CANCEL while ringing: nobody says a word
    clock.advance(rec.abandon_s)
    rec.tick()
    assert rec.writer.flush(5)
    store = reader(records_config)
    outcomes = {c["call_id"]: (c["outcome"], c["answered_at"])
                for c in store.list_calls(CallQuery())}
    assert outcomes == {"no-ack": ("ack_timeout", None), "cancelled": ("not_answered", None)}
    rec.writer.close()


async def test_retention_purges_from_the_tick(records_config: RecordsConfig) -> None:
    rec, _, wall, _ = make(records_config, retention_days=1)
    rec.purge_limit = 1
    for n in range(3):
        rec.wrap(info(f"old{n}"), Echo()).call_closed("remote_bye")
    wall.t += 2 * 86400
    rec.wrap(info("new"), Echo()).call_closed("remote_bye")
    rec.tick()  # due at once (_next_purge is 0 before start): deletes one, a full batch
    assert rec.writer.flush(5)
    rec.tick()  # a full batch last time: again at once
    assert rec.writer.flush(5)
    left = {c["call_id"] for c in reader(records_config).list_calls(CallQuery())}
    assert left == {"old2", "new"}
    rec.writer.close()


# -- the database says no ------------------------------------------------------------------


class Lock:
    """Another process holding the database (SQLite) or the calls table (PostgreSQL)."""

    def __init__(self, cfg: RecordsConfig) -> None:
        if cfg.backend == "sqlite":
            self.conn: Any = sqlite3.connect(cfg.path, isolation_level=None)
            self.conn.execute("BEGIN EXCLUSIVE")
        else:
            import psycopg

            self.conn = psycopg.connect(cfg.dsn)  # a transaction open until release()
            self.conn.execute("LOCK TABLE calls IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


async def test_a_locked_database_is_counted_and_the_record_written_later(
        records_config: RecordsConfig) -> None:
    clock, wall, metrics = ManualClock(), Wall(), Metrics()
    cfg = records_config
    rec = Recorder(cfg, agent="echo", metrics=metrics, clock=clock, wall=wall,
                   open_writer_store=lambda: open_store(cfg, busy_timeout=0.05))
    assert rec.writer.open()
    rec.writer.start()
    other = Lock(cfg)
    agent = Echo()
    handler = rec.wrap(info(), agent)
    await handler.on_start(Leg(info()))
    assert rec.writer.failed.wait(10)
    handler.on_frame(b"")  # the call goes on
    handler.on_dtmf("1")
    await handler.on_end("remote_bye")
    assert agent.frames == 1 and agent.ended == "remote_bye"
    assert errors(metrics, "locked") >= 1 and rec.writer.failing == "locked"
    assert rec.writer.pending >= 3

    other.release()
    assert rec.writer.flush(10)
    assert rec.writer.failing is None and rec.writer.pending == 0
    row = reader(cfg).get_call("c1")
    assert row is not None and row["outcome"] == "remote_bye" and row["dtmf"] == "1"
    rec.writer.close()


def test_a_full_disk_is_counted_and_the_writes_kept(tmp_path: Path) -> None:
    stores: list[SqliteStore] = []

    def tiny() -> SqliteStore:
        store = SqliteStore(tmp_path / "calls.db")
        store._db.execute("PRAGMA max_page_count = 6")  # a disk with no room left
        stores.append(store)
        return store

    metrics = Metrics()
    from switchboard.records.writer import RecordWriter

    writer = RecordWriter(tiny, metrics=metrics, retry_min=0.01, retry_max=0.05)
    writer.start()
    big = json.dumps({"x": "y" * 20000})
    writer.submit(started("a", T0, params=big))
    assert writer.failed.wait(10)
    assert writer.failing == "disk_full" and errors(metrics, "disk_full") >= 1
    stores[0]._db.execute("PRAGMA max_page_count = 100000")  # room again
    assert writer.flush(10)
    read = SqliteStore(tmp_path / "calls.db", readonly=True)
    assert [c["id"] for c in read.list_calls(CallQuery())] == ["a"]
    assert writer.close() == 0


def test_the_queue_is_bounded_but_keeps_every_call_row(records_config: RecordsConfig) -> None:
    metrics = Metrics()
    from switchboard.records.store import TurnSaved
    from switchboard.records.writer import RecordWriter

    writer = RecordWriter(lambda: open_store(records_config), metrics=metrics,
                          max_pending=2)  # not started: nothing is written yet
    writer.submit(started("a", T0))
    writer.submit(TurnSaved("a", 1, "{}"))
    writer.submit(TurnSaved("a", 2, "{}"))  # over the bound: dropped, counted
    writer.submit(CallEnded("a", T0 + 1, "remote_bye", "caller", 2, "{}"))  # always kept
    assert writer.pending == 3 and errors(metrics, "overflow") == 1
    writer.start()
    assert writer.flush(10)
    row = reader(records_config).get_call("a")
    assert row is not None and row["outcome"] == "remote_bye" and len(row["turns"]) == 1
    writer.close()


def test_writes_unsaved_at_shutdown_are_kept_for_the_next_start(tmp_path: Path) -> None:
    from switchboard.records.store import EventsSaved, TurnSaved
    from switchboard.records.writer import RecordWriter

    db, spill = tmp_path / "calls.db", tmp_path / "calls.db.unsaved.jsonl"
    SqliteStore(db).close()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # locked for the whole of the first run
    first = RecordWriter(lambda: SqliteStore(db, busy_timeout=0.05), metrics=Metrics(),
                         spill_path=spill)
    first.open()
    first.start()
    ops = [started("a", T0), EventsSaved("a", ((0, 0.5, "dtmf", '{"digit":"1"}'),)),
           TurnSaved("a", 1, '{"transcript":"hi"}'),
           CallEnded("a", T0 + 2, "remote_bye", "caller", 1, "{}")]
    for op in ops:
        first.submit(op)
    assert first.close(timeout=0.3) == 0  # nothing lost: kept in the file
    assert spill.exists() and len(spill.read_text().splitlines()) == 4
    other.execute("ROLLBACK")
    other.close()

    second = RecordWriter(lambda: SqliteStore(db), metrics=Metrics(), spill_path=spill)
    assert second.open()
    second.start()
    assert second.flush(10)
    row = SqliteStore(db, readonly=True).get_call("call-a")
    assert row is not None and row["outcome"] == "remote_bye" and row["turns"] == [
        {"transcript": "hi"}] and row["events"][0]["digit"] == "1"
    assert not spill.exists()
    second.close()


def test_every_op_survives_its_json_line() -> None:
    from switchboard.records.store import EventsSaved, TurnSaved, op_from_json, op_to_json

    for op in (started("a", T0), CallAnswered("a", T0), TurnSaved("a", 2, "{}"),
               EventsSaved("a", ((1, 0.25, "dtmf", "{}"),)), Purge(T0, 5),
               CallEnded("a", T0, "hangup", "silence", 3, "{}")):
        assert op_from_json(op_to_json(op)) == op
    for bad in ('{"op": "Nope"}', "[]", '{"op": "Purge", "before": 1}'):
        with pytest.raises(ValueError):
            op_from_json(bad)


# -- a real crash --------------------------------------------------------------------------

CRASHER = textwrap.dedent("""
    import asyncio, sys
    from media.clock import ManualClock
    from pipeline.metrics import Metrics
    from switchboard.config import RecordsConfig
    from switchboard.records.recorder import Recorder
    from tests.switchboard.test_records import Leg, Talker, info

    async def main():
        clock = ManualClock()
        rec = Recorder(RecordsConfig.model_validate_json(sys.argv[1]), agent="conversation",
                       metrics=Metrics(), clock=clock)
        rec.writer.open()
        rec.writer.start()
        agent = Talker(clock)
        handler = rec.wrap(info(), agent)
        await handler.on_start(Leg(info()))
        agent.turn("is anyone there", "Yes, I am here.")
        rec.tick()
        assert rec.writer.flush(10)
        agent.turn("this turn is never collected", "lost")
        print("turn written", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
""")


def test_a_killed_process_leaves_its_call_up_to_the_last_turn(
        records_config: RecordsConfig) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, records_config.model_dump_json()],
                            cwd=root,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "turn written"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    row = reader(records_config).get_call("c1")
    assert row is not None and row["ended_at"] is None and row["outcome"] is None
    assert [t["transcript"] for t in row["turns"]] == ["is anyone there"]


# -- small parts --------------------------------------------------------------------------


def test_hangup_cause() -> None:
    assert hangup_cause("remote_bye", None) == "caller"
    assert hangup_cause("hangup", "silence") == "silence"
    assert hangup_cause("media_timeout", None) == "media_timeout"


def test_query_parameters() -> None:
    q = parse_query({"since": "2023-11-14T22:13:20Z", "until": "1700000100", "agent": "echo",
                     "limit": "10", "offset": "5"})
    assert (q.since, q.until, q.agent, q.limit, q.offset) == (T0, T0 + 100, "echo", 10, 5)
    assert parse_time("2023-11-14T22:13:20") == T0  # no zone: UTC
    assert parse_time("2023-11-15T00:13:20+02:00") == T0
    for params, message in [({"since": "yesterday"}, "since: 'yesterday' is neither"),
                            ({"limit": "0"}, "limit must be 1..1000"),
                            ({"limit": "x"}, "limit must be an integer"),
                            ({"until": "nan"}, "until: 'nan' is not a time"),
                            ({"caller": "x"}, "unknown parameters ['caller']")]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
            parse_query(params)


@without_psycopg
def test_the_commands_refuse_postgres_without_psycopg_and_never_print_the_dsn(
        tmp_path: Path) -> None:
    from tests.helpers import EXE

    env = {**os.environ, "SWITCHBOARD_RECORDS__BACKEND": "postgres",
           "SWITCHBOARD_RECORDS__DSN": "postgresql://u:s3cret@db.example/calls",
           "SWITCHBOARD_HTTP__PORT": "1", "SWITCHBOARD_SIP__PORT": "1"}
    check = subprocess.run([EXE, "check-config"], capture_output=True, text=True, timeout=60,
                           env=env)
    assert check.returncode == 0 and "s3cret" not in check.stdout + check.stderr
    for args in (["serve", "--agent", "echo"], ["calls"]):
        out = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=60, env=env,
                             cwd=tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        assert "needs the psycopg package" in out.stderr and "s3cret" not in out.stderr
