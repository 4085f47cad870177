"""The browser door: the console's Talk page calls an agent over one WebSocket.

    GET /console/ws[?token=...]   (WebSocket)

Page -> us:
  1. text  {"type": "start", "agent": "<name>", "caller": "<optional label>"}
  2. binary frames of little-endian 16-bit PCM, 16 kHz mono, 20 ms multiples (640 bytes
     per 20 ms; the page's AudioWorklet downsamples from the AudioContext's rate)
  3. text  {"type": "hangup"} ends the call (closing the socket does too)
Us -> page:
  text  {"type": "started", "call_id", "agent", "sample_rate": 16000, "frame_ms": 20}
  binary 20 ms frames of the same PCM, paced like RTP (a little ahead of real time, so
        the page's jitter buffer never runs dry)
  text  {"type": "clear"} at barge-in: the page drops what it has not played yet
  text  the call's live events (streams.browser_events: state, transcript, turn with
        its latency waterfall, barge_in, phrase)
  text  {"type": "hangup", "reason": "..."} just before we close;
        {"type": "error", "message": "..."} before closing on a bad start

Limits are the other doors' (StreamContext: concurrent streams, message size, idle
timeout); text that is not JSON, audio that is not whole 20 ms frames or audio before
the start message end the stream, counted in stream_messages_invalid_total{browser}.

Access (console_access, also used by the console's HTTP API): with a token configured
it must come as ?token=, `Authorization: Bearer <token>` or `X-Switchboard-Token`; with
none, only loopback clients are served, so the console is local until a token is set.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from media.l16 import check_l16_le
from pipeline.leg import CallHandler, CallInfo
from streams.auth import is_loopback, token_accepted
from streams.browser_events import ConsoleEvents, state_message
from streams.context import StreamContext
from streams.leg import Pacing, StreamLeg
from streams.wsout import WsOutbox, accept_websocket, bad_frame, close_code

__all__ = ["CLEAR", "FRAME_BYTES", "PATH", "RATE", "BrowserDoor", "BrowserLeg",
           "BrowserMessageError", "BrowserSettings", "StartMessage", "add_routes",
           "console_access"]

log = logging.getLogger(__name__)

PATH = "/console/ws"
TRANSPORT = "browser"
RATE = 16000
FRAME_BYTES = RATE // 50 * 2  # 20 ms of 16-bit mono
CLEAR = '{"type":"clear"}'
_MAX_NAME = 64


def _no_agents() -> Sequence[str]:
    return ()


@dataclass(frozen=True, slots=True)
class BrowserSettings:
    token: str = field(default="", repr=False)  # "" = loopback clients only
    agents: Callable[[], Sequence[str]] = _no_agents  # the names a caller may pick
    max_lead_ms: int = 100  # audio sent ahead of real time (the page buffers it)


class BrowserMessageError(ValueError):
    """A text frame from the page that is not a message we accept."""


@dataclass(frozen=True, slots=True)
class StartMessage:
    agent: str
    caller: str = ""

    @classmethod
    def parse(cls, text: str) -> StartMessage:
        data = _json_object(text)
        if data.get("type") != "start":
            raise BrowserMessageError("the first message must be {\"type\": \"start\", ...}")
        agent, caller = data.get("agent"), data.get("caller", "")
        if not isinstance(agent, str) or not agent or len(agent) > _MAX_NAME:
            raise BrowserMessageError(f"start.agent must be a name of 1..{_MAX_NAME} characters")
        if not isinstance(caller, str) or len(caller) > _MAX_NAME:
            raise BrowserMessageError(f"start.caller must be text of at most {_MAX_NAME} "
                                      "characters")
        return cls(agent, caller.strip())


def _json_object(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise BrowserMessageError("text frame is not JSON") from None
    if not isinstance(data, dict):
        raise BrowserMessageError("text frame is not a JSON object")
    return data


def console_access(request: web.Request, token: str) -> bool:
    """May this request use the console? See the module docstring."""
    if not token:
        return is_loopback(request.remote)
    return token_accepted(request, (token,))


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


class BrowserLeg(StreamLeg):
    """One Talk page's call as a CallLeg; it also relays the call's live events."""

    def __init__(self, info: CallInfo, handler: CallHandler, ctx: StreamContext, *,
                 ws: web.WebSocketResponse, settings: BrowserSettings) -> None:
        super().__init__(info, handler, ctx, codec="L16", wire_rate=RATE,
                         pacing=Pacing(lead_frames=max(1, settings.max_lead_ms // 20)))
        self._outbox = WsOutbox(ws, self.close_soon, name=f"browser-writer-{info.call_id}")
        self._events = ConsoleEvents()
        self._unsubscribe: Callable[[], None] | None = None

    def send_event(self, message: Mapping[str, Any]) -> None:
        """A text message for the page; it goes ahead of audio not yet written."""
        self._outbox.control(_dumps(message))

    async def _run_start(self) -> None:
        await super()._run_start()
        if self._ready:
            self._follow()

    def _follow(self) -> None:
        """Relay the agent's call log (a conversation has one; the echo agent has none)."""
        calllog = getattr(self.handler, "calllog", None)
        subscribe = getattr(calllog, "subscribe", None)
        if subscribe is None:
            self.send_event(state_message("listening"))
            return
        self._unsubscribe = subscribe(self._on_event, replay=True)
        state = getattr(getattr(self.handler, "state", None), "value", None)
        if isinstance(state, str):  # the replay may hold no state change yet
            self.send_event(state_message(state))

    def _on_event(self, entry: dict[str, Any]) -> None:
        if self.reason is None:
            message = self._events.message(entry)
            if message is not None:
                self.send_event(message)

    def _write_audio(self, frames: list[bytes]) -> None:
        for frame in frames:
            self._outbox.audio(check_l16_le(frame))

    def _write_clear(self) -> None:
        self._outbox.drop_audio()
        self._outbox.control(CLEAR)

    async def _close_wire(self, reason: str) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.send_event({"type": "hangup", "reason": reason})
        await self._outbox.close(reason)


