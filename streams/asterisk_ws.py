"""The Asterisk chan_websocket door (Asterisk 20.16+, 21.11+, 22.6+, 23).

Asterisk connects out to us: `Dial(WebSocket/<connection>/c(ulaw))` in the dialplan, or
ARI `/channels/externalMedia?transport=websocket&encapsulation=none&external_host=
<connection>`, where <connection> is a websocket_client.conf entry whose `uri` is
ws://switchboard:8080/asterisk/ws (see asterisk-config/). Its first TEXT frame is
MEDIA_START (channel id, format, optimal frame size); then BINARY frames carry the
channel's codec both ways (ulaw, alaw, slin at 8 kHz, slin16), and TEXT frames carry
events (DTMF_END, MEDIA_XOFF/XON, MEDIA_MARK_PROCESSED, ERROR, ...) and our commands.
The message format (plain text or JSON) is per call; we answer in MEDIA_START's.

Asterisk re-times what we send (it queues up to ~20 s and plays one frame per 20 ms,
silence when the queue is empty), so we may send ahead. We keep at most `max_lead_ms`
ahead of real time: what Asterisk has queued is what a barge-in must take back, which
FLUSH_MEDIA does. MEDIA_XOFF pauses our sending until MEDIA_XON. Marks fire on our
timeline, or, with marks="asterisk", when Asterisk reports MEDIA_MARK_PROCESSED for a
MARK_MEDIA sent after their audio (releases newer than the first chan_websocket ones).

Hang-up: Asterisk closes the WebSocket when the channel hangs up; when the agent hangs
up we send HANGUP, then close. chan_websocket has no transfer.

`v(caller=...,callee=...)` in the dial string adds URI parameters; they land in the
call's params (caller/callee from `caller`/`from` and `callee`/`to`/`exten`), with
MEDIA_START's fields and, in JSON, the channel's variables. When a token is configured
it is required as the websocket_client.conf `password` (HTTP Basic), ?token=,
`Authorization: Bearer` or `X-Switchboard-Token`; otherwise 403.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import WSMsgType, web

from media.g711 import alaw_encode, ulaw_encode
from media.l16 import check_l16_le
from pipeline.leg import CallHandler, CallInfo, TransferError
from streams.asterisk_ws_messages import (
    ControlMessageError,
    Event,
    MediaStart,
    build_command,
    dtmf_digit,
    media_start,
    parse_event,
)
from streams.auth import token_accepted
from streams.context import StreamContext
from streams.leg import Pacing, StreamLeg
from streams.wsdirect import delivering
from streams.wsout import WsOutbox, accept_websocket, bad_frame, close_code

__all__ = ["PATH", "SUBPROTOCOL", "TRANSPORT", "AsteriskWsDoor", "AsteriskWsLeg",
           "AsteriskWsSettings", "add_routes", "call_info"]

log = logging.getLogger(__name__)

PATH = "/asterisk/ws"
TRANSPORT = "asterisk_ws"
SUBPROTOCOL = "media"  # websocket_client.conf `protocols = media`
_MAX_QUERY_PARAMS = 64
_MAX_PARAM_CHARS = 1024
_CALLER_KEYS = ("caller", "from")
_CALLEE_KEYS = ("callee", "to", "exten")
_ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "PCMU": ulaw_encode, "PCMA": alaw_encode, "L16": check_l16_le,
}
_NOT_HANDLED = frozenset({"MEDIA_BUFFERING_COMPLETED", "QUEUE_DRAINED", "STATUS"})


@dataclass(frozen=True, slots=True)
class AsteriskWsSettings:
    token: str = field(default="", repr=False)  # "" = no token required
    max_lead_ms: int = 100  # audio sent ahead of real time
    marks: Literal["timeline", "asterisk"] = "timeline"
    answer: bool = False  # send ANSWER once the call is set up (dial string option `n`)


class ParamsError(ValueError):
    """URI parameters beyond our limits."""


def call_info(start: MediaStart, query: Mapping[str, str]) -> CallInfo:
    """CallInfo from MEDIA_START and the URI's query parameters (token removed). Params:
    MEDIA_START's fields, then channel variables, then URI parameters (the dial string's
    explicit v(...) wins)."""
    extra = {k: v for k, v in query.items() if k != "token"}
    if len(extra) > _MAX_QUERY_PARAMS:
        raise ParamsError(f"{len(extra)} URI parameters (at most {_MAX_QUERY_PARAMS})")
    if any(len(k) > 128 or len(v) > _MAX_PARAM_CHARS for k, v in extra.items()):
        raise ParamsError("a URI parameter is too long")
    params = {"connection_id": start.connection_id, "channel": start.channel,
              "channel_id": start.channel_id, "format": start.format}
    params.update(start.variables)
    params.update(extra)
    call_id = start.channel_id or start.connection_id or str(uuid.uuid4())
    return CallInfo(call_id=call_id, transport=TRANSPORT,
                    caller=next((params[k] for k in _CALLER_KEYS if params.get(k)), ""),
                    callee=next((params[k] for k in _CALLEE_KEYS if params.get(k)), ""),
                    params=params)


class AsteriskWsLeg(StreamLeg):
    """One chan_websocket connection as a CallLeg."""

    def __init__(self, info: CallInfo, handler: CallHandler, ctx: StreamContext, *,
                 ws: web.WebSocketResponse, start: MediaStart,
                 settings: AsteriskWsSettings) -> None:
        pacing = Pacing(lead_frames=max(1, settings.max_lead_ms // 20),
                        echo_marks=settings.marks == "asterisk")
        super().__init__(info, handler, ctx, codec=start.codec, wire_rate=start.rate,
                         pacing=pacing)
        self.json_format = start.json
        self.paused = False  # MEDIA_XOFF: Asterisk's queue is full
        self._encode = _ENCODERS[start.codec]
        self._wire_marks: dict[str, str] = {}  # MARK_MEDIA correlation id -> our mark
        self._mark_seq = 0
        self._outbox = WsOutbox(ws, self.close_soon, name=f"asterisk-ws-writer-{info.call_id}")

    def command(self, name: str, correlation_id: str | None = None) -> str:
        return build_command(name, json_format=self.json_format, correlation_id=correlation_id)

    def send_command(self, name: str) -> None:
        """A command ahead of any audio not yet written."""
        self._outbox.control(self.command(name))

    def set_paused(self, paused: bool) -> None:
        if paused != self.paused:
            log.info("asterisk_ws stream %s: %s", self.info.call_id,
                     "MEDIA_XOFF, pausing output" if paused else "MEDIA_XON, resuming output")
        self.paused = paused

    def _pump(self, index: int) -> None:
        if not self.paused:  # XOFF: Asterisk would drop what we send
            super()._pump(index)

    def _write_audio(self, frames: list[bytes]) -> None:
        encode, outbox = self._encode, self._outbox
        for frame in frames:
            outbox.audio(encode(frame))

    def mark_processed(self, correlation_id: str) -> bool:
        """MEDIA_MARK_PROCESSED: Asterisk played the audio before that MARK_MEDIA. False
        for an id we are not waiting for (e.g. one sent before a flush)."""
        name = self._wire_marks.get(correlation_id)
        if name is None:
            self.touch()
            return False
        for key in list(self._wire_marks):  # earlier marks: played too, Asterisk keeps order
            del self._wire_marks[key]
            if key == correlation_id:
                break
        return self.receive_mark(name)

    def _write_mark(self, name: str) -> None:
        # Our own ids: the handler's mark names need not fit Asterisk's 128-byte commands.
        self._mark_seq += 1
        wire = f"sb{self._mark_seq}"
        self._wire_marks[wire] = name
        # In order after its audio: Asterisk reports it when that audio has played.
        self._outbox.audio(self.command("MARK_MEDIA", correlation_id=wire))

    def _write_clear(self) -> None:
        self._wire_marks.clear()  # FLUSH_MEDIA drops the marks queued in Asterisk too
        self._outbox.drop_audio()
        self.send_command("FLUSH_MEDIA")  # take back what Asterisk has queued

    async def _close_wire(self, reason: str) -> None:
        if reason not in ("remote_hangup", "disconnect"):
            self.send_command("HANGUP")  # hang the channel up, not just the media
        await self._outbox.close(reason)

    async def transfer(self, target: str) -> None:
        raise TransferError(
            "Asterisk chan_websocket streams cannot transfer a call: route it over SIP "
            "(asterisk-config/pjsip.conf) to let the agent transfer with REFER")


class AsteriskWsDoor:
    def __init__(self, ctx: StreamContext, settings: AsteriskWsSettings) -> None:
        self.ctx = ctx
        self.settings = settings

    def _authorised(self, request: web.Request) -> bool:
        token = self.settings.token  # websocket_client.conf's password arrives as Basic
        return not token or token_accepted(request, (token,), basic=True)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            log.warning("asterisk_ws stream from %s refused: bad or missing token",
                        request.remote)
            self.ctx.refused(TRANSPORT, "forbidden")
            return web.Response(status=403, text="missing or wrong token\n")
        query = dict(request.query)
        return await accept_websocket(request, self.ctx, TRANSPORT,
                                      lambda ws: self._serve(ws, query),
                                      protocols=(SUBPROTOCOL,))

    async def _refuse(self, ws: web.WebSocketResponse, reason: str, invalid: str) -> None:
        self.ctx.invalid(TRANSPORT, invalid)
        self.ctx.refused(TRANSPORT, reason)
        await ws.close(code=close_code(reason), message=invalid.encode())

    async def _serve(self, ws: web.WebSocketResponse, query: dict[str, str]) -> None:
        try:
            first = await self.ctx.within_idle(ws.receive())
        except TimeoutError:
            await self._refuse(ws, "timeout", "no_media_start")
            return
        if first.type is not WSMsgType.TEXT:
            if first.type is WSMsgType.BINARY:
                log.warning("asterisk_ws stream refused: media before MEDIA_START")
                await self._refuse(ws, "protocol_error", "no_media_start")
            elif first.type is WSMsgType.ERROR:
                await self._refuse(ws, "protocol_error", "too_large")
            return
        try:
            start = media_start(parse_event(first.data))
            info = call_info(start, query)
        except (ControlMessageError, ParamsError) as exc:
            log.warning("asterisk_ws stream refused: %s", exc)
            await self._refuse(ws, "bad_request", "media_start")
            return
        handler = self.ctx.handler_for(info)
        if isinstance(handler, str):
            await ws.close(code=close_code(handler), message=handler.encode())
            return
        leg = AsteriskWsLeg(info, handler, self.ctx, ws=ws, start=start, settings=self.settings)
        if self.settings.answer:
            leg.send_command("ANSWER")
        leg.start()
        reason = "disconnect"
        try:
            reason = await self._read(ws, leg)
        finally:
            await leg.close(reason)

    async def _read(self, ws: web.WebSocketResponse, leg: AsteriskWsLeg) -> str:
        # Audio skips the queue (streams.wsdirect).
        with delivering(ws, lambda data: self._deliver(leg, data)):
            return await self._read_queued(ws, leg)

    def _deliver(self, leg: AsteriskWsLeg, data: str | bytes) -> bool:
        """Audio straight from the parser; control messages are left to the reader."""
        if isinstance(data, str):
            return False
        if data:
            leg.receive_audio(data)
        return True

    async def _read_queued(self, ws: web.WebSocketResponse, leg: AsteriskWsLeg) -> str:
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                if msg.data:
                    leg.receive_audio(msg.data)
            elif msg.type is WSMsgType.TEXT:
                reason = self._text(leg, msg.data)
                if reason is not None:
                    return reason
            else:  # ERROR: the message was too big or the frame broken
                return bad_frame(self.ctx, TRANSPORT, msg)
        # Asterisk closes the WebSocket when the channel hangs up.
        return "remote_hangup" if ws.close_code in (1000, 1001) else "disconnect"

    def _text(self, leg: AsteriskWsLeg, text: str) -> str | None:
        try:
            event = parse_event(text)
            leg.touch()
            self._event(leg, event)
        except ControlMessageError as exc:
            log.warning("asterisk_ws stream %s: bad control message: %s", leg.info.call_id, exc)
            self.ctx.invalid(TRANSPORT, "malformed")
            return "protocol_error"
        return None

    def _event(self, leg: AsteriskWsLeg, event: Event) -> None:
        name = event.name
        if name == "DTMF_END":
            leg.receive_dtmf(dtmf_digit(event), "text")
        elif name == "MEDIA_XOFF":
            leg.set_paused(True)
        elif name == "MEDIA_XON":
            leg.set_paused(False)
        elif name == "MEDIA_MARK_PROCESSED":
            if not leg.mark_processed(event.get("correlation_id")):
                log.debug("asterisk_ws stream %s: mark %r not awaited (flushed?)",
                          leg.info.call_id, event.get("correlation_id"))
        elif name == "ERROR":
            log.warning("asterisk_ws stream %s: Asterisk says: %s", leg.info.call_id,
                        event.get("error_text")[:200])
        elif name == "MEDIA_START":
            raise ControlMessageError("a second MEDIA_START")
        elif name not in _NOT_HANDLED:
            log.debug("asterisk_ws stream %s: event %s ignored", leg.info.call_id, name)


def add_routes(app: web.Application, ctx: StreamContext,
               settings: AsteriskWsSettings) -> AsteriskWsDoor:
    """Register GET /asterisk/ws (chan_websocket connects here) on the HTTP app."""
    door = AsteriskWsDoor(ctx, settings)
    app.router.add_get(PATH, door.handle)
    return door
