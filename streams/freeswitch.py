"""The FreeSWITCH door: mod_audio_stream's WebSocket.

`uuid_audio_stream <uuid> start ws://switchboard:8080/freeswitch?token=... mono 8k [metadata]`
connects here. The module first sends the optional metadata as one text frame (JSON or
plain text; it lands in the call's params), then binary frames of little-endian L16 at
8 or 16 kHz, 20 ms multiples. The rate comes from the metadata (`sample_rate`: 8000,
16000, "8k" or "16k") or from config.

Back to FreeSWITCH, per config:
- stream_audio (the open-source module): {"type":"streamAudio","data":{"audioDataType":
  "raw","sampleRate":8000,"audioData":"<base64>"}} messages of `chunk_ms` (kept under
  8 KB); the module writes each to a file and fires mod_audio_stream::play, and the
  dialplan/ESL side plays it.
- binary (the full-duplex build): raw L16 frames, paced like RTP.
Barge-in drops what is not yet sent and sends {"type":"clearAudio"}: the module passes
it on as a mod_audio_stream::json event, on which the ESL side runs uuid_break (see
freeswitch/README.md). Later text frames {"type":"dtmf","digit":"5"} (uuid_audio_stream
send_text) are DTMF; other JSON text is ignored; text that is not JSON ends the stream.

When a token is configured it is required as ?token=, `Authorization: Bearer <token>`
or `X-Switchboard-Token` (set with STREAM_EXTRA_HEADERS); otherwise 403.
"""

from __future__ import annotations

import binascii
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import WSMsgType, web

from media.l16 import check_l16_le
from pipeline.leg import CallHandler, CallInfo
from streams.auth import token_accepted
from streams.context import StreamContext
from streams.leg import DTMF_DIGITS, Pacing, StreamLeg
from streams.wsdirect import delivering
from streams.wsout import WsOutbox, accept_websocket, bad_frame, close_code

__all__ = ["CLEAR_AUDIO", "PATH", "FreeswitchDoor", "FreeswitchLeg", "FreeswitchSettings",
           "MetadataError", "add_routes", "metadata_rate", "parse_metadata"]

log = logging.getLogger(__name__)

PATH = "/freeswitch"
TRANSPORT = "freeswitch"
CLEAR_AUDIO = '{"type":"clearAudio"}'
_MAX_AUDIO_MESSAGE = 8000  # bytes of base64 per streamAudio message
_MAX_KEYS = 64
_MAX_VALUE = 1024
_RATES = {"8000": 8000, "8k": 8000, "16000": 16000, "16k": 16000}
_CALLER_KEYS = ("caller", "from", "caller_id_number")
_CALLEE_KEYS = ("callee", "to", "destination_number")


@dataclass(frozen=True, slots=True)
class FreeswitchSettings:
    token: str = field(default="", repr=False)  # "" = no token required
    output: Literal["stream_audio", "binary"] = "stream_audio"
    sample_rate: int = 8000
    chunk_ms: int = 200
    max_lead_ms: int = 100


class MetadataError(ValueError):
    """Metadata that names an impossible sample rate, or is too big."""


