"""SIP transport on real loopback sockets: Via stamping, 18.2.2 routing, TCP framing,
malformed input, keepalives, idle connections."""

from __future__ import annotations

import asyncio
import socket

import pytest
from prometheus_client import CollectorRegistry

from media.clock import ManualClock
from pipeline.metrics import Metrics
from sip.headers import Via
from sip.message import SipMessage, SipRequest, SipResponse, make_response, parse_message
from sip.transport import SipTransport, Source, Target, TransportError, response_target


def options(
    port: int, transport: str = "UDP", rport: bool = True, branch: str = "z9hG4bK1"
) -> bytes:
    rp = ";rport" if rport else ""
    return (
        "OPTIONS sip:echo@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{port};branch={branch}{rp}\r\n"
        "From: <sip:a@127.0.0.1>;tag=x\r\n"
        "To: <sip:echo@127.0.0.1>\r\n"
        "Call-ID: c1\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Inbox:
    def __init__(self) -> None:
        self.items: list[tuple[SipMessage, Source]] = []
        self.event = asyncio.Event()

    def __call__(self, message: SipMessage, source: Source) -> None:
        self.items.append((message, source))
        self.event.set()

    async def wait(self, count: int = 1) -> None:
        async with asyncio.timeout(5):
            while len(self.items) < count:
                self.event.clear()
                await self.event.wait()


@pytest.fixture
async def server():  # type: ignore[no-untyped-def]
    inbox = Inbox()
    metrics = Metrics(CollectorRegistry())
    transport = SipTransport(inbox, clock=ManualClock(), metrics=metrics, tcp_idle_timeout=60)
    await transport.start("127.0.0.1", 0)
    yield transport, inbox
    await transport.stop()


class UdpPeer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.queue.put_nowait(data)

    async def recv(self) -> bytes:
        async with asyncio.timeout(5):
            return await self.queue.get()


@pytest.fixture
async def udp_peer():  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(UdpPeer, local_addr=("127.0.0.1", 0))
    yield transport, peer, transport.get_extra_info("sockname")[1]
    transport.close()


def test_response_target_follows_received_and_rport() -> None:
    via = Via.parse("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKa;rport=40000;received=203.0.113.5")
    assert response_target(via, None) == Target("udp", "203.0.113.5", 40000)
    via = Via.parse("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKa;received=203.0.113.5")
    assert response_target(via, None) == Target("udp", "203.0.113.5", 5070)
    via = Via.parse("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKa")
    assert response_target(via, None) == Target("udp", "10.0.0.1", 5060)
    via = Via.parse("SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bKa;received=203.0.113.5")
    src = Source("tcp", ("203.0.113.5", 51000), ("192.0.2.1", 5060), connection=9)
    assert response_target(via, src) == Target("tcp", "203.0.113.5", 5070, 9)
    # The transport the request came on wins over what its Via claims.
    udp_via = Via.parse("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKa;received=203.0.113.5")
    assert response_target(udp_via, src) == Target("tcp", "203.0.113.5", 5070, 9)
    over_udp = Source("udp", ("203.0.113.5", 51000), ("192.0.2.1", 5060))
    assert response_target(via, over_udp) == Target("udp", "203.0.113.5", 5070)


async def test_udp_request_is_stamped_and_answered_to_rport(server, udp_peer) -> None:  # type: ignore[no-untyped-def]
    transport, inbox = server
    sock, peer, port = udp_peer
    # The Via claims port 5999: with rport the answer must still reach the real source.
    sock.sendto(options(5999), ("127.0.0.1", transport.port))
    await inbox.wait()
    request, source = inbox.items[0]
    assert isinstance(request, SipRequest)
    assert source == Source("udp", ("127.0.0.1", port), ("127.0.0.1", transport.port))
    assert request.top_via.received == "127.0.0.1" and request.top_via.rport == port
    response = make_response(request, 200)
    transport.send(bytes(response), response_target(response.top_via, source))
    got = parse_message(await peer.recv())
    assert isinstance(got, SipResponse) and got.status == 200


async def test_via_without_rport_and_same_host_is_left_alone(server, udp_peer) -> None:  # type: ignore[no-untyped-def]
    transport, inbox = server
    sock, _, port = udp_peer
    sock.sendto(options(port, rport=False), ("127.0.0.1", transport.port))
    await inbox.wait()
    via = inbox.items[0][0].top_via
    assert via.received is None and not via.has_rport


async def test_malformed_udp_request_gets_400_and_junk_is_dropped(server, udp_peer) -> None:  # type: ignore[no-untyped-def]
    transport, inbox = server
    sock, peer, port = udp_peer
    bad = options(port).replace(b"Content-Length: 0", b"Max-Forwards: lots\r\nContent-Length: 0")
    sock.sendto(b"\r\n\r\n", ("127.0.0.1", transport.port))  # keepalive: ignored
    sock.sendto(b"\x00garbage that is not SIP", ("127.0.0.1", transport.port))
    sock.sendto(bad, ("127.0.0.1", transport.port))
    got = parse_message(await peer.recv())
    assert isinstance(got, SipResponse) and got.status == 400
    assert got.reason == "Max-Forwards is not a number: 'lots'"
    assert inbox.items == []
    errors = transport.metrics.registry.get_sample_value(
        "switchboard_sip_parse_errors_total", {"transport": "udp"})
    assert errors == 2.0


async def test_tcp_framing_keepalive_and_response_on_same_connection(server) -> None:  # type: ignore[no-untyped-def]
    transport, inbox = server
    reader, writer = await asyncio.open_connection("127.0.0.1", transport.port)
    first, second = options(5070, "TCP", branch="z9hG4bKa"), options(5070, "TCP", branch="z9hG4bKb")
    writer.write(first + second[:30])  # one and a half messages
    await writer.drain()
    await inbox.wait(1)
    writer.write(second[30:] + b"\r\n\r\n")
    await inbox.wait(2)
    assert [m.top_via.branch for m, _ in inbox.items] == ["z9hG4bKa", "z9hG4bKb"]
    async with asyncio.timeout(5):
        assert await reader.readexactly(2) == b"\r\n"  # pong
    request, source = inbox.items[0]
    assert source.transport == "tcp" and source.connection is not None
    response = make_response(request, 200)  # type: ignore[arg-type]
    target = response_target(response.top_via, source)
    assert target.connection == source.connection
    transport.send(bytes(response), target)
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"SIP/2.0 200 OK")
    writer.close()


