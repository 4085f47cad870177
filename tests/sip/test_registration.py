"""Trunk registration and the UAC digest client, on a ManualClock against an in-memory
registrar that checks the credentials with sip.digest.DigestServer."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from media.clock import ManualClock, MonotonicClock
from pipeline.metrics import Metrics
from sip.digest import AuthResult, Credentials, DigestServer
from sip.headers import Address
from sip.message import SipRequest, build_request, make_response
from sip.registration import (
    DigestClient,
    Registration,
    RegistrationState,
    TrunkAccount,
    granted_expires,
)
from sip.transaction import TransactionLayer
from sip.transport import SipTransport, Source
from sip.uri import Uri
from tests.helpers import free_port, switchboard
from tests.sip.test_transaction import FakeSender, settle

REGISTRAR = Source("udp", ("192.0.2.50", 5060), ("192.0.2.10", 5060))
SECRET = b"0123456789abcdef0123"


def account(**kwargs: object) -> TrunkAccount:
    fields: dict[str, object] = {"username": "alice", "password": "s3cret", "expires": 600}
    fields.update(kwargs)
    return TrunkAccount.parse("192.0.2.50", **fields)


class Rig:
    def __init__(self, acct: TrunkAccount | None = None, seed: int = 7) -> None:
        self.clock = ManualClock(100.0)
        self.sender = FakeSender()
        self.metrics = Metrics(CollectorRegistry())
        self.layer = TransactionLayer(self.sender, self.clock, lambda *a: None,
                                      metrics=self.metrics)
        self.server = DigestServer("trunk.example", SECRET, algorithms=("SHA-256", "MD5"))
        self.reg = Registration(acct or account(transport="tcp"), transactions=self.layer,
                                local_address=lambda target: ("192.0.2.10", 5070),
                                clock=self.clock, metrics=self.metrics,
                                rng=random.Random(seed))

    def requests(self) -> list[SipRequest]:
        """Distinct REGISTERs sent (UDP retransmissions folded)."""
        out: list[SipRequest] = []
        for message in self.sender.messages():
            assert isinstance(message, SipRequest)
            if not out or bytes(out[-1]) != bytes(message):
                out.append(message)
        return out

    def last(self) -> SipRequest:
        return self.requests()[-1]

    def reply(self, status: int, extra: list[tuple[str, object]] | None = None) -> None:
        response = make_response(self.last(), status, to_tag="reg1", extra=extra or [])
        self.layer.receive(response, REGISTRAR)

    def challenge(self, status: int = 401, stale: bool = False) -> None:
        header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
        challenges = self.server.challenges(self.clock.now(), stale=stale)
        self.reply(status, [(header, c) for c in challenges])

    def verify(self, request: SipRequest, header: str = "Authorization") -> AuthResult:
        value = request.header(header)
        assert value is not None, f"no {header}"
        return self.server.verify(Credentials.parse(value), method=request.method,
                                  password="s3cret", now=self.clock.now(), uri=str(request.uri))

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    async def advance_to(self, t: float, step: float = 0.5) -> None:
        while self.clock.now() < t - 1e-9:
            self.clock.set(min(t, self.clock.now() + step))
            await settle()


def register_request(cseq: int = 5) -> SipRequest:
    aor = Address(Uri.parse("sip:alice@trunk.example"))
    return build_request("REGISTER", Uri.parse("sip:trunk.example"), from_addr=aor.with_tag("f"),
                         to_addr=aor, call_id="c1", cseq=cseq,
                         contact=Address(Uri.parse("sip:alice@192.0.2.10:5070")))


# -- DigestClient ----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
@pytest.mark.parametrize("status", [401, 407])
def test_digest_client_answers_a_challenge_the_server_accepts(algorithm: str,
                                                               status: int) -> None:
    server = DigestServer("trunk.example", SECRET, algorithms=(algorithm,))
    request = register_request().with_header("Via", "SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKx",
                                             top=True)
    header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    challenge = make_response(request, status, extra=[(header, c) for c in
                                                      server.challenges(10.0)])
    retried = DigestClient("alice", "s3cret").answer(request, challenge)
    assert retried is not None
    assert retried.cseq.seq == 6 and retried.call_id == "c1" and "Via" not in retried.headers
    creds_header = "Authorization" if status == 401 else "Proxy-Authorization"
    creds = Credentials.parse(retried.header(creds_header) or "")
    assert creds.algorithm == algorithm and creds.qop == "auth" and creds.nc == 1
    assert server.verify(creds, method="REGISTER", password="s3cret", now=11.0,
                         uri="sip:trunk.example") is AuthResult.OK
    assert bytes(SipRequest.parse(bytes(retried.with_header(
        "Via", "SIP/2.0/UDP h;branch=z9hG4bKy", top=True))))  # still a valid message


def test_digest_client_prefers_sha256_and_gives_up_when_refused() -> None:
    server = DigestServer("trunk.example", SECRET)
    client = DigestClient("alice", "wrong")
    request = register_request()
    challenge = make_response(request, 401, extra=[("WWW-Authenticate", c)
                                                   for c in reversed(server.challenges(1.0))])
    retried = client.answer(request, challenge)
    assert retried is not None
    assert Credentials.parse(retried.header("Authorization") or "").algorithm == "SHA-256"
    again = make_response(retried, 401, extra=[("WWW-Authenticate", c)
                                               for c in server.challenges(2.0)])
    assert client.answer(retried, again) is None  # same realm again: the password is wrong
    stale = make_response(retried, 401, extra=[("WWW-Authenticate", c)
                                               for c in server.challenges(3.0, stale=True)])
    third = client.answer(retried, stale)
    assert third is not None and third.cseq.seq == 7
    assert len(third.headers.get_lines("Authorization")) == 1  # replaced, not stacked


def test_digest_client_ignores_other_realms_and_schemes() -> None:
    request = register_request()
    other = make_response(request, 401, extra=[("WWW-Authenticate",
                                                'Digest realm="elsewhere", nonce="n1"')])
    assert DigestClient("alice", "pw", realm="trunk.example").answer(request, other) is None
    basic = make_response(request, 401, extra=[("WWW-Authenticate", 'Basic realm="x"')])
    assert DigestClient("alice", "pw").answer(request, basic) is None
    assert DigestClient("alice", "pw").answer(request, make_response(request, 403)) is None


def test_digest_client_counts_a_reused_nonce() -> None:
    client = DigestClient("alice", "pw")
    line = 'Digest realm="r", nonce="same", qop="auth", algorithm=MD5'
    first = client.answer(register_request(), make_response(register_request(), 401,
                                                             extra=[("WWW-Authenticate", line)]))
    second = client.answer(register_request(9), make_response(register_request(9), 401,
                                                              extra=[("WWW-Authenticate", line)]))
    assert first is not None and second is not None
    ncs = [Credentials.parse(r.header("Authorization") or "").nc for r in (first, second)]
    assert ncs == [1, 2]


# -- Registration ----------------------------------------------------------------------------


async def test_register_challenge_then_ok_and_refresh() -> None:
    rig = Rig()
    rig.reg.start()
    await settle()
    first = rig.last()
    assert first.method == "REGISTER" and str(first.uri) == "sip:192.0.2.50"
    assert first.header("Authorization") is None and first.expires == 600
    assert str(first.contacts[0].uri) == "sip:alice@192.0.2.10:5070;transport=tcp"
    assert rig.reg.state is RegistrationState.REGISTERING
    rig.challenge(401)
    await settle()
    second = rig.last()
    assert second.cseq.seq == first.cseq.seq + 1 and second.call_id == first.call_id
    assert second.from_addr.tag == first.from_addr.tag
    assert rig.verify(second) is AuthResult.OK
    assert second.top_via.branch != first.top_via.branch
    rig.reply(200, [("Contact", "<sip:alice@192.0.2.10:5070;transport=tcp>;expires=120")])
    await settle()
    assert rig.reg.state is RegistrationState.REGISTERED and rig.reg.registered
    assert rig.reg.expires_at == 220.0
    assert rig.reg.next_attempt is not None and 160.0 <= rig.reg.next_attempt <= 196.0
    assert rig.sample("switchboard_sip_registered") == 1
    assert rig.sample("switchboard_sip_registrations_total", outcome="ok") == 1
    # The refresh goes out before expiry, same Call-ID, next CSeq.
    await rig.advance_to(rig.reg.next_attempt)
    refresh = rig.last()
    assert refresh.cseq.seq == second.cseq.seq + 1 and refresh.call_id == first.call_id
    assert rig.reg.state is RegistrationState.REGISTERING and rig.reg.registered
    rig.challenge(401)
    await settle()
    rig.reply(200, [("Expires", "300")])
    await settle()
    assert rig.reg.expires_at == pytest.approx(rig.clock.now() + 300)
    await rig.reg.stop(unregister=False)
    assert rig.reg.state is RegistrationState.STOPPED
    assert rig.sample("switchboard_sip_registered") == 0
    rig.layer.close()


async def test_unregister_on_stop_sends_expires_zero_with_credentials() -> None:
    rig = Rig()
    rig.reg.start()
    await settle()
    rig.reply(200, [("Expires", "600")])
    await settle()
    assert rig.reg.state is RegistrationState.REGISTERED
    stop = asyncio.get_running_loop().create_task(rig.reg.stop())
    await settle()
    unreg = rig.last()
    assert unreg.expires == 0 and unreg.call_id == rig.reg.call_id
    rig.challenge(407)
    await settle()
    retried = rig.last()
    assert retried.expires == 0 and rig.verify(retried, "Proxy-Authorization") is AuthResult.OK
    rig.reply(200)
    await stop
    assert rig.reg.state is RegistrationState.STOPPED and not rig.reg.registered
    rig.layer.close()


async def test_unregister_gives_up_at_its_deadline() -> None:
    rig = Rig()
    rig.reg.start()
    await settle()
    rig.reply(200)
    await settle()
    stop = asyncio.get_running_loop().create_task(rig.reg.stop(timeout=2.0))
    await rig.advance_to(102.5)
    assert stop.done() and rig.reg.state is RegistrationState.STOPPED
    rig.layer.close()


async def test_failures_back_off_exponentially_and_recover() -> None:
    rig = Rig()
    rig.reg.start()
    await settle()
    delays = []
    for _ in range(4):
        before = rig.clock.now()
        rig.reply(403)
        await settle()
        assert rig.reg.state is RegistrationState.RETRYING and not rig.reg.registered
        assert rig.reg.next_attempt is not None
        delays.append(rig.reg.next_attempt - before)
        sent = len(rig.requests())
        await rig.advance_to(rig.reg.next_attempt)
        assert len(rig.requests()) == sent + 1  # tried again on time
    for n, delay in enumerate(delays):  # 2, 4, 8, 16 s, each times 0.5-1.0
        assert 2.0 * 2**n * 0.5 <= delay <= 2.0 * 2**n
    assert rig.sample("switchboard_sip_registrations_total", outcome="auth_failed") == 4
    assert rig.reg.last_status == 403 and rig.reg.failures == 4
    rig.reply(200)
    await settle()
    assert rig.reg.state is RegistrationState.REGISTERED and rig.reg.failures == 0
    await rig.reg.stop(unregister=False)
    rig.layer.close()


async def test_wrong_password_is_not_retried_in_a_loop() -> None:
    rig = Rig(account(transport="tcp", password="wrong"))
    rig.reg.start()
    await settle()
    rig.challenge(401)
    await settle()
    assert rig.verify(rig.last()) is not AuthResult.OK  # signed, but with the wrong password
    rig.challenge(401)
    await settle()
    assert rig.reg.state is RegistrationState.RETRYING
    assert rig.sample("switchboard_sip_registrations_total", outcome="auth_failed") == 1
    assert len(rig.requests()) == 2
    await rig.reg.stop(unregister=False)
    rig.layer.close()


async def test_timeout_over_udp_then_retry_after_and_interval_too_brief() -> None:
    rig = Rig(account(transport="udp", expires=60))
    rig.reg.start()
    await settle()
    await rig.advance_to(100.0 + 32.0)  # Timer F: 64*T1 without an answer
    assert rig.reg.state is RegistrationState.RETRYING
    assert rig.sample("switchboard_sip_registrations_total", outcome="timeout") == 1
    assert len(rig.sender.sent) > 5  # Timer E retransmitted it meanwhile
    await rig.advance_to(rig.reg.next_attempt or 0)
    rig.reply(503, [("Retry-After", "120")])
    await settle()
    assert rig.reg.next_attempt == pytest.approx(rig.clock.now() + 120)
    await rig.advance_to(rig.reg.next_attempt or 0)
    asked = rig.last()
    rig.reply(423, [("Min-Expires", "3600")])
    await settle()
    retried = rig.last()
    assert retried.expires == 3600 and retried.cseq.seq == asked.cseq.seq + 1
    rig.reply(200, [("Contact", "<sip:alice@192.0.2.10:5070>;expires=3600")])
    await settle()
    assert rig.reg.state is RegistrationState.REGISTERED
    await rig.reg.stop(unregister=False)
    rig.layer.close()


async def test_zero_granted_is_a_failure() -> None:
    rig = Rig()
    rig.reg.start()
    await settle()
    rig.reply(200, [("Expires", "0")])
    await settle()
    assert rig.reg.state is RegistrationState.RETRYING
    await rig.reg.stop()
    assert len(rig.requests()) == 1  # nothing bound: no unregister
    rig.layer.close()


def test_granted_expires_prefers_our_contact() -> None:
    request = register_request()
    ok = make_response(request, 200, extra=[
        ("Contact", "<sip:other@192.0.2.99>;expires=30"),
        ("Contact", "<sip:alice@192.0.2.10:5070>;expires=90"), ("Expires", "45")])
    assert granted_expires(ok, request, 600) == 90
    assert granted_expires(make_response(request, 200, extra=[("Expires", "45")]), request,
                           600) == 45
    assert granted_expires(make_response(request, 200), request, 600) == 600
    nat = make_response(request, 200, extra=[("Contact", "<sip:alice@203.0.113.5:9>;expires=77")])
    assert granted_expires(nat, request, 600) == 77


def test_trunk_account_addresses() -> None:
    a = TrunkAccount.parse("pbx.example:5080", username="u", password="hunter2")
    assert a.target.host == "pbx.example" and a.target.port == 5080
    assert str(a.aor.uri) == "sip:u@pbx.example:5080"
    assert "hunter2" not in repr(a)
    b = TrunkAccount.parse("[::1]", username="u", domain="voip.example", transport="tcp")
    assert b.target.host == "::1" and b.target.transport == "tcp" and b.port == 5060
    assert str(b.aor.uri) == "sip:u@voip.example"


@settings(max_examples=200, deadline=None)
@given(failures=st.integers(0, 60), retry_after=st.none() | st.integers(0, 4000),
       seed=st.integers(0, 2**32))
def test_retry_delay_bounds(failures: int, retry_after: int | None, seed: int) -> None:
    reg = Registration.__new__(Registration)
    reg.retry_base, reg.retry_max, reg._rng = 2.0, 300.0, random.Random(seed)
    delay = reg.retry_delay(failures, retry_after)
    ceiling = min(300.0, 2.0 * 2**failures)
    assert delay >= (retry_after or 0)
    assert delay >= ceiling * 0.5
    assert delay <= max(ceiling, retry_after or 0)




# -- against a real SIPp registrar -----------------------------------------------------------

SIPP_DIR = Path(__file__).resolve().parents[2] / "loadtest" / "sipp"


def start_sipp(scenario: str, port: int, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    if shutil.which("sipp") is None:
        pytest.skip("sipp is not installed")
    return subprocess.Popen(
        ["sipp", "-sf", str(SIPP_DIR / scenario), "-i", "127.0.0.1", "-p", str(port), "-m", "1",
         "-nostdin", "-timeout", "60s", "-timeout_error", "-trace_err", *args],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def sipp_result(proc: subprocess.Popen[str], tmp_path: Path, timeout: float = 30.0) -> int:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    if proc.returncode != 0:
        errors = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*errors.log"))
        print(out[-3000:], errors[-3000:])
    return proc.returncode


@pytest.mark.slow
async def test_register_refresh_unregister_with_real_sipp(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    sipp = start_sipp("registrar_auth.xml", port, tmp_path, "-set", "user", "alice",
                      "-set", "password", "s3cret")
    clock, metrics = MonotonicClock(), Metrics(CollectorRegistry())
    layer: TransactionLayer | None = None
    transport = SipTransport(lambda m, s: layer.receive(m, s) if layer else None,  # type: ignore[func-returns-value]
                             clock=clock, metrics=metrics)
    await transport.start("127.0.0.1", 0, ("udp",))
    layer = TransactionLayer(transport, clock, lambda *a: None, metrics=metrics)
    reg = Registration(TrunkAccount.parse(f"127.0.0.1:{port}", username="alice",
                                          password="s3cret", expires=600),
                       transactions=layer, clock=clock, metrics=metrics,
                       local_address=lambda t: (transport.local_host(t.host), transport.port))
    try:
        await asyncio.sleep(0.3)  # let SIPp bind
        reg.start()
        await asyncio.wait_for(reg.wait_state(RegistrationState.REGISTERED), 10)
        first_expiry = reg.expires_at
        assert first_expiry is not None and first_expiry - clock.now() <= 4.0
        await asyncio.wait_for(reg.wait_state(RegistrationState.REGISTERING), 10)  # refresh
        await asyncio.wait_for(reg.wait_state(RegistrationState.REGISTERED), 10)
        assert reg.expires_at is not None and reg.expires_at - clock.now() > 3000
        await reg.stop()
        assert reg.state is RegistrationState.STOPPED and reg.last_status == 200
    finally:
        await reg.stop(unregister=False)
        layer.close()
        await transport.stop()
    assert sipp_result(sipp, tmp_path) == 0
    assert metrics.registry.get_sample_value("switchboard_sip_registrations_total",
                                             {"outcome": "ok"}) == 2  # + the unregister


@pytest.mark.slow
def test_switchboard_serve_registers_refreshes_and_unregisters(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    sipp = start_sipp("registrar_auth.xml", port, tmp_path, "-set", "user", "alice",
                      "-set", "password", "s3cret")
    env = {"SWITCHBOARD_SIP__TRUNK__REGISTRAR": f"127.0.0.1:{port}",
           "SWITCHBOARD_SIP__TRUNK__USERNAME": "alice",
           "SWITCHBOARD_SIP__TRUNK__PASSWORD": "s3cret"}
    try:
        with switchboard(tmp_path, "--agent", "echo", env=env) as server:
            ok = 'switchboard_sip_registrations_total{outcome="ok"} 2.0'
            deadline = time.monotonic() + 15
            while ok not in server.metrics() and time.monotonic() < deadline:
                time.sleep(0.2)  # the registrar granted 4 s: the refresh comes within ~3 s
            assert ok in server.metrics(), server.log()
            assert "switchboard_sip_registered 1.0" in server.metrics()
            assert server.http_json("/readyz")["trunk_registration"] == "registered"  # type: ignore[index]
            server.proc.terminate()  # the unregister goes out at shutdown
            assert server.proc.wait(timeout=20) == 0, server.log()
        assert "unregistered sip:alice@127.0.0.1" in server.log()
    finally:
        code = sipp_result(sipp, tmp_path)
    assert code == 0