class BrowserDoor:
    def __init__(self, ctx: StreamContext, settings: BrowserSettings) -> None:
        self.ctx = ctx
        self.settings = settings

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not console_access(request, self.settings.token):
            log.warning("browser stream from %s refused: %s", request.remote,
                        "bad or missing token" if self.settings.token else "not loopback")
            self.ctx.refused(TRANSPORT, "forbidden")
            return web.Response(status=403, text="missing or wrong console token\n")
        remote = request.remote or ""
        agent = request.headers.get("User-Agent", "")[:200]
        return await accept_websocket(
            request, self.ctx, TRANSPORT, lambda ws: self._serve(ws, remote, agent))

    async def _refuse(self, ws: web.WebSocketResponse, reason: str, invalid: str | None,
                      message: str) -> None:
        """Tell the page why, and close. `invalid` None: already counted (the factory's
        refusal, by StreamContext.handler_for)."""
        if invalid is not None:
            self.ctx.invalid(TRANSPORT, invalid)
            self.ctx.refused(TRANSPORT, reason)
        if ws.closed:
            return
        try:
            await ws.send_str(_dumps({"type": "error", "message": message}))
        except ConnectionError:
            return  # the page is gone already
        await ws.close(code=close_code(reason), message=reason.encode())

    async def _serve(self, ws: web.WebSocketResponse, remote: str, user_agent: str) -> None:
        try:
            first = await self.ctx.within_idle(ws.receive())
        except TimeoutError:
            await self._refuse(ws, "timeout", "no_start", "no start message")
            return
        if first.type is not WSMsgType.TEXT:
            if first.type is WSMsgType.BINARY:
                await self._refuse(ws, "bad_request", "no_start", "audio before start")
            elif first.type is WSMsgType.ERROR:
                await self._refuse(ws, "protocol_error", "too_large", "message too large")
            return
        try:
            start = StartMessage.parse(first.data)
        except BrowserMessageError as exc:
            log.warning("browser stream refused: %s", exc)
            await self._refuse(ws, "bad_request", "malformed", str(exc))
            return
        if start.agent not in self.settings.agents():
            await self._refuse(ws, "bad_request", "agent", f"no agent {start.agent!r}")
            return
        info = CallInfo(call_id=str(uuid.uuid4()), transport=TRANSPORT,
                        caller=start.caller or f"browser {remote}", callee=start.agent,
                        params={"remote": remote, "user_agent": user_agent},
                        agent=start.agent)
        handler = self.ctx.handler_for(info)
        if isinstance(handler, str):
            await self._refuse(ws, handler, None, f"call refused: {handler}")
            return
        leg = BrowserLeg(info, handler, self.ctx, ws=ws, settings=self.settings)
        leg.send_event({"type": "started", "call_id": info.call_id, "agent": start.agent,
                        "sample_rate": RATE, "frame_ms": 20})
        leg.start()
        reason = "disconnect"
        try:
            reason = await self._read(ws, leg)
        finally:
            await leg.close(reason)

    async def _read(self, ws: web.WebSocketResponse, leg: BrowserLeg) -> str:
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                data = msg.data
                if not data or len(data) % FRAME_BYTES:
                    log.warning("browser stream %s: %d-byte audio message is not whole "
                                "20 ms frames", leg.info.call_id, len(data))
                    self.ctx.invalid(TRANSPORT, "frame_size")
                    return "protocol_error"
                leg.receive_audio(data)
            elif msg.type is WSMsgType.TEXT:
                try:
                    data = _json_object(msg.data)
                except BrowserMessageError as exc:
                    log.warning("browser stream %s: %s", leg.info.call_id, exc)
                    self.ctx.invalid(TRANSPORT, "malformed")
                    return "protocol_error"
                leg.touch()
                if data.get("type") == "hangup":
                    return "remote_hangup"
                log.debug("browser stream %s: text ignored: %.80s", leg.info.call_id, msg.data)
            else:  # ERROR: the message was too big or the frame broken
                return bad_frame(self.ctx, TRANSPORT, msg)
        return "disconnect"


def add_routes(app: web.Application, ctx: StreamContext, settings: BrowserSettings
               ) -> BrowserDoor:
    """Register GET /console/ws (the Talk page's WebSocket) on the HTTP app."""
    door = BrowserDoor(ctx, settings)
    app.router.add_get(PATH, door.handle)
    return door
