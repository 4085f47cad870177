"""The PostgreSQL call-record store, for several Switchboard nodes sharing one database.

Same rows and the same behaviour as the SQLite store: each batch of writes is one
transaction, committed (synchronous_commit, the server's default) before the writer
takes the next, so a crash of a node loses at most the turn in progress. The schema is
made, and later migrated, by the first writer to connect: under an advisory lock, so
nodes starting together do not race, with its version in switchboard_records_schema.

psycopg (3) is imported here only: SQLite users do not need it. The DSN's password
never appears in a message: errors name the server as user@host:port/dbname.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

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

__all__ = ["MIGRATIONS", "BadRecord", "PostgresStore", "describe_dsn"]

# Each entry moves the schema one version up; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS calls (
        uid TEXT PRIMARY KEY,
        call_id TEXT NOT NULL,
        transport TEXT NOT NULL,
        direction TEXT NOT NULL,
        caller TEXT NOT NULL,
        callee TEXT NOT NULL,
        agent TEXT NOT NULL,
        node TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        answered_at DOUBLE PRECISION,
        ended_at DOUBLE PRECISION,
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
        t DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (uid, seq)
    );
    """,
)
_SCHEMA_LOCK = 0x5357_4244_5245_43  # pg_advisory_xact_lock key: "SWBDREC"

# SQLSTATE -> records_write_errors_total kind. Anything else a server says about the
# connection, its resources or our rights means the database is out of reach for now.
_LOCKED = {"55P03", "40P01", "40001", "57014"}  # lock_timeout, deadlock, serialization
_DISK_FULL = {"53100"}


class BadRecord(Exception):
    """The server refused one write's data (not the database being away): the writer
    then applies the batch op by op and gives up only the op that fails."""


def describe_dsn(dsn: str) -> str:
    """user@host:port/dbname for messages: never the password (nor the DSN text)."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "postgresql (unparsable records.dsn)"
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname', '')}"


def check_dsn(dsn: str) -> None:
    """ValueError, without the DSN's text, when libpq cannot parse it."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise ValueError(_scrub(str(exc), dsn)) from None


def _scrub(text: str, dsn: str) -> str:
    """`text` with the DSN's password (and the DSN itself) blanked out."""
    try:
        password = str(conninfo_to_dict(dsn).get("password") or "")
    except psycopg.Error:
        password = ""
    for secret in (dsn, password):
        if secret:
            text = text.replace(secret, "***")
    return " ".join(text.split())  # libpq's hints come on lines of their own: one line


def _kind(exc: psycopg.Error) -> str:
    state = exc.sqlstate or ""
    if state in _LOCKED:
        return "locked"
    if state in _DISK_FULL:
        return "disk_full"
    return "unavailable" if isinstance(exc, psycopg.OperationalError) or state[:2] in (
        "08", "28", "3D", "53", "57", "25") or state == "42501" else "other"


def _is_bad_data(exc: psycopg.Error) -> bool:
    return isinstance(exc, psycopg.DataError | psycopg.IntegrityError)


def _text(value: str) -> str:
    return value.replace("\x00", "")  # PostgreSQL text cannot hold NUL; a caller may send one


