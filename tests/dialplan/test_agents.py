"""The dialplan's agents at run time: engines loaded once and shared, agent settings mapped
onto the conversation, reload keeping calls in progress, the app's routing and names."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dialplan import load_file, load_text
from pipeline.actions import WithActions
from pipeline.conversation import Conversation
from pipeline.echo import EchoHandler
from pipeline.engines import FILLERS, Engines
from pipeline.leg import CallInfo
from pipeline.llm import DEFAULT_SYSTEM_PROMPT, OllamaSettings
from pipeline.metrics import Metrics
from pipeline.playback import PlaybackHandler, TransferHandler
from sip.endpoint import CallRefused
from switchboard.agents import Agents, conversation_settings
from switchboard.config import Config
from switchboard.dialplans import DialplanReloader
from switchboard.profiles import phrase_key
from tests.pipeline.test_conversation import ScriptedAsr, ScriptedLlm, ScriptedTts

EXAMPLE = Path(__file__).parents[2] / "dialplan" / "example.yaml"

PLAN = """
agents:
  clinic:
    kind: conversation
    greeting: "Bright Smile Dental, hello!"
    system_prompt: "You are the clinic."
    asr: {hint_words: [Patel, hygienist]}
    llm: {max_tokens: 40, temperature: 0.1, max_sentences: 1, history_turns: 3}
    vad: {hangover_ms: 500}
    barge_in: {enabled: false, after_ms: 400}
    silence: {reprompt_after_s: 5, reprompt: "Still there?", max_reprompts: 2}
    max_call_s: 300
    fillers: ["One moment."]
    transfer_to: "sip:desk@pbx"
    dtmf: {"0": transfer}
    phrases: [{words: [human], action: hangup}]
  sales:
    kind: conversation
    fillers: []
    greeting: null
  remote:
    kind: conversation
    llm: {engine: ollama, model: "qwen2.5:0.5b", host: "http://127.0.0.1:9"}
  echo: {kind: echo, delay_s: 0.1}
  echo-timed: {kind: echo, max_call_s: 60}
  desk: {kind: transfer, transfer_to: "sip:desk@pbx"}
  closed: {kind: playback, text: "We are closed."}
routes:
  - {match: {callee: "1"}, agent: clinic}
default: echo
"""


class Builds:
    """build_engines with scripted engines; counts the loads."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def __call__(self, **kw: Any) -> Engines:
        if self.fail:
            raise RuntimeError("no such model")
        self.calls.append(kw)
        return Engines(ScriptedAsr(), ScriptedLlm(), ScriptedTts(), settings=kw["settings"],
                       metrics=kw["metrics"], clock=kw["clock"])


class Voice(ScriptedTts):
    def __init__(self) -> None:
        super().__init__(rate=16000)


@pytest.fixture(autouse=True)
def scripted_voice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("switchboard.agents.make_tts", lambda settings: Voice())


async def started(text: str = PLAN, builds: Builds | None = None,
                  config: Config | None = None) -> tuple[Agents, Builds]:
    builds = builds or Builds()
    agents = Agents(config or Config(), metrics=Metrics(), build=builds,
                    plan=load_text(text, "plan.yaml"))
    await agents.start()
    return agents, builds


async def test_agents_with_equal_engine_settings_share_one_load() -> None:
    agents, builds = await started()
    try:
        assert len(builds.calls) == 2  # clinic+sales share; remote differs (Ollama)
        assert isinstance(builds.calls[1]["llm"], OllamaSettings)
        clinic = agents.make_handler(CallInfo("c", "sip"), "clinic")
        sales = agents.make_handler(CallInfo("d", "sip"), "sales")
        assert isinstance(clinic, Conversation) and isinstance(sales, Conversation)
        assert clinic.engines is sales.engines
        phrases = clinic.engines.phrases
        for text in ("Bright Smile Dental, hello!", "Still there?", "One moment."):
            assert phrases.text(next(k for k in phrases.phrases
                                     if phrases.phrases[k] == text)) == text
            assert any(phrases.phrases[k] == text for k in phrases.phrases if k in phrases)
        ready = agents.readiness()
        assert ready["agents"]["desk"] == "transfer" and ready["dialplan"] == "plan.yaml"
    finally:
        await agents.aclose()


