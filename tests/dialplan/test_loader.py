"""Reading a dialplan: the shipped example is valid, and every kind of mistake is reported
with the file, the line, the key and what was expected; nothing but DialplanError escapes."""

from __future__ import annotations

import random
import wave
from pathlib import Path

import pytest

from dialplan import DialplanError, load_file, load_text, routing_table
from dialplan.model import ConversationAgent, PlaybackAgent

EXAMPLE = Path(__file__).parents[2] / "dialplan" / "example.yaml"


def test_example_shows_every_feature_and_is_valid() -> None:
    plan = load_file(EXAMPLE)
    kinds = {a.kind for a in plan.agents.values()}
    assert kinds == {"conversation", "echo", "playback", "transfer"}
    m = [r.match for r in plan.routes]
    assert any(x.callee and x.callee[0].kind == "exact" for x in m)
    assert any(x.callee and x.callee[0].kind == "prefix" for x in m)
    assert any(x.caller and x.caller[0].kind == "regex" for x in m)
    for door in ("sip_header", "twilio_param", "freeswitch", "audiosocket_uuid"):
        assert any(getattr(x, door) for x in m), door
    assert plan.default == "clinic"
    clinic = plan.agents["clinic"]
    assert isinstance(clinic, ConversationAgent)
    assert clinic.dtmf["0"].do == "transfer" and clinic.phrases and clinic.fillers
    assert clinic.asr is not None and clinic.asr.hint_words
    assert clinic.llm is not None and clinic.llm.temperature == 0.2
    closed = plan.agents["closed"]
    assert isinstance(closed, PlaybackAgent) and plan.wav_path("closed") == (
        EXAMPLE.parent / "sounds" / "closed.wav")
    table = routing_table(plan)
    assert "1. callee=+15551230001 -> clinic [clinic-line]" in table
    assert "default -> clinic" in table


OK_AGENTS = "agents:\n  a: {kind: echo}\n"