async def test_tcp_framing_error_answers_and_closes(server) -> None:  # type: ignore[no-untyped-def]
    transport, inbox = server
    reader, writer = await asyncio.open_connection("127.0.0.1", transport.port)
    huge = options(5070, "TCP").replace(b"Content-Length: 0", b"Content-Length: 900000")
    writer.write(huge)
    await writer.drain()
    async with asyncio.timeout(5):
        data = await reader.read()  # until the server closes
    assert data.startswith(b"SIP/2.0 413 ")
    assert inbox.items == []
    writer.close()


async def test_idle_tcp_connections_closed_unless_held(server) -> None:  # type: ignore[no-untyped-def]
    transport, inbox = server
    clock: ManualClock = transport.clock
    streams = [await asyncio.open_connection("127.0.0.1", transport.port) for _ in range(2)]
    for n, (_, writer) in enumerate(streams):
        writer.write(options(5070, "TCP", branch=f"z9hG4bK{n}"))
    await inbox.wait(2)
    held = inbox.items[0][1].connection
    transport.hold(held)
    clock.advance(30)
    assert transport.close_idle() == 0
    clock.advance(31)
    assert transport.close_idle() == 1
    async with asyncio.timeout(5):
        assert await streams[1][0].read() == b""  # the idle one was closed
    assert transport.connection_open(held)
    transport.release(held)
    clock.advance(61)
    assert transport.close_idle() == 1
    for _, writer in streams:
        writer.close()


