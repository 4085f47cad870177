"""The HTTP side: /metrics, /healthz, /readyz. Doors and APIs add their own routes.

The outbound-call API (add_call_routes), for an operator or a CRM placing calls:
  POST /calls {"to": "sip:..." | "+1555...", "agent": "echo" | "conversation"?}
       -> 202 {"call_id", "to", "state"}; 400 bad input; 503 at the call limit
  GET  /calls/{call_id} -> {"call_id", "state", "status", "setup_time_s", ...}; 404
  POST /calls/{call_id}/transfer {"target": "sip:..."} -> 200 once the target answered;
       404 unknown call, 409 call over, 502 transfer refused or failed (with its status)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.metrics import Metrics


def build_http_app(metrics: Metrics, readiness: Callable[[], dict[str, object]]) -> web.Application:
    """`readiness()` returns {"ready": bool, ...details}; /readyz answers 503 when not ready."""
    app = web.Application(client_max_size=1 << 20)

    async def get_metrics(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
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


def add_call_routes(app: web.Application, api: CallsApi) -> None:
    """POST /calls, GET /calls/{call_id}, POST /calls/{call_id}/transfer."""

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
        try:
            return web.json_response(api.call_status(request.match_info["call_id"]))
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

    app.router.add_post("/calls", place)
    app.router.add_get("/calls/{call_id}", status)
    app.router.add_post("/calls/{call_id}/transfer", transfer)