# (text, the one problem expected: fragments that must all appear in it)
BAD = {
    "yaml syntax": ("agents: [\n", ["t.yaml, line 2", "not valid YAML"]),
    "top level list": ("- a\n", ["(top level)", "must be a mapping"]),
    "unknown top key": (OK_AGENTS + "default: a\nroute: []\n",
                        ["line 4", "route: unknown key", "agents, routes, default"]),
    "no agents": ("routes: []\n", ["agents: required"]),
    "agents a list": ("agents: [a]\n", ["line 1", "agents: expected a mapping"]),
    "bad agent name": ("agents:\n  'a b': {kind: echo}\ndefault: a\n",
                       ["line 2", "agents.a b", "1-64 letters"]),
    "agent not a mapping": ("agents:\n  a: echo\n", ["line 2", "agents.a", "`kind:`"]),
    "unknown kind": ("agents:\n  a: {kind: robot}\n",
                     ["line 2", "agents.a.kind", "conversation, echo, playback, transfer",
                      "'robot'"]),
    "unknown agent key": ("agents:\n  a:\n    kind: echo\n    dealy_s: 1\ndefault: a\n",
                          ["line 4", "agents.a.dealy_s", "unknown key"]),
    "value out of range": ("agents:\n  a:\n    kind: echo\n    delay_s: 99\ndefault: a\n",
                           ["line 4", "agents.a.delay_s", "less than or equal to 10", "99"]),
    "bad llm engine": ("agents:\n  a:\n    kind: conversation\n    llm:\n      engine: gpt\n"
                       "default: a\n", ["line 5", "agents.a.llm.engine", "'llamacpp'"]),
    "unknown llm key": ("agents:\n  a:\n    kind: conversation\n    llm: {temprature: 1}\n"
                        "default: a\n", ["line 4", "agents.a.llm.temprature", "unknown key"]),
    "fillers not a list": ("agents:\n  a:\n    kind: conversation\n    fillers: Hmm\n"
                           "default: a\n", ["line 4", "agents.a.fillers", "list of short"]),
    "bad dtmf key": ("agents:\n  a:\n    kind: echo\n    dtmf: {X: hangup}\ndefault: a\n",
                     ["line 4", "agents.a.dtmf", "'X'", "0-9 * # A-D"]),
    "bad action": ("agents:\n  a:\n    kind: echo\n    dtmf: {'1': dance}\ndefault: a\n",
                   ["line 4", "agents.a.dtmf", "`transfer`, `hangup`"]),
    "bad send_dtmf": ("agents:\n  a:\n    kind: echo\n    dtmf: {'1': {send_dtmf: 'x'}}\n"
                      "default: a\n", ["agents.a.dtmf", "0-9 * # A-D"]),
    "transfer without target": ("agents:\n  a:\n    kind: echo\n    dtmf: {'0': transfer}\n"
                                "default: a\n", ["line 2", "agents.a", "transfer_to"]),
    "phrase rule without words": ("agents:\n  a:\n    kind: conversation\n    phrases:\n"
                                  "      - action: hangup\ndefault: a\n",
                                  ["line 5", "agents.a.phrases.0", "`words` or `regex`"]),
    "empty phrase word": ("agents:\n  a:\n    kind: conversation\n    phrases:\n"
                          "      - {words: ['  '], action: hangup}\ndefault: a\n",
                          ["agents.a.phrases.0.words", "empty word"]),
    "playback with both": ("agents:\n  a: {kind: playback, wav: x.wav, text: hi}\ndefault: a\n",
                           ["line 2", "agents.a", "exactly one of `wav` or `text`"]),
    "playback with neither": ("agents:\n  a: {kind: playback}\ndefault: a\n",
                              ["agents.a", "exactly one of"]),
    "playback empty text": ("agents:\n  a: {kind: playback, text: ' '}\ndefault: a\n",
                            ["agents.a", "nothing to say"]),
    "transfer agent without target": ("agents:\n  a: {kind: transfer}\ndefault: a\n",
                                      ["agents.a.transfer_to", "required"]),
    "routes not a list": (OK_AGENTS + "routes: {a: b}\n", ["line 3", "routes", "a list"]),
    "route without agent": (OK_AGENTS + "routes:\n  - match: {callee: '1'}\n",
                            ["line 4", "routes.0.agent", "required"]),
    "route unknown key": (OK_AGENTS + "routes:\n  - {match: {callee: '1'}, agent: a, to: b}\n",
                          ["routes.0.to", "unknown key"]),
    "empty match": (OK_AGENTS + "routes:\n  - {match: {}, agent: a}\n",
                    ["routes.0.match", "at least one condition", "`default:`"]),
    "unknown match key": (OK_AGENTS + "routes:\n  - {match: {number: '1'}, agent: a}\n",
                          ["routes.0.match.number", "unknown key"]),
    "unquoted number": (OK_AGENTS + "routes:\n  - match:\n      callee: +15551230001\n"
                        "    agent: a\n", ["line 5", "routes.0.match.callee", "in quotes",
                                           "15551230001"]),
    "pattern with two kinds": (OK_AGENTS + "routes:\n  - match: {callee: {prefix: '1', "
                               "regex: '2'}}\n    agent: a\n",
                               ["routes.0.match.callee", "{prefix: ...}"]),
    "bad regex": (OK_AGENTS + "routes:\n  - match: {caller: {regex: '(+'}}\n    agent: a\n",
                  ["line 4", "routes.0.match.caller", "not a valid regular expression"]),
    "empty prefix": (OK_AGENTS + "routes:\n  - match: {caller: {prefix: ''}}\n    agent: a\n",
                     ["routes.0.match.caller", "empty prefix"]),
    "empty pattern list": (OK_AGENTS + "routes:\n  - match: {caller: []}\n    agent: a\n",
                           ["routes.0.match.caller", "empty list"]),
    "header not kept": (OK_AGENTS + "routes:\n  - match: {sip_header: {Subject: x}}\n"
                        "    agent: a\n", ["routes.0.match.sip_header", "'Subject'", "X- header",
                                           "P-Asserted-Identity"]),
    "params not a mapping": (OK_AGENTS + "routes:\n  - match: {twilio_param: x}\n    agent: a\n",
                             ["routes.0.match.twilio_param", "mapping of parameter names"]),
    "unknown transport": (OK_AGENTS + "routes:\n  - match: {transport: pigeon}\n    agent: a\n",
                          ["routes.0.match.transport", "'sip'"]),
    "route to unknown agent": (OK_AGENTS + "routes:\n  - match: {callee: '1'}\n    agent: b\n",
                               ["line 5", "routes.0.agent", "no agent named 'b'",
                                "agents: a"]),
    "unknown default": (OK_AGENTS + "default: b\n", ["line 3", "default", "no agent named 'b'"]),
    "default not a name": (OK_AGENTS + "default: [a]\n", ["default", "name of an agent"]),
    "nothing answers": (OK_AGENTS, ["no routes and no `default:`"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_every_mistake_names_file_line_key_and_expectation(case: str) -> None:
    text, fragments = BAD[case]
    with pytest.raises(DialplanError) as err:
        load_text(text, "t.yaml")
    assert len(err.value.problems) == 1, err.value.problems
    (problem,) = err.value.problems
    assert problem.startswith("t.yaml"), problem
    for fragment in fragments:
        assert fragment in problem, (fragment, problem)


def test_several_mistakes_are_reported_together() -> None:
    text = ("agents:\n  a: {kind: echo, x: 1}\n  b: {kind: nope}\n"
            "routes:\n  - {match: {}, agent: a}\n")
    with pytest.raises(DialplanError) as err:
        load_text(text, "t.yaml")
    assert [p.split(": ")[1] for p in err.value.problems] == [
        "agents.a.x", "agents.b.kind", "routes.0.match"]
    assert "invalid dialplan t.yaml:\n  t.yaml, line 2: agents.a.x" in str(err.value)


def test_secrets_are_not_echoed() -> None:
    text = "agents:\n  a:\n    kind: conversation\n    llm: {api_key: [s3cret]}\ndefault: a\n"
    with pytest.raises(DialplanError) as err:
        load_text(text, "t.yaml")
    assert "s3cret" not in str(err.value) and "agents.a.llm.api_key" in str(err.value)


def _wav(path: Path, channels: int = 1, frames: int = 800) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(2 * channels * frames))
    return path


@pytest.mark.parametrize("setup, fragment", [
    (lambda d: None, "no such file"),
    (lambda d: (d / "x.wav").write_bytes(b"RIFF nonsense"), "not a playable WAV"),
    (lambda d: _wav(d / "x.wav", channels=2), "expected 16-bit mono PCM"),
    (lambda d: _wav(d / "x.wav", frames=0), "has no audio"),
])
def test_file_problems_with_the_wav(tmp_path: Path, setup: object, fragment: str) -> None:
    setup(tmp_path)  # type: ignore[operator]
    plan = tmp_path / "plan.yaml"
    plan.write_text("agents:\n  a:\n    kind: playback\n    wav: x.wav\ndefault: a\n")
    with pytest.raises(DialplanError) as err:
        load_file(plan)
    (problem,) = err.value.problems
    assert problem.startswith(f"{plan}, line 4: agents.a.wav: ") and fragment in problem


def test_file_read_problems(tmp_path: Path) -> None:
    with pytest.raises(DialplanError, match="cannot read"):
        load_file(tmp_path / "missing.yaml")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"agents:\n  a: {kind: echo, description: caf\xe9}\n")
    with pytest.raises(DialplanError, match="not UTF-8"):
        load_file(bad)
    _wav(tmp_path / "ok.wav")
    good = tmp_path / "good.yaml"
    good.write_text("agents:\n  a: {kind: playback, wav: ok.wav}\ndefault: a\n")
    assert load_file(good).wav_path("a") == tmp_path / "ok.wav"


def test_huge_text_is_refused() -> None:
    with pytest.raises(DialplanError, match="larger than"):
        load_text("#" * (1 << 20 + 1), "t.yaml")


def test_mangled_examples_raise_only_dialplan_error() -> None:
    """A bounded, seeded fuzz: cut, duplicate and swap bytes of the example; every result
    loads or raises DialplanError (the real fuzzing harness goes further)."""
    text = EXAMPLE.read_text()
    rng = random.Random(6)
    junk = ["{", "}", "[", "]", ":", "- ", "\t", "&a", "*a", "!!python/object:os.system",
            "\x00", "'", '"', "\\", "%", "?", "\n  ", "1e999", "~", "<<: *a", "!!timestamp 2001"]
    outcomes = {"ok": 0, "error": 0}
    for _ in range(300):
        chars = list(text)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(chars))
            op = rng.random()
            if op < 0.4:
                chars[at:at + rng.randint(1, 40)] = []
            elif op < 0.8:
                chars[at:at] = list(rng.choice(junk))
            else:
                other = rng.randrange(len(chars))
                chars[at], chars[other] = chars[other], chars[at]
        try:
            load_text("".join(chars), "fuzz.yaml")
            outcomes["ok"] += 1
        except DialplanError:
            outcomes["error"] += 1
    assert outcomes["error"] > 0 and sum(outcomes.values()) == 300


def test_yaml_library_failures_are_dialplan_errors() -> None:
    # PyYAML raises AttributeError for a timestamp tag on a non-timestamp.
    with pytest.raises(DialplanError, match="cannot be read as a dialplan: AttributeError"):
        load_text("agents: !!timestamp nope\n", "t.yaml")
    with pytest.raises(DialplanError, match="not valid YAML"):
        load_text("[" * 5000, "t.yaml")