async def test_agent_settings_reach_the_conversation() -> None:
    agents, _ = await started()
    try:
        s = agents.make_handler(CallInfo("c", "sip"), "clinic").settings  # type: ignore[attr-defined]
        assert s.greeting == phrase_key("greeting", "Bright Smile Dental, hello!")
        assert s.system_prompt == "You are the clinic."
        assert (s.max_tokens, s.temperature, s.max_sentences, s.history_turns) == (40, 0.1, 1, 3)
        assert s.asr_hint == "Patel, hygienist"
        assert (s.hangover_ms, s.barge_in, s.barge_in_ms) == (500, False, 400)
        assert (s.reprompt_after_s, s.max_reprompts) == (5, 2)
        assert s.reprompt == phrase_key("reprompt", "Still there?")
        assert s.max_call_s == 300 and s.fillers == (phrase_key("filler", "One moment."),)
        assert s.actions.for_dtmf("0").arg == "sip:desk@pbx"
        assert s.actions.for_phrase("a human please").do == "hangup"
        sales = agents.make_handler(CallInfo("d", "sip"), "sales").settings  # type: ignore[attr-defined]
        assert sales.greeting is None and sales.filler_after_s is None
        assert sales.fillers == () and sales.system_prompt == DEFAULT_SYSTEM_PROMPT
    finally:
        await agents.aclose()


async def test_handlers_for_each_kind() -> None:
    agents, _ = await started()
    try:
        echo = agents.make_handler(CallInfo("e", "sip", callee="2"))  # the default
        assert isinstance(echo, EchoHandler) and echo.delay_frames == 5
        assert isinstance(agents.make_handler(CallInfo("e", "sip"), "echo-timed"), WithActions)
        assert isinstance(agents.make_handler(CallInfo("e", "sip"), "desk"), TransferHandler)
        closed = agents.make_handler(CallInfo("e", "sip"), "closed")
        assert isinstance(closed, PlaybackHandler) and closed.rate == 16000 and closed.pcm
    finally:
        await agents.aclose()


async def test_without_a_dialplan_nothing_changes() -> None:
    config = Config()
    agents = Agents(config, metrics=Metrics(), build=Builds())
    await agents.start()
    try:
        assert agents.names() == ["conversation"]
        conv = agents.make_handler(CallInfo("c", "sip", callee="anything"))
        assert isinstance(conv, Conversation)
        assert conv.settings == conversation_settings(config)
        assert conv.settings.fillers == FILLERS and conv.settings.greeting == "greeting"
        assert set(agents.readiness()) == {"ready", "agent", "engines"}
    finally:
        await agents.aclose()


async def test_apply_switches_new_calls_and_keeps_calls_in_progress() -> None:
    agents, builds = await started()
    try:
        before = agents.make_handler(CallInfo("c", "sip", callee="1"))
        new = PLAN.replace("Bright Smile Dental, hello!", "Welcome back!").replace(
            'callee: "1"', 'callee: "2"')
        await agents.apply(load_text(new, "plan2.yaml"))
        assert len(builds.calls) == 2  # same engines: only the new greeting is synthesized
        after = agents.make_handler(CallInfo("c2", "sip", callee="2"))
        assert before.settings.greeting != after.settings.greeting  # type: ignore[attr-defined]
        assert after.settings.greeting in after.engines.phrases  # type: ignore[attr-defined]
        assert before.settings.greeting in before.engines.phrases  # type: ignore[attr-defined]
        assert isinstance(agents.make_handler(CallInfo("c3", "sip", callee="1")), EchoHandler)
        # A plan whose engines cannot load is refused; the current one stays.
        agents._build = Builds(fail=True)
        other = PLAN.replace("qwen2.5:0.5b", "llama3.2:1b")
        with pytest.raises(RuntimeError, match="no such model"):
            await agents.apply(load_text(other, "plan3.yaml"))
        assert agents.plan.source == "plan2.yaml"
    finally:
        await agents.aclose()


async def test_reloader_follows_the_file_and_refuses_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("agents: {a: {kind: echo}}\ndefault: a\n")
    metrics = Metrics()
    agents = Agents(Config(), metrics=metrics, build=Builds(), plan=load_file(path))
    await agents.start()
    reloader = DialplanReloader(path, agents, metrics=metrics, poll_s=0.05)
    reloader.start()
    value = lambda outcome: metrics.registry.get_sample_value(  # noqa: E731
        "switchboard_dialplan_reloads_total", {"outcome": outcome}) or 0

    async def until(outcome: str, n: int) -> None:
        for _ in range(200):
            if value(outcome) >= n:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {outcome} reload")

    try:
        path.write_text("agents: {a: {kind: echo}, b: {kind: echo}}\ndefault: b\n")
        await until("ok", 1)
        assert agents.names() == ["a", "b"] and agents.route(CallInfo("x", "sip")).agent == "b"
        path.write_text("agents: {a: {kind: echo}}\ndefault: zz\n")
        await until("invalid", 1)
        assert agents.names() == ["a", "b"] and "no agent named 'zz'" in str(reloader.last_error)
        assert await reloader.reload("test") is False  # the same bad file, asked again
        assert value("invalid") == 2 and value("ok") == 1
    finally:
        await reloader.stop()
        await agents.aclose()


