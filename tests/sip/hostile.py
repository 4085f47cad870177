"""A hostile SIP client for tests: sends raw bytes to a running server over UDP or TCP
and collects what comes back, then checks that the server still answers OPTIONS.
Every wait is bounded."""

from __future__ import annotations

import re
import secrets
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

_STATUS = re.compile(rb"SIP/2\.0 ([1-6][0-9]{2})[ \r]")
_CALL_ID = re.compile(rb"^(?:Call-ID|i)[ \t]*:[ \t]*(\S*)", re.I | re.M)


@dataclass(frozen=True)
class Reply:
    """A response, read leniently: it may echo the broken headers it answers."""

    status: int
    call_id: str
    raw: bytes


def options(port: int, transport: str = "UDP", call_id: str | None = None,
            local: str = "127.0.0.1") -> bytes:
    call_id = call_id or f"probe-{secrets.token_hex(6)}"
    return (
        f"OPTIONS sip:probe@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {local}:{port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:prober@{local}>;tag={secrets.token_hex(4)}\r\n"
        f"To: <sip:probe@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@dataclass
class Exchange:
    """What came back for one hostile message, and whether OPTIONS still worked after it."""

    responses: list[Reply] = field(default_factory=list)
    closed: bool = False  # TCP: the server closed the connection
    probe_ok: bool = False

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]

    @property
    def pending(self) -> bool:
        """A request got a provisional response but no final one yet: keep listening."""
        finals = {r.call_id for r in self.responses if r.status >= 200}
        return any(r.status < 200 and r.call_id not in finals for r in self.responses)


def _until(result: Exchange, grace: float | None, deadline: float) -> float:
    """Listen until the deadline while the probe is unanswered or a request has only had
    a provisional response; else until the grace after the probe's answer."""
    return deadline if grace is None or result.pending else min(grace, deadline)


def _split_responses(buffer: bytearray) -> list[bytes]:
    """Whole messages off the front of a TCP buffer (responses carry Content-Length)."""
    out = []
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return out
        head = bytes(buffer[:end]).decode("latin-1").lower()
        length = 0
        for line in head.split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip() in ("content-length", "l"):
                length = int(value.strip() or 0)
        total = end + 4 + length
        if len(buffer) < total:
            return out
        out.append(bytes(buffer[:total]))
        del buffer[:total]


def _parse(data: bytes) -> Reply | None:
    status = _STATUS.match(data)
    if status is None:
        return None
    call_id = _CALL_ID.search(data)
    return Reply(int(status.group(1)), call_id.group(1).decode("latin-1") if call_id else "",
                 data)


def udp_exchange(server_port: int, data: bytes, *, local: str = "127.0.0.1",
                 timeout: float = 3.0) -> Exchange:
    """Send `data`, then an OPTIONS probe from the same socket; collect every response
    until the probe's answer (plus a short grace for stragglers)."""
    result = Exchange()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((local, 0))
        port = sock.getsockname()[1]
        sock.sendto(data, ("127.0.0.1", server_port))
        probe_id = f"probe-{secrets.token_hex(6)}"
        sock.sendto(options(port, "UDP", probe_id, local), ("127.0.0.1", server_port))
        deadline = time.monotonic() + timeout
        grace: float | None = None
        while time.monotonic() < _until(result, grace, deadline):
            sock.settimeout(max(0.01, _until(result, grace, deadline) - time.monotonic()))
            try:
                raw, _ = sock.recvfrom(70000)
            except TimeoutError:
                break
            response = _parse(raw)
            if response is None:
                continue
            if response.call_id == probe_id:
                result.probe_ok = result.probe_ok or response.status == 200
                grace = grace or time.monotonic() + 0.2
            else:
                result.responses.append(response)
    return result


def connect(server_port: int, timeout: float, tls: ssl.SSLContext | None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server_port), timeout=timeout)
    return tls.wrap_socket(sock, server_hostname="127.0.0.1") if tls is not None else sock


