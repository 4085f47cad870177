"""The HTTP side: /metrics, /healthz, /readyz. Doors and APIs add their own routes."""

from __future__ import annotations

from collections.abc import Callable

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