async def test_tcp_send_opens_a_connection_and_reports_refusal(server) -> None:  # type: ignore[no-untyped-def]
    transport, _ = server
    other_inbox = Inbox()
    other = SipTransport(other_inbox, clock=ManualClock(), metrics=Metrics(CollectorRegistry()))
    await other.start("127.0.0.1", 0, ("tcp",))
    try:
        transport.send(options(transport.port, "TCP"), Target("tcp", "127.0.0.1", other.port))
        await other_inbox.wait()
        assert transport.tcp_connections == 1
        # A closed port: the error comes back, nothing raises.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        errors: list[Exception] = []
        transport.send(b"x", Target("tcp", "127.0.0.1", dead), errors.append)
        async with asyncio.timeout(5):
            while not errors:
                await asyncio.sleep(0.01)
        assert isinstance(errors[0], TransportError)
    finally:
        await other.stop()


async def test_udp_send_resolves_names(server, udp_peer) -> None:  # type: ignore[no-untyped-def]
    transport, _ = server
    _, peer, port = udp_peer
    transport.send(b"OPTIONS probe", Target("udp", "localhost", port))
    assert await peer.recv() == b"OPTIONS probe"


async def test_via_and_local_host(server) -> None:  # type: ignore[no-untyped-def]
    transport, _ = server
    via = transport.via_for(Target("udp", "127.0.0.1", 5060), "z9hG4bKq")
    assert str(via) == f"SIP/2.0/UDP 127.0.0.1:{transport.port};branch=z9hG4bKq;rport"
    transport.advertised_address = "203.0.113.9"
    assert transport.local_host("127.0.0.1") == "203.0.113.9"


async def test_handler_bug_costs_one_message_not_the_listener(udp_peer) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []

    def broken(message: SipMessage, source: Source) -> None:
        calls.append(1)
        raise RuntimeError("bug")

    transport = SipTransport(broken, clock=ManualClock(), metrics=Metrics(CollectorRegistry()))
    await transport.start("127.0.0.1", 0, ("udp",))
    sock, _, port = udp_peer
    try:
        for _ in range(2):
            sock.sendto(options(port), ("127.0.0.1", transport.port))
        async with asyncio.timeout(5):
            while len(calls) < 2:
                await asyncio.sleep(0.01)
    finally:
        await transport.stop()


async def test_port_0_picks_again_when_tcp_has_the_udp_number_in_use() -> None:
    # The UDP number port 0 gets can be a TCP port in use (outgoing connections take
    # theirs from the same range): hold TCP listeners on the next numbers UDP picks.
    taken: list[socket.socket] = []
    real_bind = asyncio.get_running_loop().create_datagram_endpoint
    first_udp: list[int] = []

    async def udp_then_block_tcp(*args, **kwargs):  # type: ignore[no-untyped-def]
        udp, proto = await real_bind(*args, **kwargs)
        number = udp.get_extra_info("sockname")[1]
        if len(first_udp) < 2:  # the first two picks: TCP has that number in use
            first_udp.append(number)
            blocker = socket.socket()
            blocker.bind(("127.0.0.1", number))
            blocker.listen()
            taken.append(blocker)
        return udp, proto

    loop = asyncio.get_running_loop()
    loop.create_datagram_endpoint = udp_then_block_tcp  # type: ignore[method-assign]
    transport = SipTransport(Inbox(), clock=ManualClock(), metrics=Metrics(CollectorRegistry()))
    try:
        await transport.start("127.0.0.1", 0)
        port = transport.port
        assert port not in first_udp  # picked again, twice
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # the earlier UDP
            s.bind(("127.0.0.1", first_udp[0]))  # sockets were closed: free again
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # TCP listens on the UDP number
    finally:
        del loop.create_datagram_endpoint
        await transport.stop()
        for blocker in taken:
            blocker.close()


async def test_a_fixed_port_in_use_is_an_error_not_a_retry() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        transport = SipTransport(Inbox(), clock=ManualClock(),
                                 metrics=Metrics(CollectorRegistry()))
        with pytest.raises(OSError, match="address already in use"):
            await transport.start("127.0.0.1", port)
        assert transport._udp is None  # the UDP half it did bind was let go
        await transport.stop()
