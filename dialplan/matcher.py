"""Which agent answers a call: pure functions over a Dialplan and a CallInfo.

    choice = choose(plan, info)     # Choice(agent, route, why), or raises NoRoute
    print(routing_table(plan))      # for `switchboard check-config`

An explicit CallInfo.agent (the console, POST /calls) bypasses the routes; an unknown
name is refused. Otherwise the first route whose conditions all hold wins, then the
default agent; with neither, NoRoute says what the call looked like.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from dialplan.loader import Dialplan
from dialplan.model import Match, Pattern
from pipeline.leg import CallInfo

__all__ = ["Choice", "NoRoute", "choose", "matches", "pattern_matches", "routing_table"]


class NoRoute(LookupError):
    """No route matches and there is no default agent (or an unknown agent was asked for)."""


@dataclass(frozen=True, slots=True)
class Choice:
    agent: str
    route: int | None  # index of the route that matched; None: default or explicit
    why: str  # for the log: "route 2 (clinic-line)", "default", "asked for by name"


@lru_cache(maxsize=512)
def _compiled(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


def pattern_matches(p: Pattern, value: str) -> bool:
    if p.kind == "exact":
        return value == p.value
    if p.kind == "prefix":
        return value.startswith(p.value)
    return _compiled(p.value).search(value) is not None


def _any(patterns: tuple[Pattern, ...], value: str | None) -> bool:
    return value is not None and any(pattern_matches(p, value) for p in patterns)


def _named(wanted: dict[str, tuple[Pattern, ...]], params: dict[str, str]) -> bool:
    return all(_any(ps, params.get(name)) for name, ps in wanted.items())


def matches(m: Match, info: CallInfo) -> bool:
    """Every condition of `m` holds for this call. Door-specific conditions (sip_header,
    twilio_param, freeswitch, audiosocket_uuid) hold only for calls through that door."""
    if m.transport and info.transport not in m.transport:
        return False
    if m.callee is not None and not _any(m.callee, info.callee):
        return False
    if m.caller is not None and not _any(m.caller, info.caller):
        return False
    params = dict(info.params)
    if m.sip_header is not None:
        lowered = {k.lower(): v for k, v in params.items()}
        if info.transport != "sip" or not _named(m.sip_header, lowered):
            return False
    if m.twilio_param is not None and (info.transport != "twilio"
                                       or not _named(m.twilio_param, params)):
        return False
    if m.freeswitch is not None and (info.transport != "freeswitch"
                                     or not _named(m.freeswitch, params)):
        return False
    if m.audiosocket_uuid is not None and (info.transport != "audiosocket"
                                           or not _any(m.audiosocket_uuid, params.get("uuid"))):
        return False
    return True


def choose(plan: Dialplan, info: CallInfo) -> Choice:
    if info.agent is not None:
        if info.agent not in plan.agents:
            raise NoRoute(f"no agent named {info.agent!r} (agents: "
                          f"{', '.join(sorted(plan.agents))})")
        return Choice(info.agent, None, "asked for by name")
    for i, route in enumerate(plan.routes):
        if matches(route.match, info):
            label = f"route {i + 1}" + (f" ({route.name})" if route.name else "")
            return Choice(route.agent, i, label)
    if plan.default is not None:
        return Choice(plan.default, None, "default")
    raise NoRoute(f"no route matches {describe_call(info)} and the dialplan has no default")


def describe_call(info: CallInfo) -> str:
    """The routing facts of a call, for a log line (bounded)."""
    parts = [f"transport={info.transport}", f"callee={info.callee[:64]!r}",
             f"caller={info.caller[:64]!r}"]
    return " ".join(parts)


# --- the routing table ---------------------------------------------------------------------


def _patterns(ps: tuple[Pattern, ...]) -> str:
    return " | ".join(p.describe() for p in ps)


def describe_match(m: Match) -> str:
    parts = []
    if m.transport:
        parts.append("transport=" + "|".join(m.transport))
    if m.callee is not None:
        parts.append(f"callee={_patterns(m.callee)}")
    if m.caller is not None:
        parts.append(f"caller={_patterns(m.caller)}")
    for label, named in (("sip", m.sip_header), ("twilio", m.twilio_param),
                         ("freeswitch", m.freeswitch)):
        for name, ps in (named or {}).items():
            parts.append(f"{label}.{name}={_patterns(ps)}")
    if m.audiosocket_uuid is not None:
        parts.append(f"audiosocket.uuid={_patterns(m.audiosocket_uuid)}")
    return " and ".join(parts)


def routing_table(plan: Dialplan) -> str:
    """Routes in order, then the default, then each agent's kind and actions."""
    rows = [f"dialplan {plan.source}", "routes (first match wins):"]
    for i, route in enumerate(plan.routes):
        name = f" [{route.name}]" if route.name else ""
        rows.append(f"  {i + 1:>3}. {describe_match(route.match)} -> {route.agent}{name}")
    if not plan.routes:
        rows.append("    (none)")
    rows.append(f"  default -> {plan.default}" if plan.default is not None
                else "  no default: calls no route matches are refused (SIP 404, Twilio "
                     "<Reject>, stream closed)")
    rows.append("agents:")
    for name, agent in plan.agents.items():
        extra = []
        if agent.transfer_to:
            extra.append(f"transfer_to={agent.transfer_to}")
        for key, action in agent.dtmf.items():
            extra.append(f"dtmf {key} -> {action.describe()}")
        for rule in getattr(agent, "phrases", ()):
            said = "|".join(rule.words) or f"regex:{rule.regex}"
            extra.append(f"says {said} -> {rule.action.describe()}")
        rows.append(f"  {name}: {agent.kind}" + ("; " + "; ".join(extra) if extra else ""))
    return "\n".join(rows)
