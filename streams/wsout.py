"""The write side of the WebSocket doors (Twilio, FreeSWITCH), and their close codes.

aiohttp only writes through coroutines, and the pacer tick that produces audio cannot
await; so each stream has one writer task fed from two queues: control messages (a
Twilio `clear`, FreeSWITCH's clearAudio) go before any audio still waiting, and audio not
yet written is dropped at barge-in.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, web

if TYPE_CHECKING:
    from streams.context import StreamContext

__all__ = ["WsOutbox", "close_code"]

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


class WsOutbox:
    """The write side of one WebSocket. One task writes queued messages in order; control
    messages jump the queue; audio not yet written can be dropped at barge-in. A peer
    that stops reading makes the queue grow: past `max_backlog` the stream is failed
    ("slow_consumer") rather than buffering without bound."""

    def __init__(self, ws: web.WebSocketResponse, on_failure: Callable[[str], None], *,
                 max_backlog: int = 250, name: str = "ws-writer") -> None:
        self._ws = ws
        self._on_failure = on_failure
        self._max_backlog = max_backlog
        self._audio: deque[str | bytes] = deque()
        self._control: deque[str] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    def audio(self, message: str | bytes) -> None:
        if self._closing:
            return
        if len(self._audio) >= self._max_backlog:
            self._closing = True
            self._on_failure("slow_consumer")
            return
        self._audio.append(message)
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
                while control or audio:
                    message = control.popleft() if control else audio.popleft()
                    if type(message) is str:
                        await ws.send_str(message)
                    else:
                        await ws.send_bytes(message)  # type: ignore[arg-type]
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
    ws = web.WebSocketResponse(max_msg_size=ctx.max_message_bytes, timeout=2.0,
                               protocols=protocols)
    if not ws.can_prepare(request).ok:
        return web.Response(status=400, text="expected a WebSocket upgrade\n")
    await ws.prepare(request)
    refusal = ctx.enter(transport)
    if refusal is not None:
        await ws.close(code=close_code(refusal), message=refusal.encode())
        return ws
    try:
        await serve(ws)
    finally:
        ctx.leave()
    return ws
