"""The dialplan: which agent answers which call, and how it behaves (see README.md).

    plan = load_file("dialplan.yaml")      # or load_text(text, source)
    choice = choose(plan, call_info)       # Choice(agent, route, why) or NoRoute
"""

from dialplan.loader import Dialplan, DialplanError, load_file, load_text
from dialplan.matcher import Choice, NoRoute, choose, routing_table

__all__ = ["Choice", "Dialplan", "DialplanError", "NoRoute", "choose", "load_file",
           "load_text", "routing_table"]
