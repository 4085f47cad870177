"""Dialplan YAML (dialplan.load_text), then routing a call with the plan it gave.

The documented errors are DialplanError from the loader and NoRoute from choose(). A
plan that loads must route a call by every door without raising anything else.
"""

from __future__ import annotations

from dialplan import DialplanError, NoRoute, choose, load_text
from pipeline.leg import CallInfo

_CALLS = (
    CallInfo("c1", "sip", caller="+15551230000", callee="+15551230001",
             params={"X-Department": "sales"}),
    CallInfo("c2", "twilio", caller="+15551230000", callee="+15551230002",
             params={"lang": "en"}),
    CallInfo("c3", "audiosocket", params={"uuid": "0f0e0d0c-0b0a-0908-0706-050403020100"}),
    CallInfo("c4", "freeswitch", params={"destination": "5200"}),
)


def test_one_input(data: bytes) -> None:
    try:
        plan = load_text(data.decode("utf-8", "replace"), "fuzz.yaml")
    except DialplanError:
        return
    for info in _CALLS:
        try:
            choice = choose(plan, info)
        except NoRoute:
            continue
        assert choice.agent in plan.agents
