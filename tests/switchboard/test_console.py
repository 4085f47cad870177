"""The console's server side without a browser: the active-call registry (ActiveCalls,
LiveHandler) and the pages and API routes, on a real aiohttp server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from media.clock import ManualClock
from pipeline.calllog import CallLog
from pipeline.echo import EchoHandler
from pipeline.leg import CallInfo, CallLeg
from pipeline.metrics import Metrics
from streams.context import StreamContext
from switchboard.app import Switchboard
from switchboard.config import Config
from switchboard.console import ActiveCalls, Console
from switchboard.console.live import LiveHandler

TOKEN = "watch-token"
INFO = CallInfo(call_id="c-1", transport="sip", caller="alice", callee="bot")


class Agent:
    """A conversation's outside: a call log made at on_start, a state, call_closed."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.calllog: CallLog | None = None
        self.closed: str | None = None
        self.frames = 0

    async def on_start(self, leg: CallLeg) -> None:
        self.calllog = CallLog(leg.info, self.clock)
        self.calllog.event("state", logging.DEBUG, state="speaking")  # the greeting

    def on_frame(self, pcm: bytes) -> None:
        self.frames += 1

    def on_dtmf(self, digit: str) -> None:
        pass

    def on_mark(self, mark: str, played: bool) -> None:
        pass

    async def on_end(self, reason: str) -> None:
        pass

    def call_closed(self, reason: str) -> None:
        self.closed = reason


class Leg:
    def __init__(self, info: CallInfo) -> None:
        self.info = info


async def test_a_call_is_listed_from_ringing_to_its_end() -> None:
    clock = ManualClock(100.0)
    calls = ActiveCalls(clock, wall=lambda: 1_700_000_000.0)
    agent = Agent(clock)
    handler = calls.wrap(INFO, agent, agent="front-desk")
    (ringing,) = calls.snapshot()
    assert (ringing["state"], ringing["answered"], ringing["agent"]) == (
        "ringing", False, "front-desk")
    assert ringing["started_at"] == 1_700_000_000.0 and ringing["transport"] == "sip"

    await handler.on_start(Leg(INFO))  # type: ignore[arg-type]
    assert calls.snapshot()[0]["state"] == "speaking"  # replayed from the call log
    handler.on_frame(bytes(640))
    assert agent.frames == 1 and handler.on_frame == agent.on_frame  # nothing in between
    log = agent.calllog
    assert log is not None and handler.calllog is log  # the agent's attributes show through
    log.event("state", logging.DEBUG, state="thinking")
    log.event("caller_said", turn=1, text="When do you open?")
    turn = log.new_turn(clock.now())
    turn.heard = "At nine."
    log.turn_done(turn, "answered")
    clock.advance(12.5)
    (up,) = calls.snapshot()
    assert (up["state"], up["turns"], up["last_caller"], up["last_agent"]) == (
        "thinking", 1, "When do you open?", "At nine.")
    assert up["duration_s"] == 12.5

    handler.call_closed("remote_bye")
    assert calls.snapshot() == [] and agent.closed == "remote_bye"
    assert not log._listeners  # unsubscribed
    await handler.on_end("remote_bye")  # after call_closed: harmless
    assert len(calls) == 0


async def test_calls_that_never_start_are_dropped_after_a_while() -> None:
    clock = ManualClock(0.0)
    calls = ActiveCalls(clock, abandon_s=300.0)
    calls.wrap(INFO, EchoHandler(), agent="echo")
    started = calls.wrap(CallInfo("c-2", "twilio"), EchoHandler(), agent="echo")
    await started.on_start(Leg(CallInfo("c-2", "twilio")))  # type: ignore[arg-type]
    clock.advance(301)
    assert [c["call_id"] for c in calls.snapshot()] == ["c-2"]
    assert calls.snapshot()[0]["state"] == "listening"  # no call log: listening throughout
    await started.on_end("hangup")
    assert calls.snapshot() == []


def test_the_app_wraps_every_call_for_the_console() -> None:
    config = Config.model_validate({"agent": "echo", "records": {"enabled": False}})
    app = Switchboard(config, metrics=Metrics(CollectorRegistry()), clock=ManualClock(0.0))
    handler = app.handler_for(CallInfo("b-1", "browser", agent="echo"))
    assert isinstance(handler, LiveHandler) and isinstance(handler.inner, EchoHandler)
    assert [(c["call_id"], c["agent"]) for c in app.live.snapshot()] == [("b-1", "echo")]
    paths = {r.resource.canonical for r in app.http_app.router.routes() if r.resource}
    assert {"/console/", "/console/watch", "/console/ws", "/console/api/calls"} <= paths


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient, ActiveCalls]]:
    clock = ManualClock(0.0)
    ctx = StreamContext(handler_factory=lambda info: EchoHandler(),
                        metrics=Metrics(CollectorRegistry()), clock=clock)
    calls = ActiveCalls(clock)
    app = web.Application()
    Console(token=TOKEN, ctx=ctx, agents=lambda: ["echo", "front-desk"],
            calls=calls).add_routes(app)
    c = TestClient(TestServer(app, host="127.0.0.1"))
    await c.start_server()
    yield c, calls
    await c.close()


async def test_pages_and_static_files_are_served(client: tuple[TestClient, ActiveCalls]
                                                 ) -> None:
    c, _ = client
    resp = await c.get("/console?token=abc", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/console/?token=abc"
    for path, needle in (("/console/", 'id="call"'), ("/console/watch", 'id="active"'),
                         ("/console/static/talk.js", "talkStats"),
                         ("/console/static/capture-worklet.js", "registerProcessor"),
                         ("/console/static/playback-worklet.js", "registerProcessor"),
                         ("/console/static/console.css", "prefers-color-scheme")):
        resp = await c.get(path)  # pages hold no secrets: no token needed
        assert resp.status == 200, path
        assert needle in await resp.text(), path
    assert (await c.get("/console/static/../__init__.py")).status in (403, 404)


async def test_the_api_needs_the_token(client: tuple[TestClient, ActiveCalls]) -> None:
    c, calls = client
    for path in ("/console/api/agents", "/console/api/calls"):
        assert (await c.get(path)).status == 403
        assert (await c.get(path, headers={"X-Switchboard-Token": "nope"})).status == 403
    resp = await c.get("/console/api/agents", headers={"Authorization": f"Bearer {TOKEN}"})
    assert await resp.json() == {"agents": ["echo", "front-desk"]}
    calls.wrap(INFO, EchoHandler(), agent="echo")
    resp = await c.get(f"/console/api/calls?token={TOKEN}")
    body = await resp.json()
    assert body["count"] == 1 and body["active"][0]["call_id"] == "c-1"
    assert resp.headers["Cache-Control"] == "no-cache"
