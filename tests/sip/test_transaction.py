"""Transactions on a ManualClock: retransmission schedules, timeouts, matching, caching.

FakeSender (also used by the dialog/endpoint/call tests) records what would go on the
wire instead of sending it.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from media.clock import ManualClock
from pipeline.metrics import Metrics
from sip.grammar import Params
from sip.headers import Via
from sip.message import SipMessage, SipRequest, SipResponse, make_response, parse_message
from sip.timers import retransmit_intervals
from sip.transaction import (
    ClientTransaction,
    InviteServerTransaction,
    ServerTransaction,
    State,
    TransactionFailed,
    TransactionLayer,
    TransactionTimeout,
)
from sip.transport import ErrorHandler, Source, Target

UDP = Source("udp", ("192.0.2.7", 5062), ("192.0.2.10", 5060))
TCP = Source("tcp", ("192.0.2.7", 40000), ("192.0.2.10", 5060), connection=3)
PEER_UDP = Target("udp", "192.0.2.7", 5062)
PEER_TCP = Target("tcp", "192.0.2.7", 5062)


class FakeSender:
    """The transport as the transaction layer sees it; keeps every send."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Target]] = []
        self.fail: Exception | None = None

    def send(self, data: bytes, target: Target, on_error: ErrorHandler | None = None) -> None:
        if self.fail is not None:
            if on_error is not None:
                on_error(self.fail)
            return
        self.sent.append((data, target))

    def via_for(self, target: Target, branch: str) -> Via:
        params = Params((("branch", branch), ("rport", None)))
        return Via(target.transport.upper(), "192.0.2.10", 5060, params)

    def messages(self) -> list[SipMessage]:
        return [parse_message(data) for data, _ in self.sent]

    def last(self) -> SipMessage:
        return parse_message(self.sent[-1][0])

    def clear(self) -> None:
        self.sent.clear()


async def settle(rounds: int = 8) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def run_clock(clock: ManualClock, until: float, sender: FakeSender,
                    step: float = 0.05) -> list[float]:
    """Advance in exact steps; return the times at which something was sent."""
    times: list[float] = []
    k = round(clock.now() / step)
    while clock.now() < until - 1e-9:
        k += 1
        before = len(sender.sent)
        clock.set(k * step)
        await settle()
        times += [round(clock.now(), 6)] * (len(sender.sent) - before)
    return times