def parse_metadata(text: str) -> dict[str, str]:
    """The first text frame -> flat string params. A JSON object gives its keys (nested
    values as compact JSON); anything else is kept whole under "metadata"."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        if len(text) > _MAX_VALUE:
            raise MetadataError(f"metadata longer than {_MAX_VALUE} characters")
        return {"metadata": text}
    if len(data) > _MAX_KEYS:
        raise MetadataError(f"metadata has {len(data)} keys; at most {_MAX_KEYS}")
    params: dict[str, str] = {}
    for key, value in data.items():
        text_value = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        if len(key) > 128 or len(text_value) > _MAX_VALUE:
            raise MetadataError(f"metadata key {key[:40]!r} or its value is too long")
        params[key] = text_value
    return params


def metadata_rate(params: dict[str, str], default: int) -> int:
    for key in ("sample_rate", "sampleRate", "rate"):
        if key in params:
            rate = _RATES.get(params[key].strip().lower())
            if rate is None:
                raise MetadataError(f"metadata {key}={params[key][:20]!r}: expected 8000 or 16000")
            return rate
    return default


def _first(params: dict[str, str], keys: tuple[str, ...]) -> str:
    return next((params[k] for k in keys if params.get(k)), "")


class FreeswitchLeg(StreamLeg):
    """One mod_audio_stream connection as a CallLeg."""

    def __init__(self, info: CallInfo, handler: CallHandler, ctx: StreamContext, *,
                 ws: web.WebSocketResponse, rate: int, settings: FreeswitchSettings) -> None:
        frame_bytes = rate // 50 * 2
        if settings.output == "stream_audio":
            # Whole chunks per message, under ~8 KB of base64; two chunks of slack so
            # the next is always there before the dialplan finishes playing the last.
            per_message = max(1, min(settings.chunk_ms // 20, _MAX_AUDIO_MESSAGE * 3 // 4
                                     // frame_bytes))
            pacing = Pacing(lead_frames=2 * per_message, frames_per_message=per_message)
        else:
            pacing = Pacing(lead_frames=max(1, settings.max_lead_ms // 20))
        super().__init__(info, handler, ctx, codec="L16", wire_rate=rate, pacing=pacing)
        self.output = settings.output
        self._head = ('{"type":"streamAudio","data":{"audioDataType":"raw","sampleRate":'
                      f'{rate},"audioData":"')
        self._outbox = WsOutbox(ws, self.close_soon, name=f"freeswitch-writer-{info.call_id}")

    def _write_audio(self, frames: list[bytes]) -> None:
        if self.output == "binary":
            for frame in frames:
                self._outbox.audio(check_l16_le(frame))
            return
        data = binascii.b2a_base64(check_l16_le(b"".join(frames)), newline=False)
        self._outbox.audio(self._head + data.decode("ascii") + '"}}')

    def _write_clear(self) -> None:
        self._outbox.drop_audio()
        self._outbox.control(CLEAR_AUDIO)

    async def _close_wire(self, reason: str) -> None:
        await self._outbox.close(reason)


def _whole_frames(leg: FreeswitchLeg, data: bytes) -> bool:
    """Audio of one or more whole 20 ms frames at the stream's rate."""
    return bool(data) and not len(data) % (leg.wire_rate // 50 * 2)


class FreeswitchDoor:
    def __init__(self, ctx: StreamContext, settings: FreeswitchSettings) -> None:
        self.ctx = ctx
        self.settings = settings

    def _authorised(self, request: web.Request) -> bool:
        token = self.settings.token
        return not token or token_accepted(request, (token,))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            log.warning("freeswitch stream from %s refused: bad or missing token", request.remote)
            self.ctx.refused(TRANSPORT, "forbidden")
            return web.Response(status=403, text="missing or wrong token\n")
        return await accept_websocket(request, self.ctx, TRANSPORT, self._serve)

    async def _refuse(self, ws: web.WebSocketResponse, reason: str, invalid: str) -> None:
        self.ctx.invalid(TRANSPORT, invalid)
        self.ctx.refused(TRANSPORT, reason)
        await ws.close(code=close_code(reason), message=invalid.encode())

    async def _serve(self, ws: web.WebSocketResponse) -> None:
        try:
            first = await self.ctx.within_idle(ws.receive())
        except TimeoutError:
            await self._refuse(ws, "timeout", "no_audio")
            return
        params: dict[str, str] = {}
        audio: bytes | None = None
        if first.type is WSMsgType.TEXT:
            try:
                params = parse_metadata(first.data)
                rate = metadata_rate(params, self.settings.sample_rate)
            except MetadataError as exc:
                log.warning("freeswitch stream refused: %s", exc)
                await self._refuse(ws, "bad_request", "metadata")
                return
        elif first.type is WSMsgType.BINARY:
            audio, rate = first.data, self.settings.sample_rate
        else:
            if first.type is WSMsgType.ERROR:
                await self._refuse(ws, "protocol_error", "too_large")
            return
        call_id = params.get("uuid") or params.get("call_id") or str(uuid.uuid4())
        info = CallInfo(call_id=call_id, transport=TRANSPORT, caller=_first(params, _CALLER_KEYS),
                        callee=_first(params, _CALLEE_KEYS), params=params)
        handler = self.ctx.handler_for(info)
        if isinstance(handler, str):
            await ws.close(code=close_code(handler), message=handler.encode())
            return
        leg = FreeswitchLeg(info, handler, self.ctx, ws=ws, rate=rate, settings=self.settings)
        leg.start()
        reason = "disconnect"
        try:
            first_problem = self._audio(leg, audio) if audio is not None else None
            reason = first_problem or await self._read(ws, leg)
        finally:
            await leg.close(reason)

    def _audio(self, leg: FreeswitchLeg, data: bytes) -> str | None:
        if not _whole_frames(leg, data):
            log.warning("freeswitch stream %s: %d-byte audio frame is not a 20 ms multiple "
                        "at %d Hz", leg.info.call_id, len(data), leg.wire_rate)
            self.ctx.invalid(TRANSPORT, "frame_size")
            return "protocol_error"
        leg.receive_audio(data)
        return None

    async def _read(self, ws: web.WebSocketResponse, leg: FreeswitchLeg) -> str:
        # Whole audio frames skip the queue (streams.wsdirect).
        with delivering(ws, lambda data: self._deliver(leg, data)):
            return await self._read_queued(ws, leg)

    def _deliver(self, leg: FreeswitchLeg, data: str | bytes) -> bool:
        """Audio straight from the parser; text and bad sizes are left to the reader."""
        if isinstance(data, str) or not _whole_frames(leg, data):
            return False
        leg.receive_audio(data)
        return True

    async def _read_queued(self, ws: web.WebSocketResponse, leg: FreeswitchLeg) -> str:
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                reason = self._audio(leg, msg.data)
                if reason is not None:
                    return reason
            elif msg.type is WSMsgType.TEXT:
                reason = self._text(leg, msg.data)
                if reason is not None:
                    return reason
            else:  # ERROR: the message was too big or the frame broken
                return bad_frame(self.ctx, TRANSPORT, msg)
        return "disconnect"

    def _text(self, leg: FreeswitchLeg, text: str) -> str | None:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            log.warning("freeswitch stream %s: text frame is not a JSON object", leg.info.call_id)
            self.ctx.invalid(TRANSPORT, "malformed")
            return "protocol_error"
        leg.touch()
        if data.get("type") == "dtmf":
            digit = data.get("digit")
            if isinstance(digit, str) and digit in DTMF_DIGITS and len(digit) == 1:
                leg.receive_dtmf(digit, "text")
            else:
                self.ctx.invalid(TRANSPORT, "dtmf")
        else:
            log.debug("freeswitch stream %s: text ignored: %.80s", leg.info.call_id, text)
        return None


def add_routes(app: web.Application, ctx: StreamContext,
               settings: FreeswitchSettings) -> FreeswitchDoor:
    """Register GET /freeswitch (the mod_audio_stream WebSocket) on the HTTP app."""
    door = FreeswitchDoor(ctx, settings)
    app.router.add_get(PATH, door.handle)
    return door

