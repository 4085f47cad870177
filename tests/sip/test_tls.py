"""SIP over TLS (inbound): the transport's TLS listener, and a real `switchboard serve`
taking OPTIONS and a whole call over TLS, dropping garbage and plain-text clients on the
TLS port and still working after them. Certificates are made here with openssl."""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import socket
import ssl
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from media.clock import ManualClock
from pipeline.metrics import Metrics
from sip.message import SipRequest, make_response
from sip.server import tls_context
from sip.transport import SipTransport, Source, Target, TransportError, response_target
from switchboard.config import ConfigError, load_config
from tests.helpers import free_port, switchboard
from tests.sip.hostile import (
    _parse,
    _split_responses,
    client_context,
    make_certificate,
    options,
    sdp,
    tcp_exchange,
    tcp_probe,
)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


# -- the transport ------------------------------------------------------------------------------


async def test_transport_answers_on_the_tls_connection(certs: tuple[str, str]) -> None:
    got: list[tuple[SipRequest, Source]] = []
    t = SipTransport(lambda m, s: got.append((m, s)), clock=ManualClock(),  # type: ignore[arg-type]
                     metrics=Metrics(CollectorRegistry()))
    await t.start("127.0.0.1", 0, ("udp", "tcp", "tls"), tls_port=0,
                  tls_context=tls_context(*certs))
    try:
        assert t.tls_port not in (0, t.port)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", t.tls_port, ssl=client_context(certs[0]), server_hostname="127.0.0.1")
        writer.write(options(writer.get_extra_info("sockname")[1], "TLS", "tls-1"))
        async with asyncio.timeout(5):
            while not got:
                await asyncio.sleep(0.01)
        request, source = got[0]
        assert source.transport == "tls" and source.reliable and request.call_id == "tls-1"
        response = make_response(request, 200)
        target = response_target(response.top_via, source)
        assert target.transport == "tls" and target.connection == source.connection
        t.send(bytes(response), target)
        async with asyncio.timeout(5):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"SIP/2.0 200 OK")
        assert t.via_for(target, "z9hG4bKx").port == t.tls_port
        # We never open TLS connections ourselves: a target without one fails cleanly.
        errors: list[Exception] = []
        t.send(b"x", Target("tls", "127.0.0.1", 5999), errors.append)
        assert isinstance(errors[0], TransportError)
        writer.close()
    finally:
        await t.stop()


async def test_tls_without_a_certificate_is_refused() -> None:
    t = SipTransport(lambda m, s: None, clock=ManualClock(), metrics=Metrics(CollectorRegistry()))
    with pytest.raises(ValueError, match="certificate"):
        await t.start("127.0.0.1", 0, ("tls",))
    with pytest.raises(ValueError, match="tls_cert_file"):
        tls_context(None, None)
    with pytest.raises(ConfigError, match="tls_cert_file"):
        load_config(None, {"SWITCHBOARD_SIP__TRANSPORTS": "[udp, tls]"})


# -- a real server ------------------------------------------------------------------------------


class TlsPeer:
    """A caller on one TLS connection: every answer comes back on it."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.port = self.sock.getsockname()[1]
        self.call_id, self.tag, self.to_tag = f"tls-{secrets.token_hex(4)}", "a1", ""
        self.buffer = bytearray()

    def send(self, method: str, cseq: int, body: bytes = b"") -> None:
        to_tag = f";tag={self.to_tag}" if self.to_tag else ""
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        self.sock.sendall((
            f"{method} sip:echo@127.0.0.1;transport=tls SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(5)}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag={self.tag}\r\n"
            f"To: <sip:echo@127.0.0.1>{to_tag}\r\nCall-ID: {self.call_id}\r\n"
            f"CSeq: {cseq} {method}\r\nContact: <sip:caller@127.0.0.1:{self.port};transport=tls>"
            f"\r\n{ctype}Content-Length: {len(body)}\r\n\r\n").encode() + body)

    def final(self, cseq: int) -> bytes:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for raw in _split_responses(self.buffer):
                reply = _parse(raw)
                if reply and reply.status >= 200 and re.search(rb"^CSeq: %d " % cseq, raw, re.M):
                    tag = re.search(rb"^To:.*;tag=([^;\s>]+)", raw, re.M)
                    self.to_tag = self.to_tag or (tag.group(1).decode() if tag else "")
                    return raw
            self.buffer += self.sock.recv(65536)
        raise AssertionError("no final response over TLS")


@pytest.mark.slow
def test_a_call_over_tls_and_garbage_on_the_tls_port(tmp_path: Path,
                                                     certs: tuple[str, str]) -> None:
    tls_port = free_port()
    env = {"SWITCHBOARD_SIP__TRANSPORTS": "[udp, tcp, tls]",
           "SWITCHBOARD_SIP__TLS_PORT": str(tls_port),
           "SWITCHBOARD_SIP__TLS_CERT_FILE": certs[0], "SWITCHBOARD_SIP__TLS_KEY_FILE": certs[1]}
    context = client_context(certs[0])
    with switchboard(tmp_path, "--agent", "echo", env=env) as server:
        assert tcp_probe(tls_port, tls=context)
        peer = TlsPeer(tls_port, context)
        try:
            peer.send("INVITE", 1, sdp(free_port(socket.SOCK_DGRAM)))
            ok = peer.final(1)
            assert ok.startswith(b"SIP/2.0 200 ")
            assert re.search(rb"^Contact: <sip:switchboard@127\.0\.0\.1:%d;transport=tls>"
                             % tls_port, ok, re.M), ok
            peer.send("ACK", 1)
            peer.send("BYE", 2)
            assert peer.final(2).startswith(b"SIP/2.0 200 ")
        finally:
            peer.sock.close()
        # Garbage inside TLS: dropped; a malformed request: its 4xx; the port keeps working.
        junk = tcp_exchange(tls_port, bytes(range(256)) * 4, tls=context)
        assert junk.statuses == [] and junk.probe_ok
        bad = tcp_exchange(tls_port, options(5999, "TLS").replace(b"CSeq: 1", b"CSeq: x"),
                           tls=context)
        assert bad.statuses == [400] and bad.probe_ok
        # Plain text to the TLS port fails the handshake and costs nothing else.
        with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as plain:
            plain.sendall(options(plain.getsockname()[1], "TCP"))
            plain.settimeout(5)
            try:
                assert b"SIP/2.0" not in plain.recv(65536)
            except (ConnectionResetError, TimeoutError):
                pass
        assert tcp_probe(tls_port, tls=context)
        assert tcp_probe(server.sip_port)  # and plain TCP on its own port
        assert "Traceback" not in server.log()