def invite(branch: str = "z9hG4bKinv1", transport: str = "UDP") -> SipRequest:
    text = (
        "INVITE sip:echo@192.0.2.10 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 192.0.2.7:5062;branch={branch}\r\n"
        "From: <sip:alice@192.0.2.7>;tag=a1\r\n"
        "To: <sip:echo@192.0.2.10>\r\n"
        "Call-ID: call-1@192.0.2.7\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:alice@192.0.2.7:5062>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return SipRequest.parse(text.encode())


def request(method: str, branch: str, cseq: int = 2, to_tag: str = "") -> SipRequest:
    tag = f";tag={to_tag}" if to_tag else ""
    text = (
        f"{method} sip:echo@192.0.2.10 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.7:5062;branch={branch}\r\n"
        "From: <sip:alice@192.0.2.7>;tag=a1\r\n"
        f"To: <sip:echo@192.0.2.10>{tag}\r\n"
        "Call-ID: call-1@192.0.2.7\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return SipRequest.parse(text.encode())


class Harness:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.sender = FakeSender()
        self.metrics = Metrics(CollectorRegistry())
        self.seen: list[tuple[SipRequest, ServerTransaction | None]] = []
        self.layer = TransactionLayer(self.sender, self.clock, self.on_request,
                                      metrics=self.metrics, t1=0.5, t2=4.0, t4=5.0)

    def on_request(self, req: SipRequest, source: Source, tx: ServerTransaction | None) -> None:
        self.seen.append((req, tx))


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- INVITE server ---------------------------------------------------------------------


async def test_invite_gets_100_at_once_and_retransmission_is_absorbed(h: Harness) -> None:
    h.layer.receive(invite(), UDP)
    assert [m.status for m in h.sender.messages()] == [100]  # type: ignore[union-attr]
    assert len(h.seen) == 1 and isinstance(h.seen[0][1], InviteServerTransaction)
    h.layer.receive(invite(), UDP)  # retransmission: the 100 again, TU not bothered
    assert [m.status for m in h.sender.messages()] == [100, 100]  # type: ignore[union-attr]
    assert len(h.seen) == 1
    tx = h.seen[0][1]
    assert tx is not None
    tx.reply(180, to_tag="b1")
    h.layer.receive(invite(), UDP)
    statuses = [m.status for m in h.sender.messages()]  # type: ignore[union-attr]
    assert statuses == [100, 100, 180, 180]
    assert h.sender.sent[-1][1] == Target("udp", "192.0.2.7", 5062)
    h.layer.close()


async def test_2xx_retransmitted_t1_doubling_to_t2_until_ack(h: Harness) -> None:
    h.layer.receive(invite(), UDP)
    tx = h.seen[0][1]
    assert tx is not None
    ok = tx.reply(200, to_tag="b1")
    assert tx.state is State.ACCEPTED
    timeouts: list[float] = []
    rt = h.layer.retransmit_answer(ok, tx.target, lambda: timeouts.append(h.clock.now()))
    h.sender.clear()
    times = await run_clock(h.clock, 12.0, h.sender)
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5]  # intervals 0.5, 1, 2, 4, 4
    assert all(m.status == 200 for m in h.sender.messages())  # type: ignore[union-attr]
    h.layer.receive(invite(), UDP)  # Accepted absorbs INVITE retransmissions
    assert len(h.sender.sent) == 5
    assert rt.ack() is True
    assert await run_clock(h.clock, 40.0, h.sender) == []
    assert timeouts == [] and rt.sent == 6
    h.layer.close()


async def test_2xx_without_ack_gives_up_at_64_t1(h: Harness) -> None:
    h.layer.receive(invite(), UDP)
    tx = h.seen[0][1]
    assert tx is not None
    ok = tx.reply(200, to_tag="b1")
    timeouts: list[float] = []
    rt = h.layer.retransmit_answer(ok, tx.target, lambda: timeouts.append(h.clock.now()))
    h.sender.clear()
    times = await run_clock(h.clock, 40.0, h.sender)
    assert times == retransmit_intervals(0.5, 4.0, 32.0)
    assert timeouts == [32.0]
    assert not rt.waiting and rt.ack() is False
    h.layer.close()


async def test_2xx_ack_goes_to_core(h: Harness) -> None:
    h.layer.receive(invite(), UDP)
    tx = h.seen[0][1]
    assert tx is not None
    tx.reply(200, to_tag="b1")
    h.layer.receive(request("ACK", "z9hG4bKack", cseq=1, to_tag="b1"), UDP)
    assert [(r.method, t) for r, t in h.seen[1:]] == [("ACK", None)]
    # SIPp reuses the INVITE's branch for the 2xx ACK: still the core's (RFC 6026).
    h.layer.receive(request("ACK", "z9hG4bKinv1", cseq=1, to_tag="b1"), UDP)
    assert len(h.seen) == 3
    h.layer.close()


async def test_non_2xx_timer_g_until_ack_then_absorbed(h: Harness) -> None:
    h.layer.receive(invite(), UDP)
    tx = h.seen[0][1]
    assert isinstance(tx, InviteServerTransaction)
    tx.reply(486, to_tag="b1")
    h.sender.clear()
    times = await run_clock(h.clock, 8.0, h.sender)
    assert times == [0.5, 1.5, 3.5, 7.5]
    h.layer.receive(invite(), UDP)  # retransmitted INVITE: the 486 again
    assert h.sender.last().status == 486  # type: ignore[union-attr]
    h.layer.receive(request("ACK", "z9hG4bKinv1", cseq=1, to_tag="b1"), UDP)
    assert tx.state is State.CONFIRMED
    assert len(h.seen) == 1  # the ACK of a non-2xx stays in the transaction
    h.sender.clear()
    assert await run_clock(h.clock, 20.0, h.sender) == []
    assert tx.state is State.TERMINATED
    h.layer.close()


async def test_non_2xx_timer_h_reports_missing_ack(h: Harness) -> None:
    h.layer.receive(invite(), UDP)
    tx = h.seen[0][1]
    assert isinstance(tx, InviteServerTransaction)
    fired: list[float] = []
    tx.on_ack_timeout = lambda: fired.append(h.clock.now())
    tx.reply(488)
    times = await run_clock(h.clock, 33.0, h.sender)
    assert times == retransmit_intervals(0.5, 4.0, 32.0)
    assert fired == [32.0]
    assert tx.state is State.TERMINATED and h.layer.server_transactions == 0
    h.layer.close()


async def test_non_2xx_over_tcp_is_not_retransmitted(h: Harness) -> None:
    h.layer.receive(invite(transport="TCP"), TCP)
    tx = h.seen[0][1]
    assert tx is not None
    tx.reply(486)
    assert h.sender.sent[-1][1].connection == 3
    h.sender.clear()
    assert await run_clock(h.clock, 40.0, h.sender) == []
    h.layer.close()


async def test_cancel_matched_to_its_invite(h: Harness) -> None:
    h.layer.receive(invite(), UDP)
    h.layer.receive(request("CANCEL", "z9hG4bKinv1", cseq=1), UDP)
    h.layer.receive(request("CANCEL", "z9hG4bKother", cseq=1), UDP)
    (_, inv), (_, cancel), (_, stray) = h.seen
    assert cancel is not None and cancel.cancel_target is inv
    assert stray is not None and stray.cancel_target is None
    h.layer.close()


# -- non-INVITE server -----------------------------------------------------------------


async def test_retransmitted_bye_gets_cached_response_until_timer_j(h: Harness) -> None:
    bye = request("BYE", "z9hG4bKbye1", to_tag="b1")
    h.layer.receive(bye, UDP)
    tx = h.seen[0][1]
    assert tx is not None and tx.state is State.TRYING
    h.layer.receive(bye, UDP)  # nothing to resend yet, still absorbed
    assert h.sender.sent == [] and len(h.seen) == 1
    tx.reply(200)
    h.layer.receive(bye, UDP)
    assert [m.status for m in h.sender.messages()] == [200, 200]  # type: ignore[union-attr]
    assert len(h.seen) == 1
    await run_clock(h.clock, 32.0, h.sender)
    assert tx.state is State.TERMINATED
    h.layer.receive(bye, UDP)  # after Timer J it is a new request
    assert len(h.seen) == 2
    h.layer.close()


async def test_response_metrics_count_first_sends_only(h: Harness) -> None:
    bye = request("BYE", "z9hG4bKbye1", to_tag="b1")
    h.layer.receive(bye, UDP)
    tx = h.seen[0][1]
    assert tx is not None
    tx.reply(200)
    h.layer.receive(bye, UDP)
    value = h.metrics.registry.get_sample_value(
        "switchboard_sip_responses_sent_total", {"status_class": "2xx"})
    assert value == 1.0
    h.layer.close()


# -- client ------------------------------------------------------------------------------


def outgoing(method: str) -> SipRequest:
    text = (
        f"{method} sip:alice@192.0.2.7:5062 SIP/2.0\r\n"
        "From: <sip:echo@192.0.2.10>;tag=b1\r\n"
        "To: <sip:alice@192.0.2.7>;tag=a1\r\n"
        "Call-ID: call-1@192.0.2.7\r\n"
        f"CSeq: 7 {method}\r\n"
        "Via: SIP/2.0/UDP placeholder\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return SipRequest.parse(text.encode()).without("Via")


def answer(tx: ClientTransaction, status: int) -> SipResponse:
    return make_response(tx.request, status, to_tag="a1")


async def test_non_invite_client_timer_e_then_f_timeout(h: Harness) -> None:
    tx = h.layer.request(outgoing("BYE"), PEER_UDP)
    via = tx.request.top_via
    assert via.branch and via.branch.startswith("z9hG4bK") and via.has_rport
    times = await run_clock(h.clock, 33.0, h.sender)
    assert [0.0, *times] == [0.0, *retransmit_intervals(0.5, 4.0, 32.0)]
    assert times[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]
    with pytest.raises(TransactionTimeout):
        await tx.result()
    assert h.layer.client_transactions == 0


async def test_non_invite_client_final_response_stops_retransmission(h: Harness) -> None:
    tx = h.layer.request(outgoing("BYE"), PEER_UDP)
    await run_clock(h.clock, 0.5, h.sender)
    provisional: list[int] = []
    tx.on_response = lambda r: provisional.append(r.status)
    h.layer.receive(answer(tx, 100), UDP)
    h.sender.clear()
    # Proceeding: the armed Timer E still fires (at 1.5), then every T2 (17.1.2.2).
    times = await run_clock(h.clock, 9.0, h.sender)
    assert times == [1.5, 5.5]
    h.layer.receive(answer(tx, 200), UDP)
    assert (await tx.result()).status == 200
    assert provisional == [100]
    h.sender.clear()
    assert await run_clock(h.clock, 40.0, h.sender) == []
    assert h.layer.client_transactions == 0


async def test_invite_client_timer_a_b_and_ack_for_non_2xx(h: Harness) -> None:
    tx = h.layer.request(outgoing("INVITE"), PEER_UDP)
    times = await run_clock(h.clock, 16.0, h.sender)
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5]  # Timer A doubles with no T2 cap
    h.layer.receive(answer(tx, 486), UDP)
    assert (await tx.result()).status == 486
    ack = h.sender.last()
    assert isinstance(ack, SipRequest) and ack.method == "ACK"
    assert ack.top_via.branch == tx.branch and ack.to_addr.tag == "a1"
    h.layer.receive(answer(tx, 486), UDP)  # retransmitted final: ACK again
    assert h.sender.last().method == "ACK"  # type: ignore[union-attr]
    assert len(h.sender.sent) == 8


async def test_invite_client_timeout(h: Harness) -> None:
    tx = h.layer.request(outgoing("INVITE"), PEER_UDP)
    await run_clock(h.clock, 32.0, h.sender)
    with pytest.raises(TransactionTimeout, match="after 32 s"):
        await tx.result()


async def test_client_over_tcp_sends_once_and_still_times_out(h: Harness) -> None:
    tx = h.layer.request(outgoing("BYE"), PEER_TCP)
    assert await run_clock(h.clock, 32.0, h.sender) == []
    assert len(h.sender.sent) == 1
    with pytest.raises(TransactionTimeout):
        await tx.result()


async def test_transport_failure_fails_the_transaction(h: Harness) -> None:
    h.sender.fail = ConnectionRefusedError("refused")
    tx = h.layer.request(outgoing("BYE"), PEER_TCP)
    with pytest.raises(TransactionFailed, match="refused"):
        await tx.result()
    assert h.layer.client_transactions == 0


async def test_close_fails_pending_client_transactions(h: Harness) -> None:
    tx = h.layer.request(outgoing("BYE"), PEER_UDP)
    h.layer.close()
    with pytest.raises(TransactionFailed, match="shutting down"):
        await tx.result()
    h.sender.clear()
    assert await run_clock(h.clock, 5.0, h.sender) == []


async def test_stray_response_goes_to_handler(h: Harness) -> None:
    strays: list[int] = []
    h.layer.on_stray_response = lambda r: strays.append(r.status)
    tx = h.layer.request(outgoing("BYE"), PEER_UDP)
    other = make_response(tx.request, 200, to_tag="a1")
    h.layer.receive(other.with_replaced("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKx"),
                    UDP)
    assert strays == [200] and not tx.done
    h.layer.close()


async def test_core_bug_still_ends_the_transaction_with_500(h: Harness) -> None:
    def broken(req: SipRequest, source: Source, tx: ServerTransaction | None) -> None:
        raise RuntimeError("bug")

    h.layer.on_request = broken
    h.layer.receive(request("BYE", "z9hG4bKbug", to_tag="b1"), UDP)
    assert [m.status for m in h.sender.messages()] == [500]  # type: ignore[union-attr]
    h.layer.close()
