"""Reading a dialplan: YAML text -> a checked Dialplan, or DialplanError naming every problem.

    plan = load_file("dialplan.yaml")                 # reads, checks, WAVs included
    plan = load_text(text, source="dialplan.yaml")    # pure: no files touched

Each problem is one line: "<file>, line <n>: <key>: <what was expected>". load_text raises
nothing but DialplanError, whatever the text (it is fuzzed).
"""

from __future__ import annotations

import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dialplan.model import AGENT_KINDS, AGENT_MODELS, Agent, Route, valid_name
from switchboard.config import _key_lines

__all__ = ["Dialplan", "DialplanError", "load_file", "load_text"]

_TOP_KEYS = ("agents", "routes", "default")
_MAX_BYTES = 1 << 20
_SECRETS = ("api_key",)


class DialplanError(Exception):
    """The dialplan is wrong. `problems`: one line per problem, each naming where."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"invalid dialplan {source}:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class Dialplan:
    agents: dict[str, Agent]
    routes: tuple[Route, ...] = ()
    default: str | None = None
    source: str = "(built in)"
    base_dir: Path | None = None  # where relative WAV paths start
    lines: dict[tuple[str, ...], int] = field(default_factory=dict, compare=False, repr=False)

    def wav_path(self, name: str) -> Path | None:
        agent = self.agents[name]
        wav = getattr(agent, "wav", None)
        if wav is None:
            return None
        path = Path(wav)
        return path if path.is_absolute() or self.base_dir is None else self.base_dir / path


class _Problems:
    def __init__(self, source: str, lines: dict[tuple[str, ...], int]) -> None:
        self.source, self.lines = source, lines
        self.items: list[str] = []

    def add(self, loc: tuple[str, ...], problem: str) -> None:
        where = self.source
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.lines:
                where = f"{self.source}, line {self.lines[loc[:n]]}"
                break
        self.items.append(f"{where}: {'.'.join(loc) or '(top level)'}: {problem}")

    def pydantic(self, prefix: tuple[str, ...], err: ValidationError) -> None:
        for item in err.errors():
            loc = prefix + tuple(str(p) for p in item["loc"])
            problem = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                problem = "unknown key (check the spelling)"
            elif item["type"] == "missing":
                problem = "required, missing"
            elif "input" in item and not any(s in loc for s in _SECRETS):
                shown = repr(item["input"])
                problem += f" (got {shown[:60]}{'...' if len(shown) > 60 else ''})"
            self.add(loc, problem)

    def raise_if_any(self) -> None:
        if self.items:
            raise DialplanError(self.source, self.items)


def load_text(text: str, source: str = "dialplan", *, base_dir: Path | None = None) -> Dialplan:
    try:
        return _load(text, source, base_dir)
    except DialplanError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}, line {mark.line + 1}" if mark is not None else source
        what = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise DialplanError(source, [f"{where}: not valid YAML: {what[:300]}"]) from None
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as e:
        # YAML errors and anything odd deep in a crafted document: still the file's fault.
        raise DialplanError(source, [f"{source}: not valid YAML: {str(e)[:300]}"]) from None
    except Exception as e:  # e.g. PyYAML's AttributeError on a bad !!timestamp
        raise DialplanError(source, [f"{source}: cannot be read as a dialplan: "
                                     f"{type(e).__name__}: {str(e)[:200]}"]) from None


def _load(text: str, source: str, base_dir: Path | None) -> Dialplan:
    if len(text.encode("utf-8", "surrogatepass")) > _MAX_BYTES:
        raise DialplanError(source, [f"{source}: larger than {_MAX_BYTES} bytes"])
    data = yaml.safe_load(text)
    lines = _key_lines(text)
    problems = _Problems(source, lines)
    if not isinstance(data, dict):
        problems.add((), "the top level must be a mapping with `agents:` and `routes:`")
        problems.raise_if_any()
    for key in data:
        if key not in _TOP_KEYS:
            problems.add((str(key),), f"unknown key (expected one of {', '.join(_TOP_KEYS)})")

    agents = _agents(data.get("agents"), problems)
    routes = _routes(data.get("routes"), problems)
    default = data.get("default")
    if default is not None and not isinstance(default, str):
        problems.add(("default",), "expected the name of an agent")
        default = None
    problems.raise_if_any()

    # Names used must exist; transfer actions need somewhere to go.
    for i, route in enumerate(routes):
        if route.agent not in agents:
            problems.add(("routes", str(i), "agent"), _unknown(route.agent, agents))
    if default is not None and default not in agents:
        problems.add(("default",), _unknown(default, agents))
    if not routes and default is None:
        problems.add((), "no routes and no `default:`: no call could be answered")
    for name, agent in agents.items():
        if any(a.do == "transfer" and not (a.target or agent.transfer_to)
               for a in agent.actions()) or (
                getattr(agent, "then", None) == "transfer" and not agent.transfer_to):
            problems.add(("agents", name), "a transfer action has no target: give it one "
                         "({transfer: <target>}) or set the agent's transfer_to")
    problems.raise_if_any()
    return Dialplan(agents, tuple(routes), default, source, base_dir, lines)


def _unknown(name: str, agents: dict[str, Agent]) -> str:
    known = ", ".join(sorted(agents)) or "none"
    return f"no agent named {name!r} (agents: {known})"


def _agents(raw: Any, problems: _Problems) -> dict[str, Agent]:
    if raw is None:
        problems.add(("agents",), "required: a mapping of agent names to agents")
        return {}
    if not isinstance(raw, dict) or not raw:
        problems.add(("agents",), "expected a mapping of agent names to agents")
        return {}
    out: dict[str, Agent] = {}
    for name, spec in raw.items():
        loc = ("agents", str(name))
        if not isinstance(name, str) or not valid_name(name):
            problems.add(loc, "an agent name is 1-64 letters, digits, '_', '.', '-'")
            continue
        if not isinstance(spec, dict):
            problems.add(loc, f"expected a mapping with `kind:` ({', '.join(AGENT_KINDS)})")
            continue
        model = AGENT_MODELS.get(spec.get("kind"))  # type: ignore[arg-type]
        if model is None:
            problems.add(loc + ("kind",), f"expected one of {', '.join(AGENT_KINDS)} "
                         f"(got {spec.get('kind')!r})")
            continue
        try:
            out[name] = model.model_validate(spec)  # type: ignore[assignment]
        except ValidationError as e:
            problems.pydantic(loc, e)
    return out


def _routes(raw: Any, problems: _Problems) -> list[Route]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.add(("routes",), "expected a list of routes (- match: ... agent: ...)")
        return []
    out = []
    for i, spec in enumerate(raw):
        try:
            out.append(Route.model_validate(spec))
        except ValidationError as e:
            problems.pydantic(("routes", str(i)), e)
    return out


def load_file(path: str | Path) -> Dialplan:
    """Read and check a dialplan file, including that its WAV files can be played."""
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DialplanError(source, [f"{source}: cannot read: {e.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DialplanError(source, [f"{source}: not UTF-8 text ({e.reason} at byte "
                                     f"{e.start})"]) from None
    plan = load_text(text, source, base_dir=path.parent)
    problems = _Problems(source, plan.lines)
    for name in plan.agents:
        wav = plan.wav_path(name)
        if wav is not None:
            problem = wav_problem(wav)
            if problem:
                problems.add(("agents", name, "wav"), problem)
    problems.raise_if_any()
    return plan


def wav_problem(path: Path) -> str | None:
    """Why this WAV cannot be played (16-bit PCM mono at 8-48 kHz), or None."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                return (f"{path}: expected 16-bit mono PCM (got {w.getsampwidth() * 8}-bit, "
                        f"{w.getnchannels()} channels)")
            if not 8000 <= w.getframerate() <= 48000:
                return f"{path}: expected a rate of 8000-48000 Hz (got {w.getframerate()})"
            if w.getnframes() == 0:
                return f"{path}: has no audio"
    except FileNotFoundError:
        return f"{path}: no such file"
    except (OSError, wave.Error, EOFError) as e:
        return f"{path}: not a playable WAV ({e})"
    return None


def read_wav(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes()), w.getframerate()
