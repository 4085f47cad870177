"""Call metrics by agent: switchboard_agent_calls_active, _total{outcome} and
switchboard_agent_call_duration_seconds, each labelled {transport, agent}.

The doors count calls by transport (switchboard_calls_*) but do not know which agent
answers; the recorder does (Recorder.wrap(info, handler, agent)), so it counts them here,
from the same moments as the record: answered (on_start), ended (on_end, the door's
call_closed, or closed as not_answered when nothing more came).
"""

from __future__ import annotations

from pipeline.metrics import Metrics
from sip.call import OUTCOMES as SIP_OUTCOMES
from streams.leg import OUTCOMES as STREAM_OUTCOMES

__all__ = ["MAX_AGENTS", "OUTCOMES", "AgentCallStats", "AgentLabels"]

# The outcome label: what the doors end calls with, plus the recorder's own; anything
# else is counted as "error" (as sip.call does), so the label stays bounded.
OUTCOMES = SIP_OUTCOMES | STREAM_OUTCOMES | {"not_answered"}


MAX_AGENTS = 64


class AgentLabels:
    """Keeps the agent label bounded whatever a dialplan passes: the first `limit` names
    seen are labels, later ones are counted as "other" (the record keeps the real name)."""

    def __init__(self, limit: int = MAX_AGENTS) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, agent: str) -> str:
        if agent in self._seen:
            return agent
        if not agent or len(self._seen) >= self.limit:
            return "other"
        self._seen.add(agent)
        return agent


class AgentCallStats:
    """One call's share of the agent-labelled metrics; the recorder calls answered() at
    most once, then ended() once."""

    def __init__(self, metrics: Metrics, transport: str, agent: str) -> None:
        self._labels = (transport, agent)
        self._metrics = metrics
        self._up = False

    def answered(self) -> None:
        self._up = True
        self._metrics.agent_calls_active.labels(*self._labels).inc()

    def ended(self, outcome: str, duration: float | None) -> None:
        """`duration`: seconds from answer to end, None for a call never answered."""
        m = self._metrics
        if self._up:
            self._up = False
            m.agent_calls_active.labels(*self._labels).dec()
            if duration is not None:
                m.agent_call_duration_seconds.labels(*self._labels).observe(max(0.0, duration))
        m.agent_calls_total.labels(*self._labels, outcome if outcome in OUTCOMES else "error"
                                   ).inc()
