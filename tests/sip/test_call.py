"""SipCall: handler lifecycle, the one idempotent close(), BYE out, media failures."""

from __future__ import annotations

import asyncio
import random

from prometheus_client import CollectorRegistry

from media.clock import ManualClock
from pipeline.leg import CallInfo, CallLeg
from pipeline.metrics import Metrics
from sip.call import SipCall
from sip.dialog import Dialog, DialogState
from sip.headers import Address
from sip.message import SipRequest, make_response
from sip.rtp_session import MediaParams
from sip.transaction import TransactionLayer
from sip.uri import Uri
from tests.sip.test_transaction import UDP, FakeSender, invite, run_clock, settle


class FakeMedia:
    def __init__(self, params: MediaParams | None = None, local_port: int = 30000) -> None:
        self.on_frame = self.on_dtmf = self.on_mark = self.on_failure = None  # type: ignore[var-annotated]
        self.params = params or MediaParams("192.0.2.7", 4000)
        self.local_port = local_port
        self.updates: list[MediaParams] = []
        self.sent: list[tuple[bytes, int, str | None]] = []
        self.digits = ""
        self.cleared = 0
        self.closed = 0

    def update(self, params: MediaParams) -> None:
        self.params = params
        self.updates.append(params)

    def send_audio(self, pcm: bytes, rate: int, mark: str | None = None) -> None:
        self.sent.append((pcm, rate, mark))

    def clear_audio(self) -> None:
        self.cleared += 1

    def queued_seconds(self) -> float:
        return 0.25

    def send_dtmf(self, digits: str) -> None:
        self.digits += digits

    def close(self) -> None:
        self.closed += 1


class RecordingHandler:
    def __init__(self, fail_start: bool = False) -> None:
        self.events: list[str] = []
        self.leg: CallLeg | None = None
        self.fail_start = fail_start

    async def on_start(self, leg: CallLeg) -> None:
        self.events.append("start")
        self.leg = leg
        if self.fail_start:
            raise RuntimeError("boom")

    def on_frame(self, pcm: bytes) -> None:
        self.events.append("frame")

    def on_dtmf(self, digit: str) -> None:
        self.events.append(f"dtmf:{digit}")

    def on_mark(self, mark: str, played: bool) -> None:
        self.events.append(f"mark:{mark}:{played}")

    async def on_end(self, reason: str) -> None:
        self.events.append(f"end:{reason}")


class Rig:
    def __init__(self, handler: RecordingHandler | None = None) -> None:
        self.clock = ManualClock()
        self.sender = FakeSender()
        self.metrics = Metrics(CollectorRegistry())
        self.layer = TransactionLayer(self.sender, self.clock, lambda *a: None,
                                      metrics=self.metrics)
        self.media = FakeMedia()
        self.handler = handler or RecordingHandler()
        self.closed: list[SipCall] = []
        contact = Address(Uri.parse("sip:echo@192.0.2.10:5060"))
        dialog = Dialog.from_request(invite(), UDP, local_tag="b1", local_contact=contact,
                                     rng=random.Random(1))
        self.metrics.calls_active.labels("sip").inc()
        self.call = SipCall(info=CallInfo("call-1", "sip"), dialog=dialog, media=self.media,
                            handler=self.handler, transactions=self.layer, clock=self.clock,
                            metrics=self.metrics, on_closed=self.closed.append)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def byes(self) -> list[SipRequest]:
        return [m for m in self.sender.messages()
                if isinstance(m, SipRequest) and m.method == "BYE"]


async def test_handler_starts_after_ack_and_gets_media_events() -> None:
    rig = Rig()
    ok = make_response(invite(), 200, to_tag="b1")
    rig.call.answered(rig.layer.retransmit_answer(ok, rig.call.dialog.next_hop(),
                                                  rig.call.ack_timed_out))
    assert rig.media.on_frame is None and rig.handler.events == []
    assert rig.call.acked() is True
    assert rig.call.acked() is False  # a retransmitted ACK
    await settle()
    assert rig.handler.events == ["start"] and rig.call.confirmed
    rig.media.on_frame(bytes(640))  # type: ignore[misc]
    rig.media.on_dtmf("5")  # type: ignore[misc]
    rig.media.on_mark("m1", True)  # type: ignore[misc]
    rig.call.dtmf_from_info("#")
    assert rig.handler.events == ["start", "frame", "dtmf:5", "mark:m1:True", "dtmf:#"]
    assert rig.sample("switchboard_dtmf_digits_total", transport="sip", method="info") == 1
    # The leg forwards to the media.
    rig.call.send_audio(b"\x00\x00", 16000, "m2")
    rig.call.clear_audio()
    rig.call.send_dtmf("12")
    assert rig.media.sent == [(b"\x00\x00", 16000, "m2")] and rig.media.cleared == 1
    assert rig.media.digits == "12" and rig.call.queued_seconds() == 0.25
    # transfer() sends a REFER; sip.refer (tests/sip/test_refer.py) takes it from there.
    transfer = asyncio.get_running_loop().create_task(rig.call.transfer("sip:bob@example.com"))
    await settle()
    assert rig.sender.last().method == "REFER"  # type: ignore[union-attr]
    transfer.cancel()
    await rig.call.close("remote_bye")
    rig.layer.close()


