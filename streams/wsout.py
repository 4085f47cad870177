"""The write side of the WebSocket doors (Twilio, FreeSWITCH, ...), and their close codes.

aiohttp only writes through coroutines, and the pacer tick that produces audio cannot
await. The common case needs no await all the same: nothing is queued and the socket
keeps up, so the message is framed here (an unmasked server frame, RFC 6455 §5.2) and
written to the request's transport at once, from inside the tick. A frame is on the wire
as soon as it is made, so when a stream's frame goes out depends only on the streams
ticked before it, not on how long the whole tick takes. (Holding every stream's frame
for one burst after the tick, as this did before, made each frame wait for the slowest
part of the tick: at 200 Twilio streams in two workers, p99 frame-interval jitter
20.0/8.3/20.0 ms and max 135-288 ms in three runs, against 12.9/9.3/11.1 ms and max
80 ms writing at once.) Otherwise it goes to the stream's one writer task, fed from two
queues: control messages (a Twilio `clear`, FreeSWITCH's clearAudio) go before any audio
still waiting, and audio not yet written is dropped at barge-in. Order holds either
way, since a message is only written directly when the task has nothing queued or in
hand.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, web

from streams import wsdirect

if TYPE_CHECKING:
    from streams.context import StreamContext

__all__ = ["DoorWebSocket", "WsOutbox", "accept_websocket", "bad_frame", "close_code", "ws_frame"]

log = logging.getLogger(__name__)

# The close code each ending gets on a WebSocket (RFC 6455 §7.4.1).
_CLOSE_CODES = {
    "protocol_error": WSCloseCode.PROTOCOL_ERROR,
    "too_large": WSCloseCode.MESSAGE_TOO_BIG,
    "slow_consumer": WSCloseCode.POLICY_VIOLATION,
    "idle_timeout": WSCloseCode.GOING_AWAY,
    "shutdown": WSCloseCode.GOING_AWAY,
    "handler_error": WSCloseCode.INTERNAL_ERROR,
    "internal_error": WSCloseCode.INTERNAL_ERROR,
    "busy": WSCloseCode.TRY_AGAIN_LATER,
    "unavailable": WSCloseCode.TRY_AGAIN_LATER,
    "bad_request": WSCloseCode.UNSUPPORTED_DATA,
    "no_route": WSCloseCode.POLICY_VIOLATION,  # the dialplan has no agent for this call
}


def close_code(reason: str) -> WSCloseCode:
    return _CLOSE_CODES.get(reason, WSCloseCode.OK)


def bad_frame(ctx: StreamContext, transport: str, msg: object, kind: str | None = None) -> str:
    """A WebSocket message that ends a door's stream: count it as invalid and return why
    the stream ends. `kind`, the metric label, is by default too_large for a message over
    the size limit (close code 1009) and transport_error for any other broken frame."""
    if kind is None:
        code = getattr(getattr(msg, "data", None), "code", None)
        kind = "too_large" if code == 1009 else "transport_error"
    ctx.invalid(transport, kind)
    return "too_large" if kind == "too_large" else "protocol_error"


OP_TEXT = 0x1
OP_BINARY = 0x2
_HEAD1 = struct.Struct("!BB").pack
_HEAD2 = struct.Struct("!BBH").pack
_HEAD8 = struct.Struct("!BBQ").pack
# Written directly only while the transport holds at most this much unsent: above it
# the writer task (which waits for the transport to drain) takes over.
WRITE_BUFFER_LIMIT = 16 * 1024


def ws_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One whole, unmasked, uncompressed WebSocket frame (FIN set), as a server sends it
    (RFC 6455 §5.2): the header, then `payload`."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        return _HEAD1(first, n) + payload
    if n < 65536:
        return _HEAD2(first, 126, n) + payload
    return _HEAD8(first, 127, n) + payload


class DoorWebSocket(web.WebSocketResponse):
    """A WebSocketResponse that keeps the request's transport once prepared, so a
    WsOutbox can write frames to it without a task, and whose data messages a door can
    take directly (streams.wsdirect: `direct.deliver`; None on an aiohttp without it)."""

    door_transport: asyncio.Transport | None = None
    direct: Any = None

    def _post_start(self, request: Any, protocol: Any, writer: Any) -> None:
        super()._post_start(request, protocol, writer)
        self.direct = wsdirect.install(self, request)


class WsOutbox:
    """The write side of one WebSocket. Audio is written at once when nothing waits
    before it and the transport keeps up (see the module notes); otherwise one task
    writes queued messages in order; control messages jump the queue; audio not yet
    written can be dropped at barge-in. A peer that stops reading makes the queue grow:
    past `max_backlog` the stream is failed ("slow_consumer") rather than buffering
    without bound.

    `transport`: where direct writes go; by default a DoorWebSocket's own. Without one,
    or when the WebSocket negotiated compression, every message goes through the task."""

    def __init__(self, ws: web.WebSocketResponse, on_failure: Callable[[str], None], *,
                 max_backlog: int = 250, name: str = "ws-writer",
                 transport: asyncio.Transport | None = None,
                 write_buffer_limit: int = WRITE_BUFFER_LIMIT) -> None:
        self._ws = ws
        self._on_failure = on_failure
        self._max_backlog = max_backlog
        self._audio: deque[str | bytes] = deque()
        self._control: deque[str] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._busy = False  # the task holds a message it has not finished sending
        if transport is None and isinstance(ws, DoorWebSocket):
            transport = ws.door_transport
        self._transport = None if ws.compress else transport
        self._limit = write_buffer_limit
        self.direct = 0  # messages written without the task
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    def audio(self, message: str | bytes) -> None:
        if self._closing:
            return
        audio = self._audio
        transport = self._transport
        if (transport is not None and not audio and not self._control and not self._busy
                and not self._ws.closed and not transport.is_closing()
                and transport.get_write_buffer_size() <= self._limit):
            if type(message) is str:
                frame = ws_frame(message.encode(), OP_TEXT)
            else:
                frame = ws_frame(message, OP_BINARY)  # type: ignore[arg-type]
            transport.write(frame)
            self.direct += 1
            return
        if len(audio) >= self._max_backlog:
            self._closing = True
            self._on_failure("slow_consumer")
            return
        audio.append(message)
        self._wake.set()

    def control(self, message: str) -> None:
        if not self._closing:
            self._control.append(message)
            self._wake.set()

    def drop_audio(self) -> None:
        self._audio.clear()

    @property
    def backlog(self) -> int:
        return len(self._audio) + len(self._control)

    async def _run(self) -> None:
        ws, audio, control = self._ws, self._audio, self._control
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._busy = True
                while control or audio:
                    message = control.popleft() if control else audio.popleft()
                    if type(message) is str:
                        await ws.send_str(message)
                    else:
                        await ws.send_bytes(message)  # type: ignore[arg-type]
                self._busy = False
        except ConnectionError as exc:
            log.debug("%s: peer gone: %s", self._task.get_name(), exc)
            self._closing = True
            self._on_failure("disconnect")
        except Exception:
            log.exception("%s failed", self._task.get_name())
            self._closing = True
            self._on_failure("internal_error")

    async def close(self, reason: str) -> None:
        """Stop writing audio, send the control messages already queued, then close the
        WebSocket with the code `reason` deserves."""
        self._closing = True
        self._audio.clear()
        task = self._task
        if not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        ws = self._ws
        try:
            while self._control and not ws.closed:
                await ws.send_str(self._control.popleft())
        except ConnectionError:
            pass  # the peer is gone; nothing left to tell it
        if not ws.closed:
            await ws.close(code=close_code(reason), message=reason.encode()[:120])


async def accept_websocket(
    request: web.Request,
    ctx: StreamContext,
    transport: str,
    serve: Callable[[web.WebSocketResponse], Awaitable[None]],
    protocols: tuple[str, ...] = (),
) -> web.StreamResponse:
    """Upgrade to a WebSocket, admit it under the doors' shared limits, run `serve`, and
    give the slot back however it ends. Authentication is the caller's, before this.
    `protocols`: subprotocols we agree to when the client offers one of them."""
    # No permessage-deflate: audio does not compress, and WsOutbox writes whole
    # uncompressed frames itself.
    ws = DoorWebSocket(max_msg_size=ctx.max_message_bytes, timeout=2.0,
                       protocols=protocols, compress=False)
    if not ws.can_prepare(request).ok:
        return web.Response(status=400, text="expected a WebSocket upgrade\n")
    await ws.prepare(request)
    ws.door_transport = request.transport  # type: ignore[assignment]
    refusal = ctx.enter(transport)
    if refusal is not None:
        await ws.close(code=close_code(refusal), message=refusal.encode())
        return ws
    try:
        await serve(ws)
    finally:
        ctx.leave()
    return ws
