"""Hostile input against a real `switchboard serve`, over UDP and over TCP.

Every RFC 4475 torture message (fixtures/rfc4475: section 3.1.1 valid, 3.1.2 invalid, and
the rest of section 3) and every other malformed message (torture/: garbage, binary, an
HTTP or TLS hello, truncated, bad or huge Content-Length, huge or too many headers,
stray responses, ...) is sent on its own; for each, the expected answer (a 4xx/5xx, the
answer a valid request earns, or silence for what cannot be answered) and whether it is
counted as malformed; after each, the server still answers OPTIONS. At the end a real
SIPp call (loadtest/sipp/uac_pcmu.xml) still works.

Expectations are "STATUS[,STATUS]" for the final responses that come back ("" none),
"!" when the message is counted in sip_parse_errors_total, "x" when the server closes
the TCP connection. Valid RFC 4475 messages over UDP are answered to their Via's port
(no rport), which is not ours: for them "processed" means not counted as malformed.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from loadtest.pcap import pcm_to_rtp, write_rtp_pcap
from tests.helpers import Server, free_port, switchboard
from tests.sip.hostile import (
    Exchange,
    client_context,
    make_certificate,
    tcp_exchange,
    udp_exchange,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp (sip-tester) not installed"),
]

HERE = Path(__file__).parent
RFC4475 = HERE / "fixtures" / "rfc4475"
TORTURE = HERE / "torture"
MAX_MESSAGE = 16384  # the server under test takes SIP messages up to this size

# name: (over UDP, over TCP)
EXPECTED: dict[str, tuple[str, str]] = {
    # RFC 4475 3.1.1: valid messages, processed (TCP shows what they earn: INVITEs from a
    # trusted source are answered by the echo agent, REGISTER and odd methods get 405).
    "wsinv": ("", "481"), "intmeth": ("", "405"), "esc01": ("", "200"), "escnull": ("", "405"),
    "esc02": ("", "405"), "lwsdisp": ("", "200"), "longreq": ("", "200"),
    # dblreq: over a stream, the INVITE after the REGISTER's Content-Length: 0 is a second
    # message, and a broken one (RFC 4475 3.1.1.8).
    "dblreq": ("", "405,400!"),
    "semiuri": ("", "200"), "transports": ("", "200"), "mpart01": ("405", "405"),
    "unreason": ("", ""), "noreason": ("", ""),  # responses to nothing: dropped
    # RFC 4475 3.1.2: invalid messages, answered 4xx/5xx when a response can be routed.
    "badinv01": ("400!", "400!"), "clerr": ("400!", ""),  # TCP: waits for the promised body
    "scalar02": ("400!", "400!"), "scalarlg": ("!", "!"), "quotbal": ("400!", "400!"),
    "ltgtruri": ("400!", "400!"), "lwsruri": ("400!", "400!"), "lwsstart": ("400!", "400!"),
    "trws": ("", "200"), "escruri": ("400!", "400!"), "baddate": ("", "200"),
    "regbadct": ("400!", "400!"), "badaspec": ("400!", "400!"), "baddn": ("400!", "400!"),
    "badvers": ("505!", "505!"), "mismatch01": ("400!", "400!"), "mismatch02": ("400!", "400!"),
    "bigcode": ("!", "!"), "badbranch": ("", "200"),
    # RFC 4475 3.3-3.4: transaction layer and application layer oddities.
    "insuf": ("!", "!"), "unkscm": ("416!", "416!"), "novelsc": ("416!", "416!"),
    "unksm2": ("", "405"), "bext01": ("", "200"), "invut": ("", "415"), "regaut01": ("", "405"),
    "multi01": ("400!", "400!"), "mcl01": ("400!", "400!x"), "bcast": ("", ""),
    "zeromf": ("", "200"), "cparam01": ("", "405"), "cparam02": ("", "405"),
    "regescrt": ("", "405"), "sdp01": ("", "200"),
    # Without Content-Length a stream cannot tell the SDP from the next message.
    "inv2543": ("", "400!"), "ncl": ("400!", "400!x"),
    # Other malformed SIP (torture/).
    "http_request": ("!", "!"), "binary": ("!", "!"), "garbage": ("!", "!"),
    "truncated_head": ("!", "!"),
    # Over TCP the probe that follows completes the promised body: the request is taken.
    "truncated_body": ("400!", "200!"),
    "bad_content_length": ("400!", "400!x"), "huge_content_length": ("400!", "413!x"),
    "bad_cseq": ("400!", "400!"), "no_via": ("!", "!"), "bad_via": ("400!", "400!"),
    "nul_in_header": ("200", "200"), "invalid_utf8": ("200", "200"),
    "stray_response": ("", ""), "bad_ack": ("!", "!x"), "bye_no_dialog": ("481", "481"),
    "cancel_no_tx": ("481", "481"), "bad_sdp": ("400", "400"), "sdp_not_sdp": ("415", "415"),
    "require_unknown": ("420", "420"), "unknown_method": ("405", "405"),
    "register": ("405", "405"), "subscribe": ("405", "405"), "refer_no_dialog": ("403", "403"),
    "version_3": ("505!", "505!"),
    # Generated here: too big in one way or another.
    "huge_header": ("513!", "513!"), "many_headers": ("513!", "513!"),
    "deep_via": ("513!", "513!"),
    "huge_message": ("!", "413!x"),  # UDP: over the limit, not even parsed: dropped
    "long_uri": ("200", "200"),
}


def _options(extra: bytes, body: bytes = b"", uri: bytes = b"sip:service@127.0.0.1") -> bytes:
    return (b"OPTIONS " + uri + b" SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-generated;rport\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:torturer@127.0.0.1>;tag=gen\r\n"
            b"To: <sip:service@127.0.0.1>\r\nCall-ID: torture-generated\r\nCSeq: 1 OPTIONS\r\n"
            + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def generated() -> dict[str, bytes]:
    return {
        "huge_header": _options(b"X-Pad: " + b"p" * 10_000 + b"\r\n"),
        "many_headers": _options(b"".join(b"X-H%d: v\r\n" % i for i in range(300))),
        "deep_via": _options(b"".join(b"Via: SIP/2.0/UDP 10.0.0.%d;branch=z9hG4bK%d\r\n"
                                      % (i % 250, i) for i in range(100))),
        "huge_message": _options(b"Content-Type: text/plain\r\n", b"b" * (MAX_MESSAGE + 4000)),
        "long_uri": _options(b"", uri=b"sip:" + b"u" * 12_000 + b"@127.0.0.1"),
    }


def messages() -> dict[str, bytes]:
    found = {p.stem: p.read_bytes() for p in sorted(RFC4475.glob("*.dat"))}
    found.update({p.stem: p.read_bytes() for p in sorted(TORTURE.iterdir())})
    found.update(generated())
    return found


def test_every_message_has_an_expectation() -> None:
    assert set(messages()) == set(EXPECTED)
    assert len(list(TORTURE.iterdir())) >= 20


def parse_errors(server: Server) -> float:
    return sum(float(v) for v in re.findall(
        r"^switchboard_sip_parse_errors_total\{[^}]*\} (\S+)$", server.metrics(), re.M))


def outcome(exchange: Exchange, counted: bool) -> str:
    finals = [str(s) for s in exchange.statuses if s >= 200]
    return ",".join(finals) + ("!" if counted else "") + ("x" if exchange.closed else "")


def tone_pcap(path: Path, seconds: float = 3.0) -> None:
    t = np.arange(int(8000 * seconds)) / 8000
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()
    write_rtp_pcap(path, pcm_to_rtp(pcm))


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_hostile_messages_then_a_real_call(tmp_path: Path, transport: str) -> None:
    """Over TLS the expectations are TCP's (the same framing) and SIPp calls over UDP."""
    from tests.sip.test_sipp import run_sipp

    env = {"SWITCHBOARD_SIP__MAX_MESSAGE_BYTES": str(MAX_MESSAGE)}
    send: Callable[[int, bytes], Exchange] = udp_exchange if transport == "udp" else tcp_exchange
    if transport == "tls":
        if shutil.which("openssl") is None:
            pytest.skip("no openssl")
        cert, key = make_certificate(tmp_path)
        tls_port = free_port()
        env.update({"SWITCHBOARD_SIP__TRANSPORTS": "[udp, tcp, tls]",
                    "SWITCHBOARD_SIP__TLS_PORT": str(tls_port),
                    "SWITCHBOARD_SIP__TLS_CERT_FILE": cert, "SWITCHBOARD_SIP__TLS_KEY_FILE": key})
        context = client_context(cert)

        def send(_port: int, data: bytes) -> Exchange:
            return tcp_exchange(tls_port, data, tls=context)

    column = 0 if transport == "udp" else 1
    with switchboard(tmp_path, "--agent", "echo", env=env) as server:
        wrong: list[str] = []
        for name, data in messages().items():
            before = parse_errors(server)
            exchange = send(server.sip_port, data)
            got = outcome(exchange, parse_errors(server) > before)
            if got != EXPECTED[name][column]:
                wrong.append(f"{name}: expected {EXPECTED[name][column]!r}, got {got!r} "
                             f"{exchange.statuses}")
            if not exchange.probe_ok:
                wrong.append(f"{name}: OPTIONS not answered after it")
        assert not wrong, "\n".join(wrong)
        tone_pcap(tmp_path / "speech.pcap")
        run = run_sipp("uac_pcmu", "udp" if transport == "tls" else transport, server, tmp_path,
                       "-d", "3500")
        assert run.returncode == 0, run.explain()
        assert server.proc.poll() is None
        log = server.log()
        assert "Traceback" not in log, log[-5000:]
