"""The media-stream doors: Twilio Media Streams, FreeSWITCH mod_audio_stream, Asterisk
AudioSocket. Each turns its wire format into the common call leg (pipeline.leg), so the
same handler, barge-in and metrics work whatever the door.

StreamDoors assembles them for the application: the two WebSocket doors' routes on the
HTTP app, the AudioSocket TCP server, one shared StreamContext (pacer, metrics, handler
factory, limits), and a bounded shutdown. The browser door (streams.browser) is added by
the console (switchboard.console) on the same StreamContext, so it shares those limits.
Asterisk's chan_websocket door (streams.asterisk_ws) joins them when streams.asterisk_ws
is enabled.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from media.clock import Clock
from media.pacer import Pacer
from pipeline.metrics import Metrics
from streams import asterisk_ws, audiosocket, freeswitch, twilio
from streams.context import HandlerFactory, StreamContext
from streams.twilio import RouteCheck
from streams.twilio_rest import rest_client

if TYPE_CHECKING:  # the app's config type, for the annotation only
    from switchboard.config import StreamsConfig

__all__ = ["StreamContext", "StreamDoors"]

log = logging.getLogger(__name__)


class StreamDoors:
    """All stream doors of one process. add_routes() before the HTTP app starts;
    start(pacer) once the shared pacer runs; stop() at shutdown."""

    def __init__(self, config: StreamsConfig, *, handler_factory: HandlerFactory,
                 metrics: Metrics, clock: Clock, route_check: RouteCheck | None = None) -> None:
        self.config = config
        self.route_check = route_check  # the Twilio webhook rejects calls with no agent
        self.ctx = StreamContext(
            handler_factory=handler_factory, metrics=metrics, clock=clock,
            max_streams=config.max_concurrent_streams, idle_timeout=config.idle_timeout,
            max_message_bytes=config.max_message_bytes,
        )
        self.audiosocket: audiosocket.AudioSocketServer | None = None

    def add_routes(self, app: web.Application) -> None:
        c = self.config
        tw, fs = c.twilio, c.freeswitch
        twilio.add_routes(app, self.ctx, twilio.TwilioSettings(
            auth_token=tw.auth_token, public_base_url=c.public_base_url,
            max_lead_ms=tw.max_lead_ms, rest=rest_client(tw.account_sid, tw.auth_token),
            route_check=self.route_check,
        ))
        freeswitch.add_routes(app, self.ctx, freeswitch.FreeswitchSettings(
            token=fs.token, output=fs.output, sample_rate=fs.sample_rate, chunk_ms=fs.chunk_ms,
            max_lead_ms=fs.max_lead_ms,
        ))
        log.info("stream doors: %s, %s (Twilio signatures %s, FreeSWITCH token %s)",
                 twilio.STREAM_PATH, freeswitch.PATH, "on" if tw.auth_token else "off",
                 "on" if fs.token else "off")
        aw = c.asterisk_ws
        if aw.enabled:
            asterisk_ws.add_routes(app, self.ctx, asterisk_ws.AsteriskWsSettings(
                token=aw.token, max_lead_ms=aw.max_lead_ms, marks=aw.marks, answer=aw.answer))
            log.info("stream door: %s (Asterisk chan_websocket, token %s)", asterisk_ws.PATH,
                     "on" if aw.token else "off")

    async def start(self, pacer: Pacer, *, audiosocket_server: bool = True,
                    reuse_port: bool = False) -> None:
        """Take streams on `pacer`. The AudioSocket server starts unless told not to (the
        main process leaves it to its stream workers, which share its port: reuse_port)."""
        self.ctx.pacer = pacer
        a = self.config.audiosocket
        if a.enabled and audiosocket_server:
            settings = audiosocket.AudioSocketSettings(
                listen=a.listen, port=a.port, allowed_networks=tuple(a.allowed_networks),
                reuse_port=reuse_port)
            self.audiosocket = await audiosocket.start_server(self.ctx, settings)

    async def stop(self, timeout: float = 10.0) -> None:
        """Refuse new streams, close live ones (bounded), stop the AudioSocket server."""
        await self.ctx.shutdown(timeout)
        if self.audiosocket is not None:
            await self.audiosocket.stop()
            self.audiosocket = None
