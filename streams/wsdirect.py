"""Direct delivery of a WebSocket door's data messages, without a task wake-up each.

aiohttp hands every received message to the reading coroutine through a queue: the
parser puts it there, a future is resolved, the coroutine's task is scheduled and
resumes in `receive()`. A media stream gets a message every 20 ms, so that hand-over is
paid 50 times a second per stream (about 8 % of a stream worker at 120 Twilio streams).
Here the queue is replaced by one that, while a door has set `deliver`, gives each text
or binary message to it synchronously, right in the parser's data_received; the door
takes the hot, non-ending messages and returns True: Twilio media, marks and digits,
FreeSWITCH's whole audio frames, Asterisk chan_websocket's audio. (The browser
console's door, a few calls at most, keeps the plain reader.)
Everything else (a `stop`, something malformed, a close or ping frame) is left queued
for the door's reading coroutine, which ends the stream as before. A message is only
delivered directly while nothing is queued ahead of it, so order is kept.

This leans on aiohttp's internals (its reader and queue classes, the response's and the
request protocol's private attributes), so it is a speed path only: `install` checks
what it needs and, on an aiohttp that differs, logs once and leaves the stock path,
which is equivalent and merely slower. tests/streams/test_wsdirect.py says which one
the pinned aiohttp gets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import WSMsgType, web

__all__ = ["Deliver", "delivering", "install"]

log = logging.getLogger(__name__)

# Takes a text (str) or binary (bytes) message; True when it was dealt with.
Deliver = Callable[[Any], bool]

try:
    from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
except ImportError:  # another aiohttp layout: the stock path
    WebSocketDataQueue = WebSocketReader = None

_DATA = (WSMsgType.TEXT, WSMsgType.BINARY)
_warned = False


if WebSocketDataQueue is not None:

    class DirectQueue(WebSocketDataQueue):  # type: ignore[misc, valid-type]
        """aiohttp's message queue, less the queueing while `deliver` takes them."""

        def __init__(self, protocol: Any, limit: int, *, loop: Any) -> None:
            super().__init__(protocol, limit, loop=loop)
            self.deliver: Deliver | None = None
            self.delivered = 0

        def feed_data(self, data: Any, size: int) -> None:
            deliver = self.deliver
            if deliver is not None and data.type in _DATA and not self._buffer:
                try:
                    taken = deliver(data.data)
                except Exception:
                    # Our bug, raised inside aiohttp's data_received: logged with its
                    # traceback, and the message queued for the reading coroutine, whose
                    # handling of it raises the same and ends this stream the usual way
                    # (never the connection's parser, nor other streams).
                    log.exception("direct WebSocket delivery failed; message queued")
                    taken = False
                if taken:
                    self.delivered += 1
                    return
            super().feed_data(data, size)
else:  # pragma: no cover - only on an aiohttp without the module
    DirectQueue = None


def install(ws: web.WebSocketResponse, request: web.BaseRequest) -> Any | None:
    """Right after `ws` is prepared (before any frame is read): swap its queue for a
    DirectQueue. Returns the queue, or None where this aiohttp does not allow it."""
    global _warned
    try:
        if DirectQueue is None:
            raise TypeError("no aiohttp._websocket.reader")
        if ws.compress:
            raise TypeError("compressed WebSocket")
        old = ws._reader
        if old is None or old._buffer or request.protocol._payload_parser is not ws._parser:
            raise TypeError("the WebSocket has already read something")
        queue = DirectQueue(request.protocol, old._limit // 2, loop=ws._loop)
        parser = WebSocketReader(queue, ws._max_msg_size, compress=False,
                                 decode_text=getattr(ws, "_decode_text", True))
    except (AttributeError, TypeError) as exc:
        if not _warned:
            _warned = True
            log.warning("WebSocket doors: no direct message delivery on this aiohttp (%s); "
                        "using the standard reader", exc)
        return None
    ws._reader = queue
    ws._parser = parser
    request.protocol._payload_parser = parser
    return queue


@contextmanager
def delivering(ws: web.WebSocketResponse, deliver: Deliver) -> Iterator[bool]:
    """While inside: `ws`'s data messages go to `deliver` first (see the module notes).
    Yields whether they do: False on a WebSocket without a DirectQueue."""
    queue = getattr(ws, "direct", None)
    if queue is None:
        yield False
        return
    queue.deliver = deliver
    try:
        yield True
    finally:
        queue.deliver = None
