"""Call records over HTTP: GET /calls (filtered, paged) and the record half of
GET /calls/{id} (switchboard.http merges it with an outbound call's live state).

    GET /calls?since=2024-05-01T00:00:00Z&until=1714600000&agent=echo&outcome=remote_bye
              &transport=sip&limit=50&offset=0
        -> {"calls": [summary, ...], "count": n, "limit": 50, "offset": 0}
    GET /calls/{id} -> the summary plus "transcript", "turns" and "events"

since/until take ISO 8601 (a time without a zone is UTC) or epoch seconds. Summaries are
newest first; "outcome" is null while a call is up (or when a crash cut it off).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from switchboard.http import ApiError
from switchboard.records.recorder import Recorder
from switchboard.records.store import CallQuery, RecordStoreError

__all__ = ["MAX_LIMIT", "RecordsHttp", "parse_query", "parse_time"]

MAX_LIMIT = 1000
_FILTERS = ("since", "until", "agent", "outcome", "transport", "limit", "offset")


def parse_time(text: str) -> float:
    """ISO 8601 ("2024-05-01", "2024-05-01T12:00:00+02:00", "...Z") or epoch seconds."""
    text = text.strip()
    try:
        epoch = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(epoch):
            raise ValueError(f"{text!r} is not a time")
        return epoch
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither ISO 8601 nor epoch seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _int(params: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    raw = params.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{key} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{key} must be {low}..{high}, got {value}")
    return value


def parse_query(params: Mapping[str, str]) -> CallQuery:
    """A CallQuery from query-string parameters; ValueError says which one is wrong."""
    unknown = sorted(set(params) - set(_FILTERS))
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; filters are {list(_FILTERS)}")
    times: dict[str, float | None] = {}
    for key in ("since", "until"):
        raw = params.get(key)
        try:
            times[key] = parse_time(raw) if raw else None
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
    text = {k: (params.get(k) or None) for k in ("agent", "outcome", "transport")}
    return CallQuery(since=times["since"], until=times["until"], agent=text["agent"],
                     outcome=text["outcome"], transport=text["transport"],
                     limit=_int(params, "limit", 50, 1, MAX_LIMIT),
                     offset=_int(params, "offset", 0, 0, 10**9))


class RecordsHttp:
    """switchboard.http.RecordsApi over a Recorder: bad filters are 400, a database
    that cannot be read is 503."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def list_records(self, params: Mapping[str, str]) -> dict[str, Any]:
        try:
            query = parse_query(params)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        try:
            calls = await self.recorder.list_calls(query)
        except RecordStoreError as e:
            raise ApiError(503, f"call records cannot be read ({e.kind}): {e}") from None
        return {"calls": calls, "count": len(calls), "limit": query.limit,
                "offset": query.offset}

    async def get_record(self, call_id: str) -> dict[str, Any] | None:
        try:
            return await self.recorder.get_call(call_id)
        except RecordStoreError as e:
            raise ApiError(503, f"call records cannot be read ({e.kind}): {e}") from None
