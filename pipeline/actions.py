"""What an agent can do to the call besides talking: transfer it, hang up, send DTMF.

Rules say when: a DTMF key ("0" -> transfer to the operator) or words in what the caller
said ("operator", "a real person"). The dialplan builds the rules (dialplan/); the
conversation consults them per transcript and per digit, and WithActions gives the same
DTMF rules (and a time limit) to agents that do not listen, such as echo and playback.

    rules = ActionRules(dtmf={"0": CallAction("transfer", "sip:op@pbx")},
                        phrases=phrase_rules([(("operator", "human"), None, action)]))
    rules.for_dtmf("0"); rules.for_phrase("can I talk to a human please")
    outcome = await perform(leg, action, metrics=metrics)
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.leg import CallHandler, CallLeg, TransferError
from pipeline.metrics import Metrics

__all__ = ["ActionRules", "CallAction", "WithActions", "action_for_tool", "perform",
           "phrase_rules", "tool_specs"]

log = logging.getLogger(__name__)

ACTIONS = ("transfer", "hangup", "send_dtmf")
_DTMF = frozenset("0123456789*#ABCD")
_NON_WORD = re.compile(r"[^\w\s']+")


@dataclass(frozen=True, slots=True)
class CallAction:
    do: str  # one of ACTIONS
    arg: str = ""  # transfer: the target; send_dtmf: the digits

    def __post_init__(self) -> None:
        if self.do not in ACTIONS:
            raise ValueError(f"unknown action {self.do!r}")


def _normalize(text: str) -> str:
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def phrase_rules(
    rules: Iterable[tuple[Iterable[str], str | None, CallAction]],
) -> tuple[tuple[re.Pattern[str], CallAction], ...]:
    """(words, regex, action) -> compiled rules. Words match whole words in the
    normalized transcript (lower case, punctuation dropped); a regex is searched as is,
    case-insensitively."""
    out = []
    for words, regex, action in rules:
        parts = [re.escape(_normalize(w)) for w in words if _normalize(w)]
        if parts:
            out.append((re.compile(r"\b(?:" + "|".join(parts) + r")\b"), action))
        if regex is not None:
            out.append((re.compile(regex, re.IGNORECASE), action))
    return tuple(out)


@dataclass(frozen=True)
class ActionRules:
    dtmf: Mapping[str, CallAction] = field(default_factory=dict)
    phrases: tuple[tuple[re.Pattern[str], CallAction], ...] = ()
    transfer_to: str | None = None  # what "transfer" means when asked without a target
    tools: bool = False  # offer the actions to an LLM that supports tool calling

    def __bool__(self) -> bool:
        return bool(self.dtmf or self.phrases)

    def for_dtmf(self, digit: str) -> CallAction | None:
        return self.dtmf.get(digit)

    def for_phrase(self, text: str) -> CallAction | None:
        norm = _normalize(text)
        for pattern, action in self.phrases:
            if pattern.search(norm) or pattern.search(text):
                return action
        return None


def _tool(name: str, description: str, properties: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    props = properties or {}
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": props, "required": sorted(props)}}}


def tool_specs(rules: ActionRules) -> tuple[dict[str, Any], ...]:
    """The actions as tools in the Ollama / OpenAI function format. The model picks
    *whether* to transfer, never *where*: the target is the agent's transfer_to."""
    if not rules.tools:
        return ()
    specs = [_tool("hang_up", "End the call. Only after the caller has said goodbye or "
                   "asked to hang up.")]
    if rules.transfer_to:
        specs.insert(0, _tool("transfer_call", "Transfer the caller to a human colleague. Use "
                              "it when the caller asks for a person, or you cannot help."))
    specs.append(_tool("send_dtmf", "Send touch-tone digits on the line (to a phone menu).",
                       {"digits": {"type": "string", "description": "digits 0-9, * and #"}}))
    return tuple(specs)


def action_for_tool(name: str, arguments: Mapping[str, Any], rules: ActionRules
                    ) -> CallAction | None:
    """The action a model's tool call asks for; None for unknown tools or bad arguments."""
    if not rules.tools:
        return None
    if name == "transfer_call" and rules.transfer_to:
        return CallAction("transfer", rules.transfer_to)
    if name == "hang_up":
        return CallAction("hangup")
    if name == "send_dtmf":
        digits = str(arguments.get("digits", "")).replace(" ", "")
        if 0 < len(digits) <= 32 and all(d in _DTMF for d in digits):
            return CallAction("send_dtmf", digits)
    return None


async def perform(leg: CallLeg, action: CallAction, *, metrics: Metrics | None = None) -> str:
    """Do it; returns the outcome ("ok" or "failed"), counted in call_actions_total.
    A failed transfer leaves the call up (the caller may stay with the agent)."""
    extra = {"call_id": leg.info.call_id}
    outcome = "ok"
    try:
        if action.do == "transfer":
            log.info("transferring to %s", action.arg, extra=extra)
            await leg.transfer(action.arg)
        elif action.do == "hangup":
            await leg.hangup("hangup")
        else:
            leg.send_dtmf(action.arg)
    except TransferError as e:
        outcome = "failed"
        log.warning("transfer to %s failed: %s", action.arg, e, extra=extra)
    except Exception as e:  # a door bug must not take the call's task down silently
        outcome = "failed"
        log.error("%s failed: %r", action.do, e, exc_info=e, extra=extra)
    if metrics is not None:
        metrics.call_actions_total.labels(action=action.do, outcome=outcome).inc()
    return outcome


class WithActions:
    """DTMF rules and a time limit around an agent that does not listen (echo, playback).
    Digits with a rule run it; other digits reach the agent."""

    def __init__(self, inner: CallHandler, rules: ActionRules, *, max_call_s: float | None,
                 metrics: Metrics | None = None) -> None:
        self.inner = inner
        self.rules = rules
        self.metrics = metrics
        self._max_frames = None if max_call_s is None else max(1, round(max_call_s * 50))
        self._frames = 0
        self._leg: CallLeg | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ended = False

    def __getattr__(self, name: str) -> Any:  # the agent's own attributes (tests, records)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def on_start(self, leg: CallLeg) -> None:
        self._leg = leg
        await self.inner.on_start(leg)

    def on_frame(self, pcm: bytes) -> None:
        self._frames += 1
        if self._max_frames is not None and self._frames == self._max_frames:
            self._run(CallAction("hangup"))
        self.inner.on_frame(pcm)

    def on_dtmf(self, digit: str) -> None:
        action = self.rules.for_dtmf(digit)
        if action is None:
            self.inner.on_dtmf(digit)
        else:
            self._run(action)

    def on_mark(self, mark: str, played: bool) -> None:
        self.inner.on_mark(mark, played)

    async def on_end(self, reason: str) -> None:
        # Actions under way are left to finish: a transfer ends the call (BYE) before
        # it returns its outcome, and every leg operation is bounded in time.
        self._ended = True
        await self.inner.on_end(reason)

    def _run(self, action: CallAction) -> None:
        if self._leg is None or self._ended:
            return
        task = asyncio.get_running_loop().create_task(
            perform(self._leg, action, metrics=self.metrics), name=f"action-{action.do}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
