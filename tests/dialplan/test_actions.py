"""Actions: a conversation transfers, hangs up or sends DTMF on phrase and DTMF rules; agents
that do not listen get the DTMF rules and a time limit; playback and transfer agents."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.actions import ActionRules, CallAction, WithActions, phrase_rules
from pipeline.conversation import State
from pipeline.echo import EchoHandler
from pipeline.leg import FRAME_BYTES, TransferError
from pipeline.metrics import Metrics
from pipeline.playback import PlaybackHandler, TransferHandler
from tests.pipeline.test_conversation import Call, FakeLeg, ScriptedAsr, settle, silence, voice

OPERATOR = CallAction("transfer", "sip:operator@pbx.test")
RULES = ActionRules(
    dtmf={"0": OPERATOR, "9": CallAction("hangup"), "5": CallAction("send_dtmf", "123")},
    phrases=phrase_rules([(("operator", "a real person", "human"), None, OPERATOR),
                          ((), r"\bemergency\b", CallAction("transfer", "sip:oncall@pbx"))]),
)


class TransferLeg(FakeLeg):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.transfers: list[str] = []
        self.fail = fail

    async def transfer(self, target: str) -> None:
        self.transfers.append(target)
        if self.fail:
            raise TransferError("486 Busy Here")


def call(*texts: str, fail: bool = False, **overrides: object) -> Call:
    c = Call(ScriptedAsr(*texts), actions=RULES, **overrides)
    c.leg = TransferLeg(fail)
    c.leg.handler = c.conv
    return c


def actions(c: Call, action: str, outcome: str) -> float:
    return c.value("switchboard_call_actions_total", action=action, outcome=outcome)


@pytest.mark.parametrize("text, target", [
    ("Can I talk to a real person, please?", "sip:operator@pbx.test"),
    ("OPERATOR!", "sip:operator@pbx.test"),
    ("This is an emergency.", "sip:oncall@pbx"),
])
async def test_a_phrase_rule_transfers_after_saying_so(text: str, target: str) -> None:
    c = call(text)
    await c.start()
    await c.say(0.8)
    assert c.conv.state is State.ENDING and not c.llm.calls  # no answer: the rule acts
    assert c.leg.kinds()[-1] == "transferring"
    assert c.leg.transfers == []  # waits for the notice to be heard
    await c.feed(silence(3.0))
    assert c.leg.transfers == [target] and actions(c, "transfer", "ok") == 1
    assert c.history()[-1] == {"role": "user", "content": text}
    assert not c.leg.hangups  # the transfer ends our leg, not a hang-up


async def test_words_match_whole_words_only() -> None:
    assert RULES.for_phrase("Humanity is great") is None
    assert RULES.for_phrase("a human?") is OPERATOR
    assert RULES.for_phrase("is there a  REAL   person there") is OPERATOR
    assert RULES.for_phrase("what time do you open") is None


async def test_a_failed_transfer_apologizes_and_goes_back_to_listening() -> None:
    c = call("operator", fail=True)
    await c.start()
    await c.say(0.8)
    await c.feed(silence(3.0))
    assert c.leg.transfers == ["sip:operator@pbx.test"] and actions(c, "transfer", "failed") == 1
    assert c.leg.kinds()[-1] == "apology"
    await c.until_listening()
    assert c.conv.state is State.LISTENING and not c.leg.hangups


async def test_dtmf_rules_in_a_conversation() -> None:
    c = call()
    await c.start()
    c.conv.on_dtmf("5")
    c.conv.on_dtmf("1")  # no rule: only logged
    await settle()
    assert c.leg.dtmf == ["123"] and actions(c, "send_dtmf", "ok") == 1
    c.conv.on_dtmf("9")
    assert c.leg.kinds()[-1] == "goodbye"
    await c.feed(silence(2.5))
    assert c.leg.hangups == ["action_hangup"]


async def test_dtmf_zero_transfers_a_conversation_mid_answer() -> None:
    c = call("Tell me a long story")
    await c.start()
    await c.say(0.8)
    await c.feed(silence(0.1))
    c.conv.on_dtmf("0")
    assert c.conv.state is State.ENDING
    await c.feed(silence(3.0))
    assert c.leg.transfers == ["sip:operator@pbx.test"]


async def test_without_barge_in_the_caller_cannot_interrupt() -> None:
    c = call("When do you open?", barge_in=False)
    c.llm.script.append(["We open at nine " * 6 + "."])
    await c.start()
    await c.say(0.8)
    await c.feed(silence(0.3))
    assert c.conv.state is State.SPEAKING
    await c.feed(voice(0.8) + silence(0.6))  # loud, over the answer
    assert c.leg.clears == 0 and len(c.asr.audio) == 1  # not heard, not transcribed


# --- agents that do not listen -----------------------------------------------------------


async def test_with_actions_around_echo() -> None:
    leg = TransferLeg()
    handler = WithActions(EchoHandler(delay=0), RULES, max_call_s=0.1, metrics=Metrics())
    leg.handler = handler  # type: ignore[assignment]
    await handler.on_start(leg)
    handler.on_dtmf("3")  # no rule: the echo agent sends it back
    handler.on_dtmf("0")
    await settle()
    assert leg.dtmf == ["3"] and leg.transfers == ["sip:operator@pbx.test"]
    for _ in range(5):  # 0.1 s: the time limit hangs up
        handler.on_frame(bytes(FRAME_BYTES))
    await settle()
    assert leg.hangups == ["hangup"]
    assert handler.digits == ["3"]  # the agent's own attributes show through


async def test_playback_then_hang_up_or_transfer() -> None:
    leg = TransferLeg()
    pcm = bytes(1600)
    play = PlaybackHandler(pcm, 8000)
    leg.handler = play  # type: ignore[assignment]
    await play.on_start(leg)
    assert leg.sent == [(1600, 8000, "playback-done")] and not leg.hangups
    for _ in range(6):  # 0.1 s of audio
        leg.tick()
    await settle()
    assert play.played is True and leg.hangups == ["hangup"]

    leg = TransferLeg(fail=True)
    play = PlaybackHandler(pcm, 8000, then=CallAction("transfer", "sip:x@y"))
    leg.handler = play  # type: ignore[assignment]
    await play.on_start(leg)
    leg.clear_audio()  # cleared counts as done: it will not play again
    await settle()
    assert leg.transfers == ["sip:x@y"] and leg.hangups == ["transfer_failed"]


async def test_transfer_agent() -> None:
    leg = TransferLeg()
    handler = TransferHandler("sip:desk@pbx")
    await handler.on_start(leg)
    await settle()
    assert leg.transfers == ["sip:desk@pbx"] and not leg.hangups
    leg = TransferLeg(fail=True)
    handler = TransferHandler("sip:desk@pbx")
    await handler.on_start(leg)
    await settle()
    assert leg.hangups == ["transfer_failed"]
    await handler.on_end("hangup")
    await asyncio.sleep(0)
