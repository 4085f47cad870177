"""The SIP side of the process assembled: transport + transactions + endpoint, and RTP
sessions on the shared pacer and port allocator. The app maps its config onto this."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field

from media.clock import Clock
from media.pacer import Pacer
from pipeline.metrics import Metrics
from sip.call import Media
from sip.endpoint import EndpointSettings, HandlerFactory, SipEndpoint
from sip.flood import FloodGuard, FloodLimits
from sip.message import DEFAULT_LIMITS, Limits
from sip.policy import TargetPolicy
from sip.ports import PortAllocator
from sip.rtp_session import MediaParams, RtpOptions, RtpSession
from sip.transport import SipTransport

__all__ = ["SipServer", "SipServerConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SipServerConfig:
    listen: str = "0.0.0.0"
    port: int = 5060
    transports: tuple[str, ...] = ("udp", "tcp")
    rtp_port_min: int = 20000
    rtp_port_max: int = 30000
    media_timeout: float = 30.0
    timer_t1: float = 0.5
    timer_t2: float = 4.0
    tcp_idle_timeout: float = 120.0
    shutdown_timeout: float = 10.0
    endpoint: EndpointSettings = field(default_factory=EndpointSettings)
    flood: FloodLimits = field(default_factory=FloodLimits)
    targets: TargetPolicy | None = None  # None: no restriction (the `switchboard call` UA)
    limits: Limits = DEFAULT_LIMITS  # SIP message size limits
    rtp_follow_rebinding: bool = False  # see RtpOptions.follow_rebinding
    tls_port: int = 5061  # with "tls" in transports
    tls_cert_file: str | None = None  # PEM certificate chain
    tls_key_file: str | None = None  # PEM private key


def tls_context(cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """The server side of SIP over TLS: TLS 1.2 or later, the system's default ciphers."""
    if not cert_file or not key_file:
        raise ValueError("SIP over TLS needs tls_cert_file and tls_key_file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


class SipServer:
    def __init__(self, config: SipServerConfig, *, handler_factory: HandlerFactory,
                 clock: Clock, metrics: Metrics, pacer: Pacer) -> None:
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self.pacer = pacer
        self.ports = PortAllocator(config.rtp_port_min, config.rtp_port_max)
        self._rtp_options = RtpOptions(media_timeout=config.media_timeout,
                                       follow_rebinding=config.rtp_follow_rebinding)
        self.guard = FloodGuard(config.flood, clock=clock, metrics=metrics) \
            if config.flood.enabled else None
        self.transport = SipTransport(
            self._receive, clock=clock, metrics=metrics,
            advertised_address=config.endpoint.advertised_address,
            tcp_idle_timeout=config.tcp_idle_timeout, guard=self.guard, limits=config.limits,
        )
        self.endpoint = SipEndpoint(
            config.endpoint, transport=self.transport, handler_factory=handler_factory,
            media_factory=self.open_media, clock=clock, metrics=metrics,
            t1=config.timer_t1, t2=config.timer_t2,
        )
        self.endpoint.targets = config.targets

    def _receive(self, message, source) -> None:  # type: ignore[no-untyped-def]
        self.endpoint.receive(message, source)

    async def open_media(self, params: MediaParams) -> Media:
        """An RtpSession on a port pair from the range, ticking on the shared pacer."""
        return await RtpSession.open(
            params, local_host=self.config.listen, ports=self.ports, clock=self.clock,
            pacer=self.pacer, metrics=self.metrics, options=self._rtp_options,
        )

    @property
    def port(self) -> int:
        return self.transport.port

    async def start(self) -> None:
        c = self.config
        context = tls_context(c.tls_cert_file, c.tls_key_file) if "tls" in c.transports else None
        await self.transport.start(c.listen, c.port, c.transports, tls_port=c.tls_port,
                                   tls_context=context)

    async def stop(self) -> None:
        """503 to new calls, BYE to calls in progress (bounded), then close the sockets."""
        await self.endpoint.shutdown(self.config.shutdown_timeout)
        await self.transport.stop()
