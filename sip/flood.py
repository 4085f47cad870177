"""Per-source flood protection for SIP, in the spirit of Kamailio's pike module.

Each source IP has a token bucket per limited method (INVITE, REGISTER, OPTIONS, and
"other" for every other request): it holds up to `burst` requests and refills at
`per_second`. A request that finds its bucket empty blocks the whole source for
`block_seconds`: until then every message from it
(any method, responses too) is dropped without an answer, so a SIPVicious-style scan or
an INVITE flood learns nothing and costs us one dict lookup per packet. A block is
logged once when it starts and once when it ends, never per packet.

The method is read from the first bytes of the message, before parsing, so a flood is
refused before it costs a parse. Malformed messages have a bucket of their own
("malformed", fed by the transport through malformed()), so a garbage flood is blocked
too and cannot fill the log with one line per packet.

Memory is bounded: at most `max_sources` buckets and `max_sources` blocked sources, the
least recently seen forgotten first.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from media.clock import Clock
from pipeline.metrics import Metrics

__all__ = ["FLOOD_METHODS", "MALFORMED", "FloodGuard", "FloodLimits", "Rate", "peek_method"]

log = logging.getLogger(__name__)

FLOOD_METHODS = ("INVITE", "REGISTER", "OPTIONS")
MALFORMED = "malformed"  # the bucket of messages that failed to parse


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float  # sustained requests per second
    burst: int  # requests allowed at once before the sustained rate applies


@dataclass(frozen=True, slots=True)
class FloodLimits:
    enabled: bool = True
    rates: Mapping[str, Rate] = field(default_factory=lambda: {
        "INVITE": Rate(10.0, 50), "REGISTER": Rate(5.0, 20), "OPTIONS": Rate(10.0, 50),
        "other": Rate(50.0, 200), MALFORMED: Rate(5.0, 20)})
    block_seconds: float = 60.0
    max_sources: int = 10_000
    # Never limited: a proxy in front of us sends everything from one address.
    exempt_networks: tuple[str, ...] = ("127.0.0.1/32", "::1/128")


def peek_method(data: bytes) -> str:
    """The method label of a raw message, from its first token: one of FLOOD_METHODS,
    "response" for a status line, or "other" (any other request, or garbage)."""
    head = data.lstrip(b"\r\n")[:16]
    token = head.split(b" ", 1)[0].upper()
    if token.startswith(b"SIP/"):
        return "response"
    method = token.decode("ascii", "replace")
    return method if method in FLOOD_METHODS else "other"


class _Block:
    __slots__ = ("dropped", "method", "until")

    def __init__(self, until: float, method: str) -> None:
        self.until = until
        self.method = method
        self.dropped = 0


class FloodGuard:
    """admit(ip, data) -> False for a message to drop. Counts in metrics:
    sip_flood_dropped_total{method, reason="rate"|"blocked"}, sip_flood_blocks_total{method},
    and the sip_sources_blocked gauge."""

    def __init__(self, limits: FloodLimits, *, clock: Clock, metrics: Metrics) -> None:
        self.limits = limits
        self.clock = clock
        self.metrics = metrics
        self._exempt = [ipaddress.ip_network(n, strict=False) for n in limits.exempt_networks]
        self._exempt_cache: OrderedDict[str, bool] = OrderedDict()
        self._buckets: OrderedDict[tuple[str, str], list[float]] = OrderedDict()  # tokens, at
        self._blocked: OrderedDict[str, _Block] = OrderedDict()
        metrics.sip_sources_blocked.set_function(lambda: self.blocked_count)

    @property
    def blocked_count(self) -> int:
        now = self.clock.now()
        return sum(1 for b in self._blocked.values() if b.until > now)

    def is_blocked(self, ip: str) -> bool:
        block = self._blocked.get(ip)
        return block is not None and block.until > self.clock.now()

    def admit(self, ip: str, data: bytes) -> bool:
        """Whether to process this message from `ip`. Never raises."""
        if not self.limits.enabled:
            return True
        now = self.clock.now()
        if self._blocked:
            block = self._blocked.get(ip)
            if block is not None:
                if now < block.until:
                    block.dropped += 1
                    self.metrics.sip_flood_dropped_total.labels(peek_method(data),
                                                                "blocked").inc()
                    return False
                self._unblock(ip, block)
        method = peek_method(data)
        rate = self.limits.rates.get(method)
        if rate is None or self._is_exempt(ip):
            return True
        if self._take(ip, method, rate, now):
            return True
        self._block(ip, method, rate, now)
        self.metrics.sip_flood_dropped_total.labels(method, "rate").inc()
        return False

    def malformed(self, ip: str) -> bool:
        """A message from `ip` failed to parse: False when that was one too many (the
        source is now blocked: do not answer or log it)."""
        rate = self.limits.rates.get(MALFORMED)
        if not self.limits.enabled or rate is None or self._is_exempt(ip):
            return True
        now = self.clock.now()
        if self._take(ip, MALFORMED, rate, now):
            return True
        self._block(ip, MALFORMED, rate, now)
        self.metrics.sip_flood_dropped_total.labels(MALFORMED, "rate").inc()
        return False

    def _take(self, ip: str, method: str, rate: Rate, now: float) -> bool:
        key = (ip, method)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [float(rate.burst), now]
            while len(self._buckets) > self.limits.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(float(rate.burst), bucket[0] + (now - bucket[1]) * rate.per_second)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return True
        return False

    def _block(self, ip: str, method: str, rate: Rate, now: float) -> None:
        seconds = self.limits.block_seconds
        self._blocked[ip] = _Block(now + seconds, method)
        self._blocked.move_to_end(ip)
        while len(self._blocked) > self.limits.max_sources:
            self._blocked.popitem(last=False)
        self._buckets.pop((ip, method), None)  # a full bucket again once the block ends
        self.metrics.sip_flood_blocks_total.labels(method).inc()
        log.warning("SIP flood from %s: more than %d %s at once or %g/s; blocked for %g s",
                    ip, rate.burst, method, rate.per_second, seconds)

    def _unblock(self, ip: str, block: _Block) -> None:
        del self._blocked[ip]
        log.info("SIP source %s unblocked (%d messages dropped while blocked for %s flood)",
                 ip, block.dropped, block.method)

    def _is_exempt(self, ip: str) -> bool:
        if not self._exempt:
            return False
        cached = self._exempt_cache.get(ip)
        if cached is None:
            try:
                address = ipaddress.ip_address(ip)
                cached = any(address in n for n in self._exempt if n.version == address.version)
            except ValueError:
                cached = False
            self._exempt_cache[ip] = cached
            if len(self._exempt_cache) > 4096:
                self._exempt_cache.popitem(last=False)
        return cached
