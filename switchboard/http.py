"""The HTTP side: /metrics, /healthz, /readyz. Doors and APIs add their own routes.

The outbound-call API (add_call_routes), for an operator or a CRM placing calls:
  POST /calls {"to": "sip:..." | "+1555...", "agent": "echo" | "conversation"?}
       -> 202 {"call_id", "to", "state"}; 400 bad input; 503 at the call limit
  GET  /calls/{call_id} -> {"call_id", "state", "status", "setup_time_s", ...}; 404
       With call records (switchboard.records), GET /calls lists records and GET
       /calls/{call_id} answers for any call: its record, with an outbound call's live
       fields ("state", "status", ...) on top while the outbound API knows it.
  POST /calls/{call_id}/transfer {"target": "sip:..."} -> 200 once the target answered;
       404 unknown call, 409 call over, 502 transfer refused or failed (with its status)
All of them need http.api_token (or console.token) when one is set, and answer only
loopback clients when none is: placing calls on the trunk is never open to the world.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.metrics import Metrics
from streams.auth import is_loopback, token_accepted


def build_http_app(metrics: Metrics, readiness: Callable[[], dict[str, object]], *,
                   merge: Callable[[bytes], Awaitable[bytes]] | None = None) -> web.Application:
    """`readiness()` returns {"ready": bool, ...details}; /readyz answers 503 when not ready.
    `merge` adds other processes' metrics to this one's (stream workers)."""
    app = web.Application(client_max_size=1 << 20)

    async def get_metrics(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        if merge is not None:
            body = await merge(body)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        state = readiness()
        return web.json_response(state, status=200 if state.get("ready") else 503)

    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class ApiError(Exception):
    """An API request that cannot be served: the HTTP status and a plain message."""

    def __init__(self, status: int, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields


class CallsApi(Protocol):
    async def place_call(self, to: str, agent: str | None) -> dict[str, Any]: ...

    def call_status(self, call_id: str) -> dict[str, Any]: ...

    async def transfer_call(self, call_id: str, target: str) -> dict[str, Any]: ...


class RecordsApi(Protocol):
    """Call records (switchboard.records.api.RecordsHttp); raise ApiError (400, 503)."""

    async def list_records(self, params: Mapping[str, str]) -> dict[str, Any]: ...

    async def get_record(self, call_id: str) -> dict[str, Any] | None: ...


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def _string(body: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{key!r} must be a non-empty string")
    if len(value) > 512:
        raise ApiError(400, f"{key!r} is too long")
    return value.strip()


def api_access(request: web.Request, tokens: Sequence[str]) -> bool:
    """May this request use the calls API? With tokens configured, it must offer one
    (Authorization: Bearer, X-Switchboard-Token, or ?token=); without, it must come from
    loopback: POST /calls places calls on the trunk, so it is never open to the world."""
    if not any(tokens):
        return is_loopback(request.remote)
    return token_accepted(request, tokens)


def add_call_routes(app: web.Application, api: CallsApi,
                    records: RecordsApi | None = None, *,
                    tokens: Sequence[str] = ()) -> None:
    """POST /calls, GET /calls/{call_id}, POST /calls/{call_id}/transfer; with records,
    GET /calls too. Every one needs api_access(request, tokens)."""

    def error(e: ApiError) -> web.Response:
        return web.json_response({"error": e.message, **e.fields}, status=e.status)

    async def place(request: web.Request) -> web.Response:
        try:
            body = await _json_object(request)
            unknown = sorted(set(body) - {"to", "agent"})
            if unknown:
                raise ApiError(400, f"unknown fields {unknown}; expected 'to' and 'agent'")
            to = _string(body, "to", required=True)
            assert to is not None
            result = await api.place_call(to, _string(body, "agent", required=False))
        except ApiError as e:
            return error(e)
        return web.json_response(result, status=202)

    async def status(request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        try:
            live: dict[str, Any] | None = api.call_status(call_id)
        except ApiError as e:
            if e.status != 404 or records is None:
                return error(e)
            live = None
        record = None
        if records is not None:
            try:
                record = await records.get_record(call_id)
            except ApiError as e:
                if live is None:
                    return error(e)
        if record is None and live is None:
            return error(ApiError(404, f"no call {call_id!r}"))
        # The outbound API's live fields keep their names (state, status, end_reason).
        return web.json_response({**(record or {}), **(live or {})})

    async def listing(request: web.Request) -> web.Response:
        assert records is not None
        try:
            return web.json_response(await records.list_records(request.query))
        except ApiError as e:
            return error(e)

    async def transfer(request: web.Request) -> web.Response:
        try:
            target = _string(await _json_object(request), "target", required=True)
            assert target is not None
            result = await api.transfer_call(request.match_info["call_id"], target)
        except ApiError as e:
            return error(e)
        return web.json_response(result)

    def guarded(handler: Callable[[web.Request], Awaitable[web.Response]]
                ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def check(request: web.Request) -> web.Response:
            if not api_access(request, tokens):
                return error(ApiError(403, "missing or wrong API token (http.api_token)"
                                      if any(tokens) else "the calls API answers loopback "
                                      "clients only until http.api_token is set"))
            return await handler(request)
        return check

    app.router.add_post("/calls", guarded(place))
    if records is not None:
        app.router.add_get("/calls", guarded(listing))
    app.router.add_get("/calls/{call_id}", guarded(status))
    app.router.add_post("/calls/{call_id}/transfer", guarded(transfer))
