"""The browser console: Talk (call an agent from the microphone) and Watch (the calls up
now, and recent ones from the call records), served by Switchboard's own HTTP server.

    GET /console/                the Talk page
    GET /console/watch           the Watch page
    GET /console/static/...      their scripts, styles and AudioWorklet processors
    GET /console/ws              the browser door (streams.browser)
    GET /console/api/agents      {"agents": [name, ...]}
    GET /console/api/calls       {"active": [call, ...], "count": n}  (ActiveCalls)

The pages are plain files (no build step). The WebSocket and the API need the console
token when one is configured (console.token), and come from loopback otherwise; the
pages themselves hold nothing secret and are served to anyone who can reach the port.
Recent calls on the Watch page come from the records API (GET /calls, /calls/{id}).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from aiohttp import web

from streams import browser
from streams.context import StreamContext
from switchboard.console.live import ActiveCalls

__all__ = ["STATIC", "ActiveCalls", "Console"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
_NO_CACHE = {"Cache-Control": "no-cache"}


class Console:
    def __init__(self, *, token: str, ctx: StreamContext, agents: Callable[[], Sequence[str]],
                 calls: ActiveCalls, max_lead_ms: int = 100,
                 more_calls: Callable[[], Awaitable[list[dict[str, object]]]] | None = None,
                 ) -> None:
        self.token = token
        self.more_calls = more_calls  # the stream workers' calls (switchboard.workers)
        self.ctx = ctx
        self.agents = agents
        self.calls = calls
        self.settings = browser.BrowserSettings(token=token, agents=agents,
                                                max_lead_ms=max_lead_ms)

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/console", self._to_talk)
        r.add_get("/console/", self._page("talk.html"))
        r.add_get("/console/watch", self._page("watch.html"))
        r.add_static("/console/static", STATIC, append_version=False)
        r.add_get("/console/api/agents", self._agents)
        r.add_get("/console/api/calls", self._active)
        browser.add_routes(app, self.ctx, self.settings)
        log.info("browser console at /console/ (%s)",
                 "token required" if self.token else "loopback clients only: no console.token")

    async def _to_talk(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/console/" + (f"?{request.query_string}"
                                           if request.query_string else ""))

    def _page(self, name: str) -> Callable[[web.Request], object]:
        path = STATIC / name

        async def page(_: web.Request) -> web.FileResponse:
            return web.FileResponse(path, headers=_NO_CACHE)

        return page

    def _check(self, request: web.Request) -> None:
        if not browser.console_access(request, self.token):
            raise web.HTTPForbidden(
                text='{"error": "missing or wrong console token"}\n',
                content_type="application/json")

    async def _agents(self, request: web.Request) -> web.Response:
        self._check(request)
        return web.json_response({"agents": list(self.agents())}, headers=_NO_CACHE)

    async def _active(self, request: web.Request) -> web.Response:
        self._check(request)
        calls = self.calls.snapshot()
        if self.more_calls is not None:
            calls += await self.more_calls()
        return web.json_response({"active": calls, "count": len(calls)}, headers=_NO_CACHE)
