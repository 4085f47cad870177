"""sip.flood: per-source token buckets, blocking, expiry, bounded tables, and the
transport dropping a blocked source's messages (UDP and TCP) before parsing."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from prometheus_client import CollectorRegistry

from media.clock import ManualClock
from pipeline.metrics import Metrics
from sip.flood import FloodGuard, FloodLimits, Rate, peek_method
from sip.transport import SipTransport

INVITE = b"INVITE sip:x@127.0.0.1 SIP/2.0\r\n\r\n"
OPTIONS = b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\n\r\n"
BYE = b"BYE sip:x@127.0.0.1 SIP/2.0\r\n\r\n"
LIMITS = FloodLimits(rates={"INVITE": Rate(2.0, 5), "OPTIONS": Rate(1.0, 3)},
                     block_seconds=30.0, max_sources=100, exempt_networks=("10.9.0.0/16",))


def make_guard(limits: FloodLimits = LIMITS) -> tuple[FloodGuard, ManualClock, Metrics]:
    clock = ManualClock(100.0)
    metrics = Metrics(CollectorRegistry())
    return FloodGuard(limits, clock=clock, metrics=metrics), clock, metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(f"switchboard_{name}", labels)
    return value or 0.0


def test_peek_method() -> None:
    assert peek_method(INVITE) == "INVITE"
    assert peek_method(b"\r\nregister sip:x SIP/2.0") == "REGISTER"
    assert peek_method(b"SIP/2.0 200 OK\r\n") == "response"
    assert peek_method(BYE) == "other"
    assert peek_method(b"\xff\xfe\x00garbage") == "other"
    assert peek_method(b"") == "other"


def test_burst_then_block_then_expiry(caplog: pytest.LogCaptureFixture) -> None:
    guard, clock, metrics = make_guard()
    caplog.set_level(logging.INFO, "sip.flood")
    assert all(guard.admit("192.0.2.7", INVITE) for _ in range(5))
    assert not guard.admit("192.0.2.7", INVITE)  # the 6th at once trips the block
    assert guard.is_blocked("192.0.2.7") and guard.blocked_count == 1
    # Blocked: every method, and responses, are dropped; other sources are not affected.
    for data in (INVITE, OPTIONS, BYE, b"SIP/2.0 200 OK\r\n\r\n") * 25:
        assert not guard.admit("192.0.2.7", data)
    assert guard.admit("192.0.2.8", INVITE)
    assert sample(metrics, "sip_flood_blocks_total", method="INVITE") == 1
    assert sample(metrics, "sip_flood_dropped_total", method="INVITE", reason="rate") == 1
    assert sample(metrics, "sip_flood_dropped_total", method="INVITE", reason="blocked") == 25
    assert sample(metrics, "sip_flood_dropped_total", method="other", reason="blocked") == 25
    assert sample(metrics, "sip_flood_dropped_total", method="response", reason="blocked") == 25
    assert sample(metrics, "sip_sources_blocked") == 1
    clock.advance(29.9)
    assert not guard.admit("192.0.2.7", OPTIONS)
    clock.advance(0.2)
    assert sample(metrics, "sip_sources_blocked") == 0
    assert guard.admit("192.0.2.7", INVITE)  # the block ended, with a full bucket
    assert not guard.is_blocked("192.0.2.7")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "192.0.2.7" in warnings[0].getMessage()
    ends = [r.getMessage() for r in caplog.records if "unblocked" in r.getMessage()]
    assert len(ends) == 1 and "101 messages dropped" in ends[0]


def test_sustained_rate_under_the_limit_is_never_blocked() -> None:
    guard, clock, _ = make_guard()
    for _ in range(200):  # 2/s allowed, 1.9/s sent
        assert guard.admit("192.0.2.7", INVITE)
        clock.advance(1 / 1.9)
    assert not guard.is_blocked("192.0.2.7")


def test_methods_have_their_own_buckets_and_unlimited_methods_pass() -> None:
    guard, _, _ = make_guard()
    assert all(guard.admit("192.0.2.7", OPTIONS) for _ in range(3))
    assert all(guard.admit("192.0.2.7", INVITE) for _ in range(5))
    assert all(guard.admit("192.0.2.7", BYE) for _ in range(100))
    assert not guard.admit("192.0.2.7", OPTIONS)
    assert guard.is_blocked("192.0.2.7")


def test_exempt_networks_and_disabled_guard_are_not_limited() -> None:
    guard, _, _ = make_guard()
    assert all(guard.admit("10.9.1.1", INVITE) for _ in range(100))
    assert all(guard.admit("not-an-ip", OPTIONS) for _ in range(3))
    off, _, _ = make_guard(FloodLimits(enabled=False, rates=LIMITS.rates))
    assert all(off.admit("192.0.2.7", INVITE) for _ in range(100))


def test_tables_stay_bounded_under_a_spray_of_sources() -> None:
    guard, _, _ = make_guard()
    for i in range(5000):
        ip = f"198.51.{i // 250}.{i % 250}"
        for _ in range(6):
            guard.admit(ip, INVITE)
    assert len(guard._buckets) <= 100 and len(guard._blocked) <= 100
    assert guard.is_blocked("198.51.19.249")  # the latest blocks are kept


# -- in the transport, on real sockets -------------------------------------------------------


@pytest.fixture
async def transport():  # type: ignore[no-untyped-def]
    got: list[str] = []
    clock = ManualClock()
    metrics = Metrics(CollectorRegistry())
    guard = FloodGuard(FloodLimits(rates={"OPTIONS": Rate(1.0, 2)}, exempt_networks=()),
                       clock=clock, metrics=metrics)
    t = SipTransport(lambda m, s: got.append(m.method), clock=clock, metrics=metrics,
                     guard=guard)
    await t.start("127.0.0.1", 0)
    yield t, got, clock
    await t.stop()


def options(n: int) -> bytes:
    return (f"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5099;branch=z9hG4bK{n}"
            f"\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: f{n}\r\n"
            f"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


async def test_transport_drops_a_flooding_udp_source_but_not_others(transport) -> None:
    t, got, clock = transport
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.bind(("127.0.0.2", 0))
    other.bind(("127.0.0.1", 0))
    try:
        for n in range(10):
            flood.sendto(options(n), ("127.0.0.1", t.port))
        other.sendto(options(99), ("127.0.0.1", t.port))
        async with asyncio.timeout(5):
            while len(got) < 3:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert len(got) == 3  # two from the flood, then the block; one from the other
        assert t.guard is not None and t.guard.is_blocked("127.0.0.2")
        clock.advance(61)
        flood.sendto(options(50), ("127.0.0.1", t.port))
        async with asyncio.timeout(5):
            while len(got) < 4:
                await asyncio.sleep(0.01)
    finally:
        flood.close()
        other.close()


async def test_transport_closes_tcp_from_a_blocked_source(transport) -> None:
    t, got, _ = transport
    for n in range(3):
        t.deliver(options(n), _source("127.0.0.3"))
    assert len(got) == 2
    reader, writer = await asyncio.open_connection("127.0.0.1", t.port, local_addr=("127.0.0.3", 0))
    try:
        writer.write(options(7))
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed without an answer
        assert len(got) == 2
    finally:
        writer.close()


def _source(ip: str):  # type: ignore[no-untyped-def]
    from sip.transport import Source
    return Source("udp", (ip, 5060), ("127.0.0.1", 5060))


async def test_tcp_connections_per_source_are_capped() -> None:
    clock = ManualClock()
    metrics = Metrics(CollectorRegistry())
    t = SipTransport(lambda m, s: None, clock=clock, metrics=metrics, max_tcp_per_source=3)
    await t.start("127.0.0.1", 0)
    writers = []
    try:
        for _ in range(5):
            _, writer = await asyncio.open_connection("127.0.0.1", t.port,
                                                      local_addr=("127.0.0.4", 0))
            writers.append(writer)
        _, other = await asyncio.open_connection("127.0.0.1", t.port)
        writers.append(other)
        async with asyncio.timeout(5):
            while t.tcp_connections < 4 or sample(metrics, "sip_flood_dropped_total",
                                                  method="other", reason="connections") < 2:
                await asyncio.sleep(0.01)
        assert t.tcp_connections == 4  # three from 127.0.0.4, one from 127.0.0.1
        writers[0].close()
        async with asyncio.timeout(5):
            while t.tcp_connections > 3:
                await asyncio.sleep(0.01)
        _, again = await asyncio.open_connection("127.0.0.1", t.port, local_addr=("127.0.0.4", 0))
        writers.append(again)
        async with asyncio.timeout(5):
            while t.tcp_connections < 4:  # a slot freed by the close is taken again
                await asyncio.sleep(0.01)
    finally:
        for writer in writers:
            writer.close()
        await t.stop()


def test_malformed_messages_have_their_own_limit() -> None:
    limits = FloodLimits(rates={**LIMITS.rates, "malformed": Rate(1.0, 3)}, exempt_networks=())
    guard, _, metrics = make_guard(limits)
    assert all(guard.malformed("192.0.2.9") for _ in range(3))
    assert not guard.malformed("192.0.2.9") and guard.is_blocked("192.0.2.9")
    assert not guard.admit("192.0.2.9", OPTIONS)
    assert sample(metrics, "sip_flood_blocks_total", method="malformed") == 1
    assert sample(metrics, "sip_flood_dropped_total", method="malformed", reason="rate") == 1
    exempt, _, _ = make_guard(FloodLimits(rates=limits.rates, exempt_networks=("192.0.2.0/24",)))
    assert all(exempt.malformed("192.0.2.9") for _ in range(50))


async def test_a_garbage_flood_is_blocked_and_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    metrics = Metrics(CollectorRegistry())
    guard = FloodGuard(FloodLimits(rates={"malformed": Rate(1.0, 5)}, exempt_networks=()),
                       clock=clock, metrics=metrics)
    t = SipTransport(lambda m, s: None, clock=clock, metrics=metrics, guard=guard)
    caplog.set_level(logging.INFO)
    for n in range(100):
        t.deliver(b"\x00garbage %d\r\n\r\n" % n, _source("198.51.100.3"))
    assert sample(metrics, "sip_parse_errors_total", transport="udp") == 6  # then blocked
    assert sample(metrics, "sip_flood_dropped_total", method="other", reason="blocked") == 94
    lines = [r.getMessage() for r in caplog.records if "198.51.100.3" in r.getMessage()]
    assert len(lines) == 6  # five "malformed SIP" lines, then the one block
    assert sum("SIP flood from 198.51.100.3" in line for line in lines) == 1


def test_default_limits_cover_every_other_request_too() -> None:
    guard, _, metrics = make_guard(FloodLimits(exempt_networks=()))
    assert all(guard.admit("192.0.2.5", BYE) for _ in range(200))
    assert not guard.admit("192.0.2.5", BYE)
    assert sample(metrics, "sip_flood_blocks_total", method="other") == 1
    assert guard.admit("192.0.2.6", b"SIP/2.0 200 OK\r\n\r\n")  # responses are not limited
