"""The SQLite call-record store: one file, WAL journal, safe for several processes.

WAL lets the HTTP API and `switchboard calls` read while the writer writes, and with
synchronous=NORMAL a committed transaction survives the process being killed (only a
power cut can lose the last ones). A writer waits `busy_timeout` for a lock held by
another connection, then the batch fails as "locked" and is retried by the writer.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from switchboard.records.store import (
    SUMMARY_COLUMNS,
    CallAnswered,
    CallEnded,
    CallQuery,
    CallStarted,
    EventsSaved,
    Op,
    Purge,
    RecordStoreError,
    TurnSaved,
    summary_json,
    transcript,
)

__all__ = ["SqliteStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    uid TEXT PRIMARY KEY,
    call_id TEXT NOT NULL,
    transport TEXT NOT NULL,
    direction TEXT NOT NULL,
    caller TEXT NOT NULL,
    callee TEXT NOT NULL,
    agent TEXT NOT NULL,
    node TEXT NOT NULL,
    started_at REAL NOT NULL,
    answered_at REAL,
    ended_at REAL,
    outcome TEXT,
    cause TEXT,
    turns INTEGER NOT NULL DEFAULT 0,
    params TEXT NOT NULL DEFAULT '{}',
    summary TEXT
);
CREATE INDEX IF NOT EXISTS calls_started_at ON calls (started_at);
CREATE INDEX IF NOT EXISTS calls_call_id ON calls (call_id);
CREATE TABLE IF NOT EXISTS turns (
    uid TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (uid, idx)
);
CREATE TABLE IF NOT EXISTS events (
    uid TEXT NOT NULL,
    seq INTEGER NOT NULL,
    t REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (uid, seq)
);
"""


def _kind(exc: sqlite3.Error) -> str:
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "locked"
    if "full" in text:  # SQLITE_FULL: "database or disk is full"
        return "disk_full"
    if "unable to open" in text or "readonly" in text or "disk i/o" in text:
        return "unavailable"
    return "other"


class SqliteStore:
    """RecordStore on one SQLite file. One connection per user at a time: the writer
    thread has its own, each read (a worker thread) opens a short-lived read-only one."""

    def __init__(self, path: str | Path, *, readonly: bool = False,
                 busy_timeout: float = 2.0) -> None:
        self.path = str(path)
        self.journal_mode = ""
        try:
            if readonly:  # a reader never creates the file nor takes a write lock
                uri = f"{Path(self.path).resolve().as_uri()}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, timeout=busy_timeout,
                                           isolation_level=None, check_same_thread=False)
            else:
                self._db = sqlite3.connect(self.path, timeout=busy_timeout,
                                           isolation_level=None, check_same_thread=False)
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                self.journal_mode = str(mode).lower()
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(SCHEMA)
            self._db.row_factory = sqlite3.Row
        except sqlite3.Error as exc:
            raise RecordStoreError(_kind(exc), f"{self.path}: {exc}") from None

    # -- writes -------------------------------------------------------------------------

    def apply(self, ops: Sequence[Op]) -> int:
        db, purged = self._db, 0
        try:
            db.execute("BEGIN IMMEDIATE")  # take the write lock now, not half way
            try:
                for op in ops:
                    purged += self._apply(op)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back by itself already
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise RecordStoreError(_kind(exc), f"{self.path}: {exc}") from None
        return purged

    def _apply(self, op: Op) -> int:
        db = self._db
        if isinstance(op, CallStarted):
            db.execute(
                "INSERT OR IGNORE INTO calls (uid, call_id, transport, direction, caller, callee,"
                " agent, node, started_at, params) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (op.uid, op.call_id, op.transport, op.direction, op.caller, op.callee, op.agent,
                 op.node, op.started_at, op.params))
        elif isinstance(op, CallAnswered):
            db.execute("UPDATE calls SET answered_at = ? WHERE uid = ?", (op.answered_at, op.uid))
        elif isinstance(op, TurnSaved):
            db.execute("INSERT OR REPLACE INTO turns (uid, idx, data) VALUES (?, ?, ?)",
                       (op.uid, op.index, op.data))
            db.execute("UPDATE calls SET turns = MAX(turns, ?) WHERE uid = ?", (op.index, op.uid))
        elif isinstance(op, EventsSaved):
            db.executemany("INSERT OR REPLACE INTO events (uid, seq, t, kind, data)"
                           " VALUES (?, ?, ?, ?, ?)", [(op.uid, *row) for row in op.rows])
        elif isinstance(op, CallEnded):
            db.execute("UPDATE calls SET ended_at = ?, outcome = ?, cause = ?,"
                       " turns = MAX(turns, ?), summary = ? WHERE uid = ?",
                       (op.ended_at, op.outcome, op.cause, op.turns, op.summary, op.uid))
        elif isinstance(op, Purge):
            return self._purge(op)
        return 0

    def _purge(self, op: Purge) -> int:
        uids = [r[0] for r in self._db.execute(
            "SELECT uid FROM calls WHERE started_at < ? ORDER BY started_at LIMIT ?",
            (op.before, op.limit))]
        if not uids:
            return 0
        marks = ",".join("?" * len(uids))
        for table in ("events", "turns", "calls"):
            self._db.execute(f"DELETE FROM {table} WHERE uid IN ({marks})", uids)
        return len(uids)

    # -- reads --------------------------------------------------------------------------

    def list_calls(self, query: CallQuery) -> list[dict[str, Any]]:
        where, args = query.where("?")
        sql = (f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM calls{where}"
               " ORDER BY started_at DESC LIMIT ? OFFSET ?")
        try:
            rows = self._db.execute(sql, [*args, query.limit, query.offset]).fetchall()
        except sqlite3.Error as exc:
            raise RecordStoreError(_kind(exc), f"{self.path}: {exc}") from None
        return [summary_json(r, json.loads) for r in rows]

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        db = self._db
        try:
            row = db.execute(
                f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM calls WHERE call_id = ? OR uid = ?"
                " ORDER BY started_at DESC LIMIT 1", (call_id, call_id)).fetchone()
            if row is None:
                return None
            uid = row["uid"]
            turns = [json.loads(r[0]) for r in db.execute(
                "SELECT data FROM turns WHERE uid = ? ORDER BY idx", (uid,))]
            events = [{"t": r[0], "event": r[1], **json.loads(r[2])} for r in db.execute(
                "SELECT t, kind, data FROM events WHERE uid = ? ORDER BY seq", (uid,))]
        except sqlite3.Error as exc:
            raise RecordStoreError(_kind(exc), f"{self.path}: {exc}") from None
        record = summary_json(row, json.loads)
        record.update(transcript=transcript(turns), turns=turns, events=events)
        return record

    def close(self) -> None:
        self._db.close()