class PostgresStore:
    """RecordStore on a PostgreSQL database. One connection, used by one thread at a time
    (the writer's, or a worker thread for a read); a broken one is reopened at the next
    write."""

    def __init__(self, dsn: str, *, readonly: bool = False, busy_timeout: float = 2.0,
                 connect_timeout: int = 5) -> None:
        self._dsn = dsn
        self.where = describe_dsn(dsn)
        self.readonly = readonly
        self.busy_timeout = busy_timeout
        self.connect_timeout = max(2, int(connect_timeout))  # libpq's floor is 2 s
        self.schema_version = 0
        self._conn = self._connect()

    def _error(self, exc: psycopg.Error) -> RecordStoreError:
        message = _scrub(str(exc), self._dsn) or type(exc).__name__
        return RecordStoreError(_kind(exc), f"{self.where}: {message}")

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self._dsn, autocommit=True, row_factory=dict_row,
                                   connect_timeout=self.connect_timeout)
        except psycopg.Error as exc:
            raise self._error(exc) from None
        try:
            # A lock held elsewhere fails this batch as "locked" (retried), not a stuck writer.
            conn.execute(f"SET lock_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("SET statement_timeout = 30000")
            if self.readonly:
                conn.execute("SET default_transaction_read_only = on")
            else:
                self._migrate(conn)
        except psycopg.Error as exc:
            conn.close()
            raise self._error(exc) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS switchboard_records_schema"
                         " (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) AS v FROM switchboard_records_schema"
                               ).fetchone()
            version = int(row["v"]) if row and row["v"] is not None else 0
            if version > len(MIGRATIONS):
                raise RecordStoreError("other", (
                    f"{self.where}: the call-record schema is version {version}, newer than "
                    f"this Switchboard knows ({len(MIGRATIONS)}); upgrade Switchboard"))
            for step in MIGRATIONS[version:]:
                conn.execute(step)
            if version < len(MIGRATIONS):
                conn.execute("DELETE FROM switchboard_records_schema")
                conn.execute("INSERT INTO switchboard_records_schema (version) VALUES (%s)",
                             (len(MIGRATIONS),))
        self.schema_version = len(MIGRATIONS)

    # -- writes -------------------------------------------------------------------------

    def apply(self, ops: Sequence[Op]) -> int:
        if self._conn.closed or self._conn.broken:
            self._conn = self._connect()  # the server went away and may be back
        purged = 0
        try:
            # Pipeline mode: the batch's statements go out without waiting for each
            # answer, one round trip per batch instead of one per write (a remote server).
            with self._conn.pipeline(), self._conn.transaction():
                for op in ops:
                    purged += self._apply(op)
        except psycopg.Error as exc:
            if _is_bad_data(exc):
                raise BadRecord(_scrub(str(exc), self._dsn)) from None
            raise self._error(exc) from None
        return purged

    def _apply(self, op: Op) -> int:
        db = self._conn
        if isinstance(op, CallStarted):
            db.execute(
                "INSERT INTO calls (uid, call_id, transport, direction, caller, callee, agent,"
                " node, started_at, params) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (uid) DO NOTHING",
                (op.uid, _text(op.call_id), op.transport, op.direction, _text(op.caller),
                 _text(op.callee), _text(op.agent), op.node, op.started_at, _text(op.params)))
        elif isinstance(op, CallAnswered):
            db.execute("UPDATE calls SET answered_at = %s WHERE uid = %s",
                       (op.answered_at, op.uid))
        elif isinstance(op, TurnSaved):
            db.execute("INSERT INTO turns (uid, idx, data) VALUES (%s, %s, %s)"
                       " ON CONFLICT (uid, idx) DO UPDATE SET data = EXCLUDED.data",
                       (op.uid, op.index, _text(op.data)))
            db.execute("UPDATE calls SET turns = GREATEST(turns, %s) WHERE uid = %s",
                       (op.index, op.uid))
        elif isinstance(op, EventsSaved):
            with db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO events (uid, seq, t, kind, data) VALUES (%s, %s, %s, %s, %s)"
                    " ON CONFLICT (uid, seq) DO UPDATE SET t = EXCLUDED.t, kind = EXCLUDED.kind,"
                    " data = EXCLUDED.data",
                    [(op.uid, seq, t, kind, _text(data)) for seq, t, kind, data in op.rows])
        elif isinstance(op, CallEnded):
            db.execute("UPDATE calls SET ended_at = %s, outcome = %s, cause = %s,"
                       " turns = GREATEST(turns, %s), summary = %s WHERE uid = %s",
                       (op.ended_at, op.outcome, op.cause, op.turns, _text(op.summary), op.uid))
        elif isinstance(op, Purge):
            return self._purge(op)
        return 0

    def _purge(self, op: Purge) -> int:
        uids = [r["uid"] for r in self._conn.execute(
            "SELECT uid FROM calls WHERE started_at < %s ORDER BY started_at LIMIT %s",
            (op.before, op.limit))]
        if uids:
            for table in ("events", "turns", "calls"):
                self._conn.execute(f"DELETE FROM {table} WHERE uid = ANY(%s)", (uids,))
        return len(uids)

    # -- reads --------------------------------------------------------------------------

    def list_calls(self, query: CallQuery) -> list[dict[str, Any]]:
        where, args = query.where("%s")
        sql = (f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM calls{where}"
               " ORDER BY started_at DESC LIMIT %s OFFSET %s")
        try:
            rows = self._conn.execute(sql, [*args, query.limit, query.offset]).fetchall()
        except psycopg.Error as exc:
            raise self._read_error(exc) from None
        return [summary_json(r, json.loads) for r in rows]

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        db = self._conn
        try:
            with db.transaction():  # the row, its turns and events as of one moment
                db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                row = db.execute(
                    f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM calls WHERE call_id = %s"
                    " OR uid = %s ORDER BY started_at DESC LIMIT 1", (call_id, call_id)
                ).fetchone()
                if row is None:
                    return None
                uid = row["uid"]
                turns = [json.loads(r["data"]) for r in db.execute(
                    "SELECT data FROM turns WHERE uid = %s ORDER BY idx", (uid,))]
                events = [{"t": r["t"], "event": r["kind"], **json.loads(r["data"])}
                          for r in db.execute("SELECT t, kind, data FROM events WHERE uid = %s"
                                              " ORDER BY seq", (uid,))]
        except psycopg.Error as exc:
            raise self._read_error(exc) from None
        record = summary_json(row, json.loads)
        record.update(transcript=transcript(turns), turns=turns, events=events)
        return record

    def _read_error(self, exc: psycopg.Error) -> RecordStoreError:
        if isinstance(exc, pgerrors.UndefinedTable):  # as SQLite's reader with no file yet
            return RecordStoreError("unavailable", f"{self.where}: no call records here yet "
                                    "(`switchboard serve` makes the tables)")
        return self._error(exc)

    def close(self) -> None:
        self._conn.close()
