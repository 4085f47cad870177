"""From a dialplan agent to what the pipeline runs: engine settings, conversation settings,
phrases, action rules. Pure functions; switchboard.agents builds and shares the engines.

An agent's asr/llm/tts sections override the config's, key by key. Agents whose engine
settings come out equal share one Engines (one model load per process). Their own texts
(greeting, fillers, reprompt, transfer notice) become cached phrases keyed
"<kind>:<hash of the text>", so agents on one Engines never overwrite each other's, and
the default texts keep their plain keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from dialplan.loader import Dialplan
from dialplan.model import Action, Agent, ConversationAgent, EchoAgent
from pipeline.actions import ActionRules, CallAction, phrase_rules
from pipeline.asr import WhisperSettings
from pipeline.engines import CONVERSATION_PHRASES, FILLERS, EngineSettings, LlmSettings, TtsSettings
from pipeline.llm import LlamaCppSettings
from pipeline.turns import ConversationSettings
from switchboard import engine_config as base
from switchboard.config import AsrConfig, Config, LlmConfig, TtsConfig

__all__ = ["EngineKey", "action_rules", "conversation_settings", "engine_key",
           "engine_settings", "implicit_plan", "phrase_key", "sections", "tts_key"]


@dataclass(frozen=True, slots=True)
class EngineKey:
    """Everything that makes two Engines different. Equal keys share one Engines."""

    asr: WhisperSettings
    llm: LlmSettings
    tts: TtsSettings
    fallback: LlamaCppSettings | None
    llm_threads: int


def implicit_plan(config: Config) -> Dialplan:
    """No dialplan file: one agent, config.agent, answers every call (as before the
    dialplan existed)."""
    agent: Agent
    if config.agent == "echo":
        agent = EchoAgent(kind="echo")
    else:
        agent = ConversationAgent(kind="conversation")
    return Dialplan({config.agent: agent}, (), config.agent, source="config `agent:`")


def _overlay(section: Any, override: Any) -> Any:
    if override is None:
        return section
    return section.model_copy(update={k: getattr(override, k)
                                      for k in override.model_fields_set
                                      if k in type(section).model_fields})


def sections(config: Config, agent: Agent) -> tuple[AsrConfig, LlmConfig, TtsConfig]:
    """The config's asr/llm/tts with the agent's own keys on top."""
    return (_overlay(config.asr, getattr(agent, "asr", None)),
            _overlay(config.llm, getattr(agent, "llm", None)),
            _overlay(config.tts, getattr(agent, "tts", None)))


def engine_key(config: Config, agent: ConversationAgent) -> EngineKey:
    asr, llm, tts = sections(config, agent)
    threads = 1 if llm.engine == "llamacpp" else base._REMOTE_LLM_THREADS
    return EngineKey(base.whisper_settings(asr), base.llm_settings(llm),
                     base.tts_settings(tts), base.fallback_llm_settings(llm), threads)


def tts_key(config: Config, agent: Agent) -> TtsSettings:
    return base.tts_settings(sections(config, agent)[2])


def engine_settings(key: EngineKey, phrases: dict[str, str]) -> EngineSettings:
    s = base.engine_settings_for(key.llm_threads)
    return EngineSettings(asr=s.asr, llm=s.llm, tts=s.tts,
                          phrases={**CONVERSATION_PHRASES, **phrases})


def phrase_key(kind: str, text: str) -> str:
    if CONVERSATION_PHRASES.get(kind) == text:
        return kind
    return f"{kind}:{hashlib.sha1(text.encode()).hexdigest()[:12]}"


def agent_phrases(agent: ConversationAgent) -> dict[str, str]:
    """The agent's own phrases, by cache key."""
    out: dict[str, str] = {}
    if agent.greeting:
        out[phrase_key("greeting", agent.greeting)] = agent.greeting
    if agent.silence.reprompt:
        out[phrase_key("reprompt", agent.silence.reprompt)] = agent.silence.reprompt
    for text in agent.fillers or ():
        out[phrase_key("filler", text)] = text
    return out


def _action(a: Action, transfer_to: str | None) -> CallAction:
    if a.do == "transfer":
        return CallAction("transfer", a.target or transfer_to or "")
    if a.do == "send_dtmf":
        return CallAction("send_dtmf", a.digits or "")
    return CallAction("hangup")


def action_rules(agent: Agent) -> ActionRules:
    dtmf = {k: _action(a, agent.transfer_to) for k, a in agent.dtmf.items()}
    rules = [(r.words, r.regex, _action(r.action, agent.transfer_to))
             for r in getattr(agent, "phrases", ())]
    llm = getattr(agent, "llm", None)
    tools = isinstance(agent, ConversationAgent) and (llm is None or llm.tools)
    return ActionRules(dtmf=dtmf, phrases=phrase_rules(rules), transfer_to=agent.transfer_to,
                       tools=tools)


def conversation_settings(config: Config, agent: ConversationAgent) -> ConversationSettings:
    asr, llm, _ = sections(config, agent)
    hint = asr.hint
    words = agent.asr.hint_words if agent.asr is not None else ()
    if words:
        hint = ", ".join(filter(None, [hint, *words]))
    agent_llm = agent.llm
    extra: dict[str, Any] = {}
    if agent_llm is not None:
        extra = {"max_sentences": agent_llm.max_sentences,
                 "history_turns": agent_llm.history_turns}
    silence, vad = agent.silence, agent.vad
    return ConversationSettings(
        greeting=phrase_key("greeting", agent.greeting) if agent.greeting else None,
        system_prompt=agent.system_prompt,
        max_tokens=llm.max_tokens,
        temperature=llm.temperature,
        asr_hint=hint,
        onset_ms=vad.onset_ms,
        hangover_ms=vad.hangover_ms,
        preroll_ms=vad.preroll_ms,
        speculative_after_ms=vad.speculative_after_ms,
        barge_in=agent.barge_in.enabled,
        barge_in_ms=agent.barge_in.after_ms,
        filler_after_s=agent.filler_after_s if agent.fillers != () else None,
        fillers=FILLERS if agent.fillers is None else tuple(
            phrase_key("filler", t) for t in agent.fillers),
        reprompt_after_s=silence.reprompt_after_s,
        max_reprompts=silence.max_reprompts,
        hangup_after_s=silence.hangup_after_s,
        reprompt=phrase_key("reprompt", silence.reprompt) if silence.reprompt else "reprompt",
        max_call_s=agent.max_call_s,
        goodbye_detection=agent.goodbye_detection,
        actions=action_rules(agent),
        **extra,
    )
