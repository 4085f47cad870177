"""What a call-record store does, whatever the database: the writes, the query, the rows.

Writes are small operations (ops) made on the event loop and applied in batches by the
writer thread (switchboard.records.writer), each batch in one transaction. Every op is
idempotent, so a batch that failed half way (locked database, full disk) is simply
applied again later. Rows are keyed by `uid`, a fresh id per call: a SIP Call-ID is the
caller's choice and may come back, `call_id` is indexed for look-ups.

Times are wall-clock epoch seconds (a record is read by people and other hosts); the
event times inside a record stay call-relative, as the call log made them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

__all__ = [
    "CallAnswered",
    "CallEnded",
    "CallQuery",
    "CallStarted",
    "EventsSaved",
    "Op",
    "Purge",
    "RecordStore",
    "RecordStoreError",
    "TurnSaved",
    "iso",
    "op_from_json",
    "op_to_json",
]

# Bounded `kind` label of records_write_errors_total.
ERROR_KINDS = ("locked", "disk_full", "unavailable", "overflow", "other")


class RecordStoreError(Exception):
    """The database refused a write or a read; `kind` is one of ERROR_KINDS."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind if kind in ERROR_KINDS else "other"


# -- writes -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallStarted:
    uid: str
    call_id: str
    transport: str
    direction: str  # inbound | outbound
    caller: str
    callee: str
    agent: str
    node: str  # host:pid that took the call
    started_at: float
    params: str  # JSON object


@dataclass(frozen=True, slots=True)
class CallAnswered:
    uid: str
    answered_at: float


@dataclass(frozen=True, slots=True)
class TurnSaved:
    uid: str
    index: int
    data: str  # JSON: pipeline.calllog.TurnRecord.to_dict() plus its call time "t"


@dataclass(frozen=True, slots=True)
class EventsSaved:
    uid: str
    rows: tuple[tuple[int, float, str, str], ...]  # (seq, t, kind, JSON fields)


@dataclass(frozen=True, slots=True)
class CallEnded:
    uid: str
    ended_at: float
    outcome: str
    cause: str
    turns: int
    summary: str  # JSON: dtmf, barge_ins, errors


@dataclass(frozen=True, slots=True)
class Purge:
    """Retention: delete up to `limit` calls started before `before` (bounded work)."""

    before: float
    limit: int


Op = CallStarted | CallAnswered | TurnSaved | EventsSaved | CallEnded | Purge
_OPS: dict[str, type[Op]] = {t.__name__: t for t in (CallStarted, CallAnswered, TurnSaved,
                                                    EventsSaved, CallEnded, Purge)}


def op_to_json(op: Op) -> str:
    """One op as a JSON line (writes kept in a file when the database is out of reach)."""
    fields = {name: getattr(op, name) for name in op.__dataclass_fields__}
    return json.dumps({"op": type(op).__name__, **fields}, separators=(",", ":"))


def op_from_json(line: str) -> Op:
    """The op of op_to_json; ValueError for anything else."""
    data = json.loads(line)
    if not isinstance(data, dict) or data.get("op") not in _OPS:
        raise ValueError(f"not a call-record write: {line[:80]!r}")
    kind = _OPS[data.pop("op")]
    if kind is EventsSaved:
        data["rows"] = tuple(tuple(row) for row in data.get("rows", ()))
    try:
        return kind(**data)
    except TypeError as e:
        raise ValueError(f"bad {kind.__name__}: {e}") from None


# -- reads ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallQuery:
    since: float | None = None  # started_at >= since
    until: float | None = None  # started_at < until
    agent: str | None = None
    outcome: str | None = None
    transport: str | None = None
    limit: int = 50
    offset: int = 0

    def where(self, mark: str = "?") -> tuple[str, list[Any]]:
        """The WHERE clause (or "") and its parameters, in the driver's placeholder."""
        terms: list[str] = []
        args: list[Any] = []
        for column, op, value in (("started_at", ">=", self.since),
                                  ("started_at", "<", self.until),
                                  ("agent", "=", self.agent), ("outcome", "=", self.outcome),
                                  ("transport", "=", self.transport)):
            if value is not None:
                terms.append(f"{column} {op} {mark}")
                args.append(value)
        return (" WHERE " + " AND ".join(terms) if terms else ""), args


class RecordStore(Protocol):
    """A database of call records. Synchronous: used from the writer thread, or from a
    worker thread (asyncio.to_thread) for reads; never from the event loop itself.
    Every method raises RecordStoreError for database trouble."""

    def apply(self, ops: Sequence[Op]) -> int:
        """Apply the ops in one transaction; returns how many calls a Purge deleted."""
        ...

    def list_calls(self, query: CallQuery) -> list[dict[str, Any]]:
        """Call summaries (no turns or events), newest first."""
        ...

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        """One whole record by call id (or record id); the newest if the id came back."""
        ...

    def close(self) -> None: ...


# -- rows as JSON -----------------------------------------------------------------------


SUMMARY_COLUMNS = ("uid", "call_id", "transport", "direction", "caller", "callee", "agent",
                   "node", "started_at", "answered_at", "ended_at", "outcome", "cause", "turns",
                   "params", "summary")


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def summary_json(row: Mapping[str, Any], loads: Any) -> dict[str, Any]:
    """A calls row as the API and the CLI show it."""
    answered, ended = row["answered_at"], row["ended_at"]
    extra = loads(row["summary"]) if row["summary"] else {}
    return {
        "id": row["uid"],
        "call_id": row["call_id"],
        "transport": row["transport"],
        "direction": row["direction"],
        "caller": row["caller"],
        "callee": row["callee"],
        "agent": row["agent"],
        "node": row["node"],
        "started_at": iso(row["started_at"]),
        "answered_at": iso(answered),
        "ended_at": iso(ended),
        "duration_s": round(ended - answered, 3) if answered is not None and ended is not None
        else None,
        "outcome": row["outcome"],  # None while the call is up (or was cut off by a crash)
        "cause": row["cause"],
        "turn_count": row["turns"],
        "dtmf": extra.get("dtmf", ""),
        "barge_ins": extra.get("barge_ins", 0),
        "errors": extra.get("errors", 0),
        "params": loads(row["params"]) if row["params"] else {},
    }


def transcript(turns: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Caller words and the answers the caller heard, in order (as CallLog.transcript)."""
    lines: list[dict[str, str]] = []
    for t in turns:
        if t.get("transcript"):
            lines.append({"role": "caller", "text": t["transcript"]})
        if t.get("heard"):
            lines.append({"role": "bot", "text": t["heard"]})
    return lines
