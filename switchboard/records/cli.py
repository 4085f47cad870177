"""`switchboard calls`: the call records in a terminal, read from the configured database.

    switchboard calls [--since T] [--until T] [--agent A] [--outcome O] [--transport D]
                      [--limit N] [--offset N] [--json]
    switchboard calls <call-id> [--json]      # one call, with its transcript

T is ISO 8601 or epoch seconds. Times are shown in local time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from typing import Any

from switchboard.config import load_config
from switchboard.records import open_store
from switchboard.records.api import parse_query
from switchboard.records.store import RecordStoreError

__all__ = ["add_calls_command", "format_call", "format_table"]

_COLUMNS = ("time", "door", "caller", "callee", "agent", "duration", "outcome", "turns",
            "call id")


def _local(iso: str | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    if not iso:
        return "-"
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime(fmt)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def format_table(calls: list[dict[str, Any]]) -> str:
    """One line per call, columns padded to their widest cell."""
    rows = [_COLUMNS] + [(
        _local(c["started_at"]), c["transport"], c["caller"] or "-", c["callee"] or "-",
        c["agent"], _duration(c["duration_s"]),
        c["outcome"] or ("up" if c["ended_at"] is None else "-"),
        str(c["turn_count"]), c["call_id"],
    ) for c in calls]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def format_call(call: dict[str, Any]) -> str:
    """One call: who, when, how it ended, then the conversation turn by turn."""
    lines = [
        f"call {call['call_id']}  ({call['transport']}, {call['direction']}, agent "
        f"{call['agent']})",
        f"  from {call['caller'] or '-'} to {call['callee'] or '-'}",
        f"  started  {_local(call['started_at'])}",
        f"  answered {_local(call['answered_at'])}",
        f"  ended    {_local(call['ended_at'])}  after {_duration(call['duration_s'])}: "
        f"{call['outcome'] or 'in progress (or cut off)'}"
        + (f" ({call['cause']})" if call.get("cause") and call["cause"] != call["outcome"]
           else ""),
    ]
    if call.get("dtmf"):
        lines.append(f"  DTMF     {call['dtmf']}")
    if call.get("barge_ins"):
        lines.append(f"  barge-ins {call['barge_ins']}")
    turns = call.get("turns") or []
    if turns:
        lines.append("")
    for turn in turns:
        timings = turn.get("timings") or {}
        latency = timings.get("response_latency")
        head = f"  turn {turn.get('index')} [{turn.get('outcome')}]"
        if latency is not None:
            head += f" response {latency:.2f} s"
        lines.append(head)
        lines.append(f"    caller: {turn.get('transcript') or '(nothing heard)'}")
        if turn.get("answer"):
            heard = turn.get("heard") or ""
            lines.append(f"    bot:    {heard or '(not heard)'}")
            if heard != turn["answer"]:
                lines.append(f"    (said:  {turn['answer']})")
        if turn.get("error"):
            lines.append(f"    error:  {turn['error']}")
    events = [e for e in call.get("events") or [] if e.get("event") in ("dtmf", "barge_in")]
    if events and not turns:
        lines.append("")
        for e in events:
            what = e.get("digit", "") if e["event"] == "dtmf" else ""
            lines.append(f"  {e['t']:8.2f} s  {e['event']} {what}".rstrip())
    return "\n".join(lines)


def run_calls_command(args: argparse.Namespace) -> int:
    config = load_config(args.config or os.environ.get("SWITCHBOARD_CONFIG"))
    params = {k: str(v) for k, v in (("since", args.since), ("until", args.until),
                                     ("agent", args.agent), ("outcome", args.outcome),
                                     ("transport", args.transport), ("limit", args.limit),
                                     ("offset", args.offset)) if v is not None}
    try:
        query = parse_query(params)
    except ValueError as e:
        print(f"switchboard calls: {e}", file=sys.stderr)
        return 2
    try:
        store = open_store(config.records, readonly=True)
    except RecordStoreError as e:
        print(f"switchboard calls: no call records to read ({e})", file=sys.stderr)
        return 1
    try:
        if args.call_id:
            call = store.get_call(args.call_id)
            if call is None:
                print(f"switchboard calls: no call {args.call_id!r}", file=sys.stderr)
                return 1
            print(json.dumps(call, indent=2) if args.json else format_call(call))
            return 0
        calls = store.list_calls(query)
    except RecordStoreError as e:
        print(f"switchboard calls: cannot read the call records ({e})", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(json.dumps(calls, indent=2) if args.json else format_table(calls))
    return 0


def add_calls_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The `calls` subcommand, for switchboard.cli."""
    p = sub.add_parser("calls", help="list call records, or show one call with its transcript")
    p.add_argument("call_id", nargs="?", help="show this call (its call id or record id)")
    p.add_argument("--config", "-c", help="YAML config file (or $SWITCHBOARD_CONFIG)")
    p.add_argument("--since", help="calls started at or after (ISO 8601 or epoch seconds)")
    p.add_argument("--until", help="calls started before (ISO 8601 or epoch seconds)")
    p.add_argument("--agent", help="only this agent")
    p.add_argument("--outcome", help="only this outcome (remote_bye, hangup, shutdown, ...)")
    p.add_argument("--transport",
                   help="only this door (sip, twilio, freeswitch, audiosocket, asterisk_ws)")
    p.add_argument("--limit", type=int, default=50, help="at most this many calls (50)")
    p.add_argument("--offset", type=int, default=0, help="skip this many of the newest")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_calls_command)
