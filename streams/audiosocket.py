"""The Asterisk AudioSocket door: a TCP server.

Asterisk connects (dialplan `AudioSocket(<uuid>,host:9092)`, or the channel driver
`Dial(AudioSocket/host:9092/<uuid>)`), sends the call's UUID frame first, then 20 ms
frames of signed linear audio (0x10 at 8 kHz; the channel driver may send 0x12 at
16 kHz), DTMF (0x03), and hang-up (0x00) or error (0xff) at the end. Asterisk does not
pace what it receives, so we pace our own output on the shared clock: one frame per
tick, silence when the agent is quiet, in the same kind (rate) the far end sends.

The protocol has no authentication: only peers inside `allowed_networks` are served.
Refusals send an error frame with one of our codes below, then close.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass

from media.l16 import check_l16_le
from pipeline.leg import CallHandler, CallInfo
from streams.audiosocket_frames import (
    AUDIO_RATES,
    MAX_PAYLOAD,
    AudioSocketError,
    Frame,
    FrameReader,
    FrameTooLongError,
    Kind,
    UnknownKindError,
    audio_header,
    error_frame,
    hangup_frame,
)
from streams.context import StreamContext
from streams.leg import Pacing, StreamLeg

__all__ = ["AudioSocketLeg", "AudioSocketServer", "AudioSocketSettings", "start_server"]

log = logging.getLogger(__name__)

TRANSPORT = "audiosocket"
RATES = (8000, 16000)  # what the inbound chain decodes

# Our error codes: the payload of the 0xff frames we send (AudioSocket leaves error
# codes to the application; Asterisk's own are 0x01, 0x02 and 0x04).
ERROR_PROTOCOL = 0x10  # the stream broke the framing rules
ERROR_BUSY = 0x11  # too many streams
ERROR_FORBIDDEN = 0x12  # source address not allowed
ERROR_UNAVAILABLE = 0x13  # no agent for the call, or shutting down
ERROR_TIMEOUT = 0x14  # no UUID in time
_REFUSAL_CODES = {
    "busy": ERROR_BUSY, "forbidden": ERROR_FORBIDDEN, "timeout": ERROR_TIMEOUT,
    "protocol_error": ERROR_PROTOCOL, "bad_request": ERROR_PROTOCOL,
}
_MAX_WRITE_BUFFER = 64 * 1024  # ~2 s of 16 kHz audio the peer has not read: it is stuck
_READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class AudioSocketSettings:
    listen: str = "0.0.0.0"
    port: int = 9092  # 0: any free port (tests)
    allowed_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    default_rate: int = 8000  # until the first audio frame says otherwise
    reuse_port: bool = False  # stream workers share one port (switchboard.workers)


class AudioSocketLeg(StreamLeg):
    """One AudioSocket connection as a CallLeg."""

    def __init__(self, info: CallInfo, handler: CallHandler, ctx: StreamContext, *,
                 writer: asyncio.StreamWriter, rate: int = 8000) -> None:
        super().__init__(info, handler, ctx, codec="L16", wire_rate=rate,
                         pacing=Pacing(lead_frames=1, send_silence=True))
        self._writer = writer

    def _write_audio(self, frames: list[bytes]) -> None:
        transport = self._writer.transport
        if transport.is_closing():
            self.close_soon("disconnect")
            return
        header = audio_header(self.wire_rate, len(frames[0]))
        transport.write(b"".join(header + check_l16_le(frame) for frame in frames))
        if transport.get_write_buffer_size() > _MAX_WRITE_BUFFER:
            self.close_soon("slow_consumer")

    async def _close_wire(self, reason: str) -> None:
        writer = self._writer
        if not writer.is_closing():
            if reason in ("protocol_error", "too_large"):
                writer.write(bytes(error_frame(ERROR_PROTOCOL)))
            elif reason not in ("remote_hangup", "remote_error", "disconnect"):
                writer.write(bytes(hangup_frame()))
            writer.close()
        try:
            await writer.wait_closed()
        except OSError as exc:  # reset by the peer: closed either way
            log.debug("audiosocket %s: %s", self.info.call_id, exc)


class AudioSocketServer:
    def __init__(self, ctx: StreamContext, settings: AudioSocketSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        self._networks = [ipaddress.ip_network(n, strict=False) for n in settings.allowed_networks]
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        if settings.default_rate not in RATES:
            raise ValueError(f"default_rate must be one of {RATES}, got {settings.default_rate}")

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("AudioSocket server is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        s = self.settings
        self._server = await asyncio.start_server(self._client, s.listen, s.port,
                                                  reuse_address=True,
                                                  reuse_port=s.reuse_port or None)
        log.info("AudioSocket listening on %s:%d", s.listen, self.port)

    async def stop(self) -> None:
        """Stop listening and drop connections that have no call yet (calls are closed by
        the context's shutdown)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()

    def allowed(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._networks)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if peer else ""
        if not self.allowed(host):
            log.warning("AudioSocket connection from %s refused: not in allowed_networks", host)
            self.ctx.refused(TRANSPORT, "forbidden")
            await _refuse(writer, ERROR_FORBIDDEN)
            return
        refusal = self.ctx.enter(TRANSPORT)
        if refusal is not None:
            await _refuse(writer, _REFUSAL_CODES.get(refusal, ERROR_UNAVAILABLE))
            return
        self._writers.add(writer)
        try:
            await self._serve(reader, writer, host)
        except Exception:
            log.exception("AudioSocket connection from %s failed", host)
        finally:
            self.ctx.leave()
            self._writers.discard(writer)
            if not writer.is_closing():
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     host: str) -> None:
        framer = FrameReader(min(self.ctx.max_message_bytes, MAX_PAYLOAD))
        try:
            frames = await self.ctx.within_idle(_read_frames(reader, framer))
        except TimeoutError:
            self._refused("timeout", "no_uuid")
            await _refuse(writer, ERROR_TIMEOUT)
            return
        except AudioSocketError as exc:
            log.warning("AudioSocket from %s: %s", host, exc)
            self._refused("protocol_error", _error_label(exc))
            await _refuse(writer, ERROR_PROTOCOL)
            return
        if not frames:
            return  # closed before saying anything
        if frames[0].kind is not Kind.UUID:
            log.warning("AudioSocket from %s: first frame is %s, not the UUID", host,
                        frames[0].kind.name)
            self._refused("protocol_error", "out_of_order")
            await _refuse(writer, ERROR_PROTOCOL)
            return
        call_id = str(frames[0].uuid)
        info = CallInfo(call_id=call_id, transport=TRANSPORT,
                        params={"uuid": call_id, "peer": host})
        handler = self.ctx.handler_for(info)
        if isinstance(handler, str):
            await _refuse(writer, _REFUSAL_CODES.get(handler, ERROR_UNAVAILABLE))
            return
        leg = AudioSocketLeg(info, handler, self.ctx, writer=writer,
                             rate=self.settings.default_rate)
        leg.start()
        reason = "disconnect"
        try:
            reason = self._dispatch(leg, frames[1:]) or await self._read(reader, framer, leg)
        finally:
            await leg.close(reason)

    def _refused(self, reason: str, invalid: str) -> None:
        self.ctx.invalid(TRANSPORT, invalid)
        self.ctx.refused(TRANSPORT, reason)

    async def _read(self, reader: asyncio.StreamReader, framer: FrameReader,
                    leg: AudioSocketLeg) -> str:
        while True:
            try:
                data = await reader.read(_READ_SIZE)
            except OSError:
                return "disconnect"
            if not data:
                return "disconnect"
            try:
                frames = framer.feed(data)
            except AudioSocketError as exc:
                log.warning("AudioSocket %s: %s", leg.info.call_id, exc)
                self.ctx.invalid(TRANSPORT, _error_label(exc))
                return "protocol_error"
            reason = self._dispatch(leg, frames)
            if reason is not None:
                return reason

    def _dispatch(self, leg: AudioSocketLeg, frames: list[Frame]) -> str | None:
        """Hand frames to the leg; the reason the stream ends, if one of them ends it."""
        for frame in frames:
            kind = frame.kind
            rate = AUDIO_RATES.get(kind)
            if rate is not None:
                if rate != leg.wire_rate:
                    if rate not in RATES:
                        log.warning("AudioSocket %s: %d Hz audio is not supported",
                                    leg.info.call_id, rate)
                        self.ctx.invalid(TRANSPORT, "unsupported_rate")
                        return "protocol_error"
                    leg.set_wire_rate(rate)
                leg.receive_audio(frame.payload)
            elif kind is Kind.DTMF:
                leg.receive_dtmf(frame.digit, "stream")
            elif kind is Kind.HANGUP:
                return "remote_hangup"
            elif kind is Kind.ERROR:
                log.info("AudioSocket %s: peer error, code %s", leg.info.call_id,
                         frame.error_code)
                return "remote_error"
            else:  # a second UUID
                self.ctx.invalid(TRANSPORT, "out_of_order")
                leg.touch()
        return None


async def _read_frames(reader: asyncio.StreamReader, framer: FrameReader) -> list[Frame]:
    """At least one frame, or [] at end of stream."""
    while True:
        data = await reader.read(_READ_SIZE)
        if not data:
            return []
        frames = framer.feed(data)
        if frames:
            return frames


async def _refuse(writer: asyncio.StreamWriter, code: int) -> None:
    try:
        writer.write(bytes(error_frame(code)))
        writer.close()
        await writer.wait_closed()
    except OSError as exc:
        log.debug("AudioSocket refusal not delivered: %s", exc)


def _error_label(exc: AudioSocketError) -> str:
    if isinstance(exc, UnknownKindError):
        return "unknown_kind"
    if isinstance(exc, FrameTooLongError):
        return "too_large"
    return "malformed"


async def start_server(ctx: StreamContext, settings: AudioSocketSettings) -> AudioSocketServer:
    """Listen for AudioSocket connections; stop with `await server.stop()`."""
    server = AudioSocketServer(ctx, settings)
    await server.start()
    return server
