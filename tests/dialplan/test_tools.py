"""Ollama tool calling: the actions are offered as tools only to a model that says it
supports them (/api/show capabilities); a tool call becomes the agent's action. The Ollama
server is the documented-wire-format fake (no Ollama binary runs here)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.actions import ActionRules, CallAction, action_for_tool, tool_specs
from pipeline.conversation import State
from pipeline.llm import OllamaEngine, OllamaSettings, ToolCall
from tests.dialplan.test_actions import TransferLeg
from tests.pipeline.fake_ollama import DEFAULT_MODEL, FakeOllama
from tests.pipeline.test_conversation import Call, ScriptedAsr, ScriptedLlm, silence

RULES = ActionRules(transfer_to="sip:desk@pbx", tools=True)


@pytest.fixture(scope="module")
def ollama() -> Iterator[FakeOllama]:
    server = FakeOllama()
    server.start()
    try:
        yield server
    finally:
        server.stop()


MESSAGES = [{"role": "user", "content": "Can I speak to someone?"}]


def test_tools_are_offered_when_the_model_supports_them(ollama: FakeOllama) -> None:
    ollama.reset()
    ollama.capabilities = ("completion", "tools")
    ollama.tool_calls = [{"name": "transfer_call", "arguments": {}}]
    engine = OllamaEngine(OllamaSettings(model=DEFAULT_MODEL, host=ollama.url))
    engine.warm_up()
    assert engine.supports_tools
    pieces = list(engine.stream_chat(MESSAGES, tools=tool_specs(RULES)))
    assert pieces[0] == ToolCall("transfer_call", {})
    assert "".join(p for p in pieces if isinstance(p, str)) == "We open at nine on Saturday."
    sent = ollama.requests[-1][1]
    assert [t["function"]["name"] for t in sent["tools"]] == [
        "transfer_call", "hang_up", "send_dtmf"]


def test_no_tools_for_a_model_without_them(ollama: FakeOllama) -> None:
    ollama.reset()
    ollama.tool_calls = [{"name": "hang_up", "arguments": {}}]
    engine = OllamaEngine(OllamaSettings(model=DEFAULT_MODEL, host=ollama.url))
    engine.warm_up()
    assert not engine.supports_tools
    pieces = list(engine.stream_chat(MESSAGES, tools=tool_specs(RULES)))
    assert all(isinstance(p, str) for p in pieces)
    assert not ollama.requests[-1][1].get("tools")


@pytest.mark.parametrize("name, args, action", [
    ("transfer_call", {"target": "sip:attacker@evil"}, CallAction("transfer", "sip:desk@pbx")),
    ("hang_up", {}, CallAction("hangup")),
    ("send_dtmf", {"digits": "1 2#"}, CallAction("send_dtmf", "12#")),
    ("send_dtmf", {"digits": "12x"}, None),
    ("send_dtmf", {}, None),
    ("format_disk", {}, None),
])
def test_tool_calls_map_to_actions(name: str, args: dict[str, Any],
                                   action: CallAction | None) -> None:
    assert action_for_tool(name, args, RULES) == action
    assert action_for_tool(name, args, ActionRules(transfer_to="x")) is None  # tools off


def test_no_transfer_tool_without_a_target() -> None:
    names = [t["function"]["name"] for t in tool_specs(ActionRules(tools=True))]
    assert names == ["hang_up", "send_dtmf"]
    assert tool_specs(ActionRules(transfer_to="x")) == ()


class ToolLlm(ScriptedLlm):
    supports_tools = True

    def __init__(self, *replies: list[Any]) -> None:
        super().__init__(*replies)
        self.tools: list[Any] = []

    def stream_chat(self, messages: list[dict[str, str]], *, max_tokens: int = 96,
                    temperature: float = 0.6, tools: Any = None) -> Iterator[Any]:
        self.tools.append(tools)
        return super().stream_chat(messages, max_tokens=max_tokens, temperature=temperature)


async def test_a_conversation_transfers_when_the_model_calls_the_tool() -> None:
    llm = ToolLlm(["Let me get", " someone.", ToolCall("transfer_call", {}), " ignored"])
    c = Call(ScriptedAsr("I need to talk to somebody about my bill"), llm, actions=RULES)
    c.leg = TransferLeg()
    c.leg.handler = c.conv
    await c.start()
    await c.say(0.8)
    await c.feed(silence(4.0))
    assert llm.tools[0] == tool_specs(RULES)
    assert c.leg.transfers == ["sip:desk@pbx"]
    assert c.conv.state is State.ENDING
    kinds = c.leg.kinds()
    assert kinds[-2:] == ["answer", "transferring"]  # its words first, then the notice
    assert c.conv.calllog.turns[0].answer == "Let me get someone."