async def test_app_routes_names_and_explicit_choice(tmp_path: Path) -> None:
    from switchboard.app import Switchboard

    plan = tmp_path / "plan.yaml"
    plan.write_text("agents: {a: {kind: echo}, b: {kind: echo, delay_s: 0}}\n"
                    "routes: [{match: {callee: '1'}, agent: a}]\n")
    config = Config.model_validate({"dialplan": str(plan), "records": {"enabled": False}})
    app = Switchboard(config, metrics=Metrics())
    await app.agents.start()
    try:
        assert app.agent_names() == ["a", "b"]
        routed = app.handler_for(CallInfo("x", "sip", callee="1"))
        assert isinstance(routed.inner, EchoHandler)  # type: ignore[attr-defined]
        picked = app.handler_for(CallInfo("y", "browser", agent="b")).inner  # type: ignore[attr-defined]
        assert isinstance(picked, EchoHandler) and picked.delay_frames == 0
        assert {(c["call_id"], c["agent"]) for c in app.live.snapshot()} == {
            ("x", "a"), ("y", "b")}
        for info in (CallInfo("x", "sip", callee="2"), CallInfo("x", "browser", agent="zz")):
            with pytest.raises(CallRefused) as refused:
                app.handler_for(info)
            assert (refused.value.status, refused.value.metric) == (404, "no_route")
        assert app.route_check(CallInfo("x", "twilio", callee="1")) is None
        assert "no route matches" in str(app.route_check(CallInfo("x", "twilio", callee="3")))
    finally:
        await app.agents.aclose()


def test_check_config_prints_the_routing_table(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"dialplan: {EXAMPLE}\n")
    exe = Path(sys.executable).with_name("switchboard")
    out = subprocess.run([str(exe), "check-config", "--config", str(cfg)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "1. callee=+15551230001 -> clinic [clinic-line]" in out.stderr
    assert "configuration OK" in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("agents: {a: {kind: echo}}\ndefault: b\n")
    cfg.write_text(f"dialplan: {bad}\n")
    out = subprocess.run([str(exe), "check-config", "--config", str(cfg)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert f"{bad}, line 2: default: no agent named 'b' (agents: a)" in out.stderr


def test_post_calls_may_name_any_dialplan_agent() -> None:
    from media.clock import MonotonicClock
    from switchboard.config import SipConfig
    from switchboard.dial import OutboundCalls
    from switchboard.http import ApiError

    seen: list[CallInfo] = []

    def handler_for(info: CallInfo) -> EchoHandler:
        seen.append(info)
        return EchoHandler()

    calls = OutboundCalls(SipConfig(), handler_for=handler_for, default_agent="echo",
                          clock=MonotonicClock(), metrics=Metrics(),
                          agent_names=lambda: ["clinic", "echo-test"])
    calls._check_agent("clinic")
    calls._handler(CallInfo("o1", "sip", callee="+1555"), "clinic")
    calls._handler(CallInfo("o2", "sip", callee="+1555"), None)
    assert [i.agent for i in seen] == ["clinic", None]  # None: the dialplan routes it
    with pytest.raises(ApiError, match="unknown agent 'nobody'; use one of clinic, echo-test"):
        calls._check_agent("nobody")

    def no_route(info: CallInfo) -> EchoHandler:
        raise CallRefused(404, "Not Found", "no_route")

    calls.handler_for = no_route
    with pytest.raises(ApiError, match="no route or default for this call: name an agent"):
        calls._handler(CallInfo("o3", "sip", callee="+1555"), None)


@pytest.mark.slow
async def test_real_engines_for_a_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """The packaged models: one Whisper/SmolLM2/Piper set for two conversation agents,
    their greetings synthesized by Piper, and a spoken playback on its own Piper voice."""
    from pipeline.tts import PiperTts

    monkeypatch.setattr("switchboard.agents.make_tts", lambda s: PiperTts(s))
    plan = load_text("""
agents:
  a: {kind: conversation, greeting: "Hello from A."}
  b: {kind: conversation, greeting: "Hello from B.", llm: {temperature: 0.5}}
  closed: {kind: playback, text: "We are closed."}
default: a
""", "real.yaml")
    agents = Agents(Config(), metrics=Metrics(), plan=plan)
    await agents.start()
    try:
        a = agents.make_handler(CallInfo("1", "sip"), "a")
        b = agents.make_handler(CallInfo("2", "sip"), "b")
        assert a.engines is b.engines  # type: ignore[attr-defined]
        phrases = a.engines.phrases  # type: ignore[attr-defined]
        assert a.settings.greeting in phrases and b.settings.greeting in phrases  # type: ignore[attr-defined]
        assert len(phrases.get(b.settings.greeting)) > 8000  # type: ignore[attr-defined]
        closed = agents.make_handler(CallInfo("3", "sip"), "closed")
        assert isinstance(closed, PlaybackHandler) and closed.rate == 22050
        assert len(closed.pcm) > closed.rate  # ~0.5 s or more of speech
    finally:
        await agents.aclose()