def tcp_exchange(server_port: int, data: bytes, *, timeout: float = 3.0,
                 tls: ssl.SSLContext | None = None) -> Exchange:
    """Send `data` on a fresh connection (TLS with a `tls` context), then an OPTIONS probe
    on it; if the server closed it, probe on a new connection."""
    result = Exchange()
    with connect(server_port, timeout, tls) as sock:
        port = sock.getsockname()[1]
        probe_id = f"probe-{secrets.token_hex(6)}"
        try:
            sock.sendall(data)
            sock.sendall(options(port, "TLS" if tls else "TCP", probe_id))
        except OSError:
            result.closed = True
        buffer = bytearray()
        deadline = time.monotonic() + timeout
        grace: float | None = None
        while not result.closed and time.monotonic() < _until(result, grace, deadline):
            sock.settimeout(max(0.01, _until(result, grace, deadline) - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                result.closed = True
                break
            if not chunk:
                result.closed = True
                break
            buffer += chunk
            for raw in _split_responses(buffer):
                response = _parse(raw)
                if response is None:
                    continue
                if response.call_id == probe_id:
                    result.probe_ok = result.probe_ok or response.status == 200
                    grace = grace or time.monotonic() + 0.2
                else:
                    result.responses.append(response)
    if not result.probe_ok:
        result.probe_ok = tcp_probe(server_port, timeout, tls)
    return result


def tcp_probe(server_port: int, timeout: float = 3.0, tls: ssl.SSLContext | None = None) -> bool:
    with connect(server_port, timeout, tls) as sock:
        probe_id = f"probe-{secrets.token_hex(6)}"
        sock.sendall(options(sock.getsockname()[1], "TLS" if tls else "TCP", probe_id))
        buffer = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, OSError):
                return False
            if not chunk:
                return False
            buffer += chunk
            for raw in _split_responses(buffer):
                response = _parse(raw)
                if response is not None and response.call_id == probe_id:
                    return response.status == 200
    return False


class SipPeer:
    """A bare SIP user agent on one UDP socket, for driving a call by hand: requests
    carry rport, so every answer comes back here."""

    def __init__(self, server_port: int, local: str = "127.0.0.1") -> None:
        self.server_port = server_port
        self.local = local
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((local, 0))
        self.port = self.sock.getsockname()[1]
        self.call_id = f"peer-{secrets.token_hex(6)}"
        self.tag = secrets.token_hex(4)
        self.to_tag = ""

    def close(self) -> None:
        self.sock.close()

    def send(self, method: str, cseq: int, *, uri: str = "sip:echo@127.0.0.1",
             extra: str = "", body: bytes = b"", ctype: str = "application/sdp") -> None:
        to_tag = f";tag={self.to_tag}" if self.to_tag else ""  # in the dialog once answered
        head = (
            f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.local}:{self.port};branch=z9hG4bK{secrets.token_hex(6)}"
            f";rport\r\nMax-Forwards: 70\r\n"
            f"From: <sip:peer@{self.local}>;tag={self.tag}\r\nTo: <sip:echo@127.0.0.1>{to_tag}\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: {cseq} {method}"
            f"\r\nContact: <sip:peer@{self.local}:{self.port}>\r\n{extra}"
        )
        if body:
            head += f"Content-Type: {ctype}\r\n"
        data = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        self.sock.sendto(data, ("127.0.0.1", self.server_port))

    def final(self, cseq: int | None = None, timeout: float = 5.0) -> Reply:
        """The next final response to this peer's call (to request `cseq` if given;
        provisionals and retransmissions of other answers skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no final response")
            self.sock.settimeout(remaining)
            raw, _ = self.sock.recvfrom(70000)
            reply = _parse(raw)
            if cseq is not None and not re.search(rb"^CSeq: %d " % cseq, raw, re.M):
                continue
            if reply is not None and reply.call_id == self.call_id and reply.status >= 200:
                tag = re.search(rb"^(?:To|t)[ \t]*:.*;tag=([^;\s>]+)", raw, re.I | re.M)
                if tag and not self.to_tag:
                    self.to_tag = tag.group(1).decode()
                return reply


def sdp(port: int, host: str = "127.0.0.1", version: int = 1) -> bytes:
    return (f"v=0\r\no=peer 1 {version} IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n"
            "a=sendrecv\r\n").encode()


def sdp_port(body: bytes) -> int:
    match = re.search(rb"^m=audio (\d+) ", body, re.M)
    assert match is not None, body
    return int(match.group(1))


def make_certificate(folder: Path) -> tuple[str, str]:
    """A self-signed EC certificate for 127.0.0.1 and its key (PEM files), by openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def client_context(cert: str) -> ssl.SSLContext:
    """A TLS client that trusts `cert` (and verifies the server against it)."""
    return ssl.create_default_context(cafile=cert)
