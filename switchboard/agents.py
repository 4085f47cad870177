"""Who answers a call: the agents of the dialplan, on engines loaded once per process.

    agents = Agents(config, metrics=metrics, plan=plan)  # plan None: config `agent:` only
    await agents.start()                 # loads and warms what the plan needs (seconds)
    choice = agents.route(info)          # which agent (dialplan.choose), or NoRoute
    handler = agents.make_handler(info, choice.agent)   # one CallHandler per call
    await agents.apply(new_plan)         # reload: load what is new, then switch at once
    agents.readiness()                   # for /readyz: which engines, did we fall back

Conversation agents whose engine settings are equal share one Engines. The LLM is the
embedded llama.cpp model unless `llm.engine` names Ollama or an OpenAI-compatible
server. If that server cannot be used at start (not running, model not pulled) and
`llm.fallback_to_embedded` is set, the embedded model answers instead, and readiness
says so. Nothing is downloaded: the embedded models ship as packages.

A reload never closes engines: calls in progress keep the handlers (and engines) they
started with; engines the new plan no longer uses stay loaded until the process ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from dialplan.loader import Dialplan, read_wav
from dialplan.matcher import Choice, choose
from dialplan.model import Agent, ConversationAgent, EchoAgent, PlaybackAgent, TransferAgent
from media.clock import Clock, MonotonicClock
from pipeline.actions import CallAction, WithActions
from pipeline.conversation import Conversation
from pipeline.echo import EchoHandler
from pipeline.engines import Engines, TtsSettings, build_engines, make_tts
from pipeline.leg import CallHandler, CallInfo
from pipeline.metrics import Metrics
from pipeline.playback import PlaybackHandler, TransferHandler
from pipeline.tts import PhraseCache
from switchboard import profiles
from switchboard.config import Config
from switchboard.engine_config import (
    conversation_settings,
    embedded_llm_settings,
    engine_settings,
    engine_settings_for,
    fallback_llm_settings,
    llm_settings,
    tts_settings,
    whisper_settings,
)

__all__ = ["Agents", "conversation_settings", "embedded_llm_settings", "engine_settings",
           "engine_settings_for", "fallback_llm_settings", "llm_settings", "tts_settings",
           "whisper_settings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Profile:
    """One agent of a loaded plan: how to make its handler for a new call."""

    name: str
    agent: Agent
    make: Callable[[], CallHandler]
    engines: Engines | None = None


class Agents:
    """The handler factory for one process. `build` is the engine loader (a seam for
    tests); it is called in a thread, since loading models blocks."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
        build: Callable[..., Engines] = build_engines,
        plan: Dialplan | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.clock = clock or MonotonicClock()
        self._build = build
        self.implicit = plan is None
        self.plan = plan if plan is not None else profiles.implicit_plan(config)
        self._profiles: dict[str, Profile] = {}
        self._engines: dict[profiles.EngineKey, Engines] = {}
        self._voices: dict[TtsSettings, PhraseCache] = {}
        self.started = False
        self.error: str | None = None
        # A plan of agents that load nothing (echo, transfer) answers before start().
        simple = {name: self._simple_profile(name, a) for name, a in self.plan.agents.items()}
        if all(simple.values()):
            self._profiles = simple  # type: ignore[assignment]
            self.started = True

    @property
    def engines(self) -> Engines | None:
        """The first conversation agent's engines (the only ones without a dialplan)."""
        return next((p.engines for p in self._profiles.values() if p.engines), None)

    async def start(self) -> None:
        """Load and warm what the plan needs. Raises (EngineStartError, ModelNotInstalled,
        ...) when the process cannot take calls; readiness() then shows the error."""
        try:
            await self.apply(self.plan)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            raise

    async def apply(self, plan: Dialplan) -> None:
        """Load what `plan` needs, then make it the plan for new calls, at once. If
        anything fails, it raises and the current plan stays."""
        built = {name: await self._profile(plan, name, agent)
                 for name, agent in plan.agents.items()}
        self.plan, self._profiles = plan, built
        self.started = True
        for p in built.values():
            if p.engines is not None:
                r = p.engines.readiness()
                log.info("agent %s: %s on asr=%s llm=%s%s tts=%s", p.name, p.agent.kind, r["asr"],
                         r["llm"], " (fallback)" if r["llm_fallback"] else "", r["tts"])

    @property
    def ready(self) -> bool:
        return self.started and all(p.engines is None or p.engines.started
                                    for p in self._profiles.values())

    def route(self, info: CallInfo) -> Choice:
        """The agent for this call under the current plan; raises dialplan.NoRoute."""
        return choose(self.plan, info)

    def names(self) -> list[str]:
        return list(self.plan.agents)

    def make_handler(self, call_info: CallInfo, agent: str | None = None) -> CallHandler:
        """A fresh handler for one call, by agent name (None: route `call_info`)."""
        if not self.started:
            raise RuntimeError("the conversation engines are not started; call start() first")
        name = agent if agent is not None else self.route(call_info).agent
        return self._profiles[name].make()

    # --- building profiles --------------------------------------------------------------

    def _wrap(self, agent: Agent, make: Callable[[], CallHandler]) -> Callable[[], CallHandler]:
        """DTMF rules and a time limit around an agent that does not listen."""
        rules = profiles.action_rules(agent)
        limit = agent.max_call_s if "max_call_s" in agent.model_fields_set else None
        metrics = self.metrics
        if not rules.dtmf and limit is None:
            return make
        return lambda: WithActions(make(), rules, max_call_s=limit, metrics=metrics)

    def _simple_profile(self, name: str, agent: Agent) -> Profile | None:
        """Echo and transfer agents: nothing to load."""
        metrics = self.metrics
        if isinstance(agent, EchoAgent):
            delay = agent.delay_s
            return Profile(name, agent, self._wrap(agent, lambda: EchoHandler(delay=delay)))
        if isinstance(agent, TransferAgent):
            target = agent.transfer_to
            return Profile(name, agent, self._wrap(
                agent, lambda: TransferHandler(target, metrics=metrics)))
        return None

    async def _profile(self, plan: Dialplan, name: str, agent: Agent) -> Profile:
        metrics = self.metrics
        simple = self._simple_profile(name, agent)
        if simple is not None:
            return simple
        if isinstance(agent, ConversationAgent):
            engines = await self._engines_for(agent)
            settings = profiles.conversation_settings(self.config, agent)
            if self.implicit:
                settings = conversation_settings(self.config)  # exactly as configured
            clock = self.clock
            return Profile(name, agent, lambda: Conversation(
                engines, settings, metrics=metrics, clock=clock), engines)
        assert isinstance(agent, PlaybackAgent)
        pcm, rate = await self._playback_audio(plan, name, agent)
        then = CallAction("transfer", agent.transfer_to or "") if agent.then == "transfer" \
            else CallAction("hangup")
        return Profile(name, agent, self._wrap(agent, lambda: PlaybackHandler(
            pcm, rate, then=then, metrics=metrics)))

    async def _engines_for(self, agent: ConversationAgent) -> Engines:
        key = profiles.engine_key(self.config, agent)
        phrases = profiles.agent_phrases(agent)
        engines = self._engines.get(key)
        if engines is not None:
            for k, text in phrases.items():  # a new greeting or filler on known engines
                if k not in engines.phrases:
                    await engines.tts_worker.submit(partial(engines.phrases.add, k, text))
            return engines
        engines = await asyncio.to_thread(
            self._build,
            asr=key.asr,
            llm=key.llm,
            tts=key.tts,
            fallback_llm=key.fallback,
            settings=profiles.engine_settings(key, phrases),
            metrics=self.metrics,
            clock=self.clock,
        )
        try:
            await engines.start()
        except BaseException:
            await engines.aclose()
            raise
        self._engines[key] = engines
        return engines

    async def _playback_audio(self, plan: Dialplan, name: str,
                              agent: PlaybackAgent) -> tuple[bytes, int]:
        wav = plan.wav_path(name)
        if wav is not None:
            return await asyncio.to_thread(read_wav, wav)
        assert agent.text is not None
        key = profiles.tts_key(self.config, agent)
        voice = self._voices.get(key)
        if voice is None:
            engine = await asyncio.to_thread(make_tts, key)
            voice = self._voices[key] = PhraseCache(engine, {})
        phrase = profiles.phrase_key("playback", agent.text)
        if phrase not in voice:
            await asyncio.to_thread(voice.add, phrase, agent.text)
        return voice.get(phrase), voice.sample_rate

    # --- state ---------------------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ready": self.ready, "agent": self.config.agent}
        if not self.implicit:
            out["dialplan"] = self.plan.source
            out["agents"] = {name: a.kind for name, a in self.plan.agents.items()}
        engines = self.engines
        if engines is not None:
            out["engines"] = engines.readiness()
        if self.error is not None:
            out["error"] = self.error
        return out

    async def aclose(self) -> None:
        for engines in self._engines.values():
            await engines.aclose()
