"""The Twilio Media Streams door: the voice webhook and the bidirectional stream.

POST /twilio/voice answers Twilio's voice webhook with
`<Connect><Stream url="wss://.../twilio/stream">` and <Parameter>s carrying the call's
From, To and CallSid plus the webhook URL's own query parameters (routing data such as
?agent=sales), so they come back in the stream's `start` message.

GET /twilio/stream is the stream. Inbound μ-law media goes into the leg on Twilio's
media timeline (timestamp / 20 ms), so the jitter buffer absorbs WebSocket jitter.
Outbound audio goes out as whole 160-byte μ-law frames, paced on the shared clock and at
most `max_lead_ms` ahead of real time; a mark follows each spoken chunk, and the handler
hears on_mark(played=True) only when Twilio echoes it back. clear_audio sends `clear`
at once (it jumps the write queue and drops unsent audio); unechoed marks are reported
not played. `stop` ends the call.

With an auth token configured, both the webhook and the WebSocket upgrade must carry a
valid X-Twilio-Signature (HMAC over the public URL Twilio used, and the POST fields):
missing or wrong is 403. Behind a proxy, set streams.public_base_url so the URL we check
is the one Twilio signed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web
from multidict import MultiDict
from twilio.request_validator import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)
from twilio.twiml.voice_response import Connect, VoiceResponse

from media.g711 import ulaw_encode
from pipeline.leg import CallHandler, CallInfo, TransferError
from streams.context import StreamContext
from streams.leg import Pacing, StreamLeg
from streams.twilio_messages import (
    Connected,
    Dtmf,
    Mark,
    Media,
    OutboundMessages,
    Start,
    Stop,
    TwilioMessageError,
    UnknownEventError,
    media_fields,
    parse_message,
)
from streams.twilio_rest import TwilioCalls, TwilioRestError
from streams.wsdirect import delivering
from streams.wsout import WsOutbox, accept_websocket, bad_frame, close_code

__all__ = ["STREAM_PATH", "VOICE_PATH", "TwilioDoor", "TwilioLeg", "TwilioSettings", "add_routes"]

log = logging.getLogger(__name__)

VOICE_PATH = "/twilio/voice"
STREAM_PATH = "/twilio/stream"
TRANSPORT = "twilio"
_FORWARDED = ("From", "To", "CallSid")  # webhook fields passed on as stream parameters
_MAX_CUSTOM = 16  # query parameters passed through, at most
_MAX_VALUE = 256
# Asked by the webhook before it connects a stream: why no agent would answer this call
# (None: one would). A reason gets <Reject/>, so the caller hears the carrier's refusal.
RouteCheck = Callable[[CallInfo], "str | None"]


@dataclass(frozen=True, slots=True)
class TwilioSettings:
    auth_token: str = field(default="", repr=False)  # "" = no signature check
    public_base_url: str | None = None  # https://host[:port][/prefix], as Twilio sees us
    max_lead_ms: int = 100
    rest: TwilioCalls | None = None  # REST hang-up / transfer; None: stream only
    route_check: RouteCheck | None = None


class TwilioLeg(StreamLeg):
    """One Twilio Media Stream as a CallLeg."""

    def __init__(self, info: CallInfo, handler: CallHandler, ctx: StreamContext, *,
                 ws: web.WebSocketResponse, stream_sid: str, call_sid: str,
                 max_lead_ms: int = 100, rest: TwilioCalls | None = None) -> None:
        lead = max(1, max_lead_ms // 20)
        super().__init__(info, handler, ctx, codec="PCMU", wire_rate=8000,
                         pacing=Pacing(lead_frames=lead, echo_marks=True))
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self._rest = rest
        self._messages = OutboundMessages(stream_sid)
        self._outbox = WsOutbox(ws, self.close_soon, name=f"twilio-writer-{stream_sid}")

    def _write_audio(self, frames: list[bytes]) -> None:
        media, outbox = self._messages.media, self._outbox
        for frame in frames:
            outbox.audio(media(ulaw_encode(frame)))

    def _write_mark(self, name: str) -> None:
        self._outbox.audio(self._messages.mark(name))  # in order, right after its audio

    def _write_clear(self) -> None:
        self._outbox.drop_audio()
        self._outbox.control(self._messages.clear())

    async def _close_wire(self, reason: str) -> None:
        await self._outbox.close(reason)

    async def transfer(self, target: str) -> None:
        if self._rest is None:
            raise TransferError(
                "Twilio transfer needs streams.twilio.account_sid and auth_token configured")
        if self.reason is not None:
            raise TransferError("the call has already ended")
        await self._rest.transfer(self.call_sid, target)
        await self.close("transfer")

    async def hangup(self, reason: str = "hangup") -> None:
        if self._rest is not None and self.reason is None:
            try:
                await self._rest.hangup(self.call_sid)
            except TwilioRestError as exc:
                # Closing the stream still ends <Connect>, and the call with it.
                log.warning("twilio call %s: REST hang-up failed: %s", self.call_sid, exc)
        await super().hangup(reason)


class TwilioDoor:
    def __init__(self, ctx: StreamContext, settings: TwilioSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        self._validator = RequestValidator(settings.auth_token) if settings.auth_token else None

    # -- signatures ------------------------------------------------------------------------

    def _bases(self, request: web.Request, websocket: bool) -> list[str]:
        """scheme://host[/prefix] as Twilio reaches us: the first is the one we advertise."""
        base = self.settings.public_base_url
        if base is not None:
            if websocket:
                base = "wss" + base[5:] if base.startswith("https") else "ws" + base[4:]
            return [base]
        # No public URL configured: trust the Host header, either scheme (TLS may end at
        # a proxy in front of us). The HMAC still binds the host, path and fields.
        schemes = ("wss", "ws") if websocket else ("https", "http")
        if request.secure:
            schemes = schemes[:1]
        return [f"{scheme}://{request.host}" for scheme in schemes]

    def _signed(self, request: web.Request, params: MultiDict[str], websocket: bool) -> bool:
        if self._validator is None:
            return True
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            return False
        settings = request.headers.get(SIGNATURE_SETTINGS_HEADER)
        algorithm = get_signature_algorithm(settings) if settings else None
        return any(
            self._validator.validate(url, params, signature, algorithm)
            for url in (base + request.path_qs for base in self._bases(request, websocket))
        )

    # -- the webhook -----------------------------------------------------------------------

    async def voice(self, request: web.Request) -> web.Response:
        form = await request.post()
        fields: MultiDict[str] = MultiDict(
            (k, v) for k, v in form.items() if isinstance(v, str)
        )
        if not self._signed(request, fields, websocket=False):
            log.warning("twilio webhook from %s refused: bad or missing signature",
                        request.remote)
            self.ctx.refused(TRANSPORT, "forbidden")
            return web.Response(status=403, text="invalid Twilio signature\n")
        stream_url = self._bases(request, websocket=True)[0] + STREAM_PATH
        params: dict[str, str] = {}
        for name in _FORWARDED:
            value = fields.get(name)
            if value:
                params[name] = value[:_MAX_VALUE]
        for name, value in list(request.query.items())[:_MAX_CUSTOM]:
            if name not in params and len(name) <= 64:
                params[name] = value[:_MAX_VALUE]
        response = VoiceResponse()
        if self._no_route(params):
            self.ctx.refused(TRANSPORT, "no_route")
            response.reject()
            return web.Response(text=str(response), content_type="text/xml")
        connect = Connect()
        stream = connect.stream(url=stream_url)
        for name, value in params.items():
            stream.parameter(name=name, value=value)
        response.append(connect)
        return web.Response(text=str(response), content_type="text/xml")

    def _no_route(self, params: dict[str, str]) -> bool:
        """The call as the stream will present it (From, To, query parameters) has no
        agent in the dialplan."""
        check = self.settings.route_check
        if check is None:
            return False
        info = CallInfo(call_id=params.get("CallSid", ""), transport=TRANSPORT,
                        caller=params.get("From", ""), callee=params.get("To", ""),
                        params=params)
        return check(info) is not None

    # -- the stream -------------------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if not self._signed(request, MultiDict(), websocket=True):
            log.warning("twilio stream from %s refused: bad or missing signature",
                        request.remote)
            self.ctx.refused(TRANSPORT, "forbidden")
            return web.Response(status=403, text="invalid Twilio signature\n")
        return await accept_websocket(request, self.ctx, TRANSPORT, self._serve)

    async def _serve(self, ws: web.WebSocketResponse) -> None:
        start = await self._await_start(ws)
        if start is None:
            return
        fmt = start.media_format
        if (fmt.encoding, fmt.sample_rate, fmt.channels) != ("audio/x-mulaw", 8000, 1):
            log.warning("twilio stream %s refused: media format %s", start.stream_sid, fmt)
            await self._refuse(ws, "bad_request", "media_format")
            return
        params = dict(start.custom_parameters)
        params.update(callSid=start.call_sid, streamSid=start.stream_sid,
                      accountSid=start.account_sid)
        info = CallInfo(call_id=start.call_sid or start.stream_sid, transport=TRANSPORT,
                        caller=params.get("From", ""), callee=params.get("To", ""),
                        params=params)
        handler = self.ctx.handler_for(info)
        if isinstance(handler, str):
            await ws.close(code=close_code(handler), message=handler.encode())
            return
        leg = TwilioLeg(info, handler, self.ctx, ws=ws, stream_sid=start.stream_sid,
                        call_sid=start.call_sid, max_lead_ms=self.settings.max_lead_ms,
                        rest=self.settings.rest)
        leg.start()
        reason = "disconnect"
        try:
            reason = await self._read(ws, leg)
        finally:
            await leg.close(reason)

    async def _refuse(self, ws: web.WebSocketResponse, reason: str, invalid: str) -> None:
        self.ctx.invalid(TRANSPORT, invalid)
        self.ctx.refused(TRANSPORT, reason)
        await ws.close(code=close_code(reason), message=invalid.encode())

    async def _await_start(self, ws: web.WebSocketResponse) -> Start | None:
        """`connected` then `start`, within the idle timeout. None: refused or gone."""
        try:
            return await self.ctx.within_idle(self._first_start(ws))
        except TimeoutError:
            await self._refuse(ws, "timeout", "no_start")
            return None

    async def _first_start(self, ws: web.WebSocketResponse) -> Start | None:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                await self._refuse(ws, "protocol_error", _error_kind(msg))
                return None
            try:
                message = parse_message(msg.data)
            except UnknownEventError:
                self.ctx.invalid(TRANSPORT, "unknown_event")
                continue
            except TwilioMessageError as exc:
                log.warning("twilio stream refused: %s", exc)
                await self._refuse(ws, "protocol_error", "malformed")
                return None
            if isinstance(message, Start):
                return message
            if not isinstance(message, Connected):
                self.ctx.invalid(TRANSPORT, "out_of_order")
        return None

    async def _read(self, ws: web.WebSocketResponse, leg: TwilioLeg) -> str:
        """Dispatch the stream's messages until it ends; returns why it ended."""
        # Media, marks and digits skip the queue (streams.wsdirect).
        with delivering(ws, lambda data: self._deliver(leg, data)):
            return await self._read_queued(ws, leg)

    def _deliver(self, leg: TwilioLeg, data: str | bytes) -> bool:
        """A message straight from the parser: True when dispatched. A stop, anything
        malformed or out of order is left to _read_queued, which ends the stream."""
        fields = media_fields(data)  # the common case, without building a Media
        if fields is not None:
            self._media(leg, fields[0], fields[1], fields[2], fields[3])
            return True
        try:
            message = parse_message(data)
        except TwilioMessageError:
            return False
        if type(message) not in _DIRECT:
            return False
        self._dispatch(leg, message)
        return True

    async def _read_queued(self, ws: web.WebSocketResponse, leg: TwilioLeg) -> str:
        sid, invalid, receive = leg.stream_sid, self.ctx.invalid, ws.receive
        while True:  # `async for msg in ws`, less one coroutine per message
            msg = await receive()
            if msg.type in _ENDED:
                break
            if msg.type is not WSMsgType.TEXT:  # binary, too big or broken: the stream ends
                return bad_frame(self.ctx, TRANSPORT, msg, _error_kind(msg))
            try:
                message = parse_message(msg.data)
            except UnknownEventError:
                invalid(TRANSPORT, "unknown_event")
                leg.touch()
                continue
            except TwilioMessageError as exc:
                log.warning("twilio stream %s: %s", sid, exc)
                invalid(TRANSPORT, "malformed")
                return "protocol_error"
            if isinstance(message, Stop):
                return "remote_stop"
            if type(message) in _DIRECT:
                self._dispatch(leg, message)
            else:
                invalid(TRANSPORT, "out_of_order")
        return "disconnect"

    def _dispatch(self, leg: TwilioLeg, message: Media | Mark | Dtmf) -> None:
        if isinstance(message, Media):
            self._media(leg, message.stream_sid, message.track, message.timestamp,
                        message.payload)
        elif isinstance(message, Mark):
            leg.receive_mark(message.name)
        else:
            leg.receive_dtmf(message.digit, "stream")

    def _media(self, leg: TwilioLeg, sid: str, track: str, timestamp: int,
               payload: bytes) -> None:
        if sid != leg.stream_sid:
            self.ctx.invalid(TRANSPORT, "wrong_stream")
        elif track == "inbound":
            leg.receive_audio(payload, (timestamp + 10) // 20)


# Messages that never end a stream: the ones the parser may hand over directly.
_DIRECT = frozenset({Media, Mark, Dtmf})
_ENDED = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED})


def _error_kind(msg: object) -> str:
    """Why a non-text frame ended the stream, as a metric label."""
    data = getattr(msg, "data", None)
    if getattr(msg, "type", None) is WSMsgType.ERROR and getattr(data, "code", None) == 1009:
        return "too_large"
    return "binary" if getattr(msg, "type", None) is WSMsgType.BINARY else "transport_error"


def add_routes(app: web.Application, ctx: StreamContext, settings: TwilioSettings) -> TwilioDoor:
    """Register POST /twilio/voice and GET /twilio/stream on the HTTP app."""
    door = TwilioDoor(ctx, settings)
    app.router.add_post(VOICE_PATH, door.voice)
    app.router.add_get(STREAM_PATH, door.stream)
    return door
