"""Cut a TCP/TLS byte stream into SIP messages by Content-Length (RFC 3261 18.3).

The framer only finds message boundaries; each frame then goes to parse_message(), so a
malformed header costs one 400, not the connection. A framing error (no usable
Content-Length, a message over the size limit) is fatal for the stream: the transport
answers with `error_response(err)` if it can, then closes the connection.
"""

from __future__ import annotations

import re

from sip.grammar import SipParseError, snippet
from sip.message import DEFAULT_LIMITS, Limits, _answerable, parse_head

# RFC 5626 keepalive: the client sends CRLFCRLF ("ping"), the server answers CRLF ("pong").
KEEPALIVE_PING = b"\r\n\r\n"
KEEPALIVE_PONG = b"\r\n"

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\S*)[ \t]*\r?$", re.I | re.M)
_DIGITS = re.compile(rb"[0-9]{1,10}")


class StreamFramer:
    """Feed bytes as they arrive; get back whole messages.

    `feed()` returns complete frames in order. A frame equal to KEEPALIVE_PING is a
    keepalive to answer with KEEPALIVE_PONG, not a message. After feed() raises, the
    stream is out of sync and the framer must not be used again.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buffer = bytearray()
        # Progress kept between feeds, so that a peer trickling bytes one at a time costs
        # linear CPU, not a rescan of the whole buffer per byte: how far the buffer holds
        # no blank line, and the length of the message whose header is complete.
        self._searched = 0
        self._total: int | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        while True:
            frame = self._next_frame()
            if frame is None:
                return frames
            frames.append(frame)

    def _next_frame(self) -> bytes | None:
        buffer = self._buffer
        if self._total is None:
            if not self._skip_keepalives():
                return None
            if buffer.startswith(KEEPALIVE_PING):
                del buffer[:4]
                self._searched = 0
                return KEEPALIVE_PING
            self._total = self._frame_length()
            if self._total is None:
                return None
        total = self._total
        if len(buffer) < total:
            return None
        frame = bytes(buffer[:total])
        del buffer[:total]
        self._searched, self._total = 0, None
        return frame

    def _skip_keepalives(self) -> bool:
        """Drop CRLFs before a message; False while a lone CR may start a ping."""
        buffer = self._buffer
        while not buffer.startswith(KEEPALIVE_PING):
            if buffer[:1] == b"\n":
                del buffer[:1]
            elif buffer.startswith(b"\r\n") and buffer[2:3] not in (b"", b"\r"):
                del buffer[:2]  # a pong, or a stray CRLF between messages (RFC 3261 7.5)
            elif buffer[:1] == b"\r" and len(buffer) < 4:
                return False  # perhaps the start of a ping
            else:
                return True
            self._searched = 0
        return True

    def _frame_length(self) -> int | None:
        """The whole message's length once its header section is in, else None."""
        buffer = self._buffer
        # A blank line (2 to 4 bytes) not found last time starts at most 3 bytes back.
        match = _HEAD_END.search(buffer, max(0, self._searched - 3))
        limit = self._limits.max_message
        if match is None:
            self._searched = len(buffer)
            if len(buffer) > limit:
                raise SipParseError(f"header section exceeds {limit} bytes", 513)
            return None
        head = bytes(buffer[: match.start()])
        lengths = set(_CONTENT_LENGTH.findall(head))
        if len(lengths) > 1:
            raise self._error(head, "conflicting Content-Length headers", 400)
        # RFC 3261 18.3 requires Content-Length on streams; without one, assume no body.
        text = lengths.pop() if lengths else b"0"
        if _DIGITS.fullmatch(text) is None:
            raise self._error(head, f"bad Content-Length {snippet(text.decode('latin-1'))}", 400)
        total = match.end() + int(text)
        if total > limit:
            raise self._error(head, f"message of {total} bytes exceeds {limit}", 413)
        return total

    def _error(self, head: bytes, reason: str, status: int) -> SipParseError:
        _, headers, _, _ = parse_head(head + b"\r\n\r\n", self._limits)
        answerable = not head.startswith(b"SIP/") and _answerable(headers)
        return SipParseError(reason, status, headers if answerable else None)