async def test_close_is_idempotent_and_counted_once() -> None:
    rig = Rig()
    rig.call.acked()
    await settle()
    await asyncio.gather(rig.call.close("remote_bye"), rig.call.close("shutdown"))
    await rig.call.close("hangup", bye=True)
    assert rig.handler.events == ["start", "end:remote_bye"]
    assert rig.media.closed == 1 and rig.closed == [rig.call]
    assert rig.byes() == []  # the far end hung up: no BYE from us
    assert rig.call.dialog.state is DialogState.TERMINATED
    assert rig.sample("switchboard_calls_total", transport="sip", outcome="remote_bye") == 1
    assert rig.sample("switchboard_calls_active", transport="sip") == 0
    rig.layer.close()


async def test_hangup_sends_bye_and_waits_for_answer() -> None:
    rig = Rig()
    rig.call.acked()
    await settle()
    task = asyncio.create_task(rig.call.hangup())
    await settle()
    (bye,) = rig.byes()
    assert bye.to_addr.tag == "a1" and bye.from_addr.tag == "b1"
    assert not task.done()
    rig.layer.receive(make_response(bye, 200), UDP)
    await asyncio.wait_for(task, 1)
    assert rig.handler.events[-1] == "end:hangup"
    assert rig.media.on_frame is None  # detached before on_end
    rig.layer.close()


async def test_unanswered_bye_does_not_hang_the_close() -> None:
    rig = Rig()
    rig.call.acked()
    await settle()
    task = asyncio.create_task(rig.call.hangup())
    await run_clock(rig.clock, 33.0, rig.sender, step=0.5)
    await asyncio.wait_for(task, 1)
    assert len(rig.byes()) > 5  # retransmitted over UDP, then Timer F gave up
    assert rig.closed == [rig.call]
    rig.layer.close()


async def test_no_ack_ends_with_bye_and_no_handler() -> None:
    rig = Rig()
    ok = make_response(invite(), 200, to_tag="b1")
    rig.call.answered(rig.layer.retransmit_answer(ok, rig.call.dialog.next_hop(),
                                                  rig.call.ack_timed_out))
    await run_clock(rig.clock, 32.0, rig.sender, step=0.5)
    await settle()
    (bye,) = rig.byes()
    assert rig.call.reason == "ack_timeout"
    rig.layer.receive(make_response(bye, 200), UDP)
    await asyncio.wait_for(rig.call.wait_closed(), 1)
    assert rig.handler.events == []  # never started, so never ended
    assert rig.sample("switchboard_calls_total", transport="sip", outcome="ack_timeout") == 1
    rig.layer.close()


async def test_media_timeout_hangs_up() -> None:
    rig = Rig()
    rig.call.acked()
    await settle()
    rig.media.on_failure("media_timeout")  # type: ignore[misc]
    await settle(20)
    assert len(rig.byes()) == 1 and rig.call.reason == "media_timeout"
    assert rig.handler.events == ["start", "end:media_timeout"]
    rig.layer.close()


async def test_failing_on_start_ends_the_call() -> None:
    rig = Rig(RecordingHandler(fail_start=True))
    rig.call.acked()
    await settle(20)
    assert rig.call.reason == "handler_error" and len(rig.byes()) == 1
    assert rig.handler.events == ["start"]  # on_start raised: on_end is not owed
    rig.layer.close()


async def test_slow_on_end_is_bounded() -> None:
    rig = Rig()

    async def stuck(reason: str) -> None:
        await asyncio.Event().wait()

    rig.handler.on_end = stuck  # type: ignore[method-assign]
    rig.call.close_timeout = 0.05
    rig.call.acked()
    await settle()
    await asyncio.wait_for(rig.call.close("shutdown"), 2)
    assert rig.closed == [rig.call]
    rig.layer.close()
