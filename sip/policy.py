"""Who Switchboard may call or transfer to: the guard against toll fraud.

Switchboard is a user agent, never a proxy: an inbound request is answered here or
refused, never relayed, whatever its Request-URI or Route headers say. What remains is
what we originate ourselves: outbound INVITEs (POST /calls) and REFERs (transfers), and
REFERs sent to us asking us to call somewhere. Each target goes through
TargetPolicy.allowed_target(uri) first:

1. `denied` patterns refuse, whatever else says yes (e.g. premium-rate prefixes "+1900*").
2. Rules added by the app (add_rule: dialplan transfer targets) allow.
3. A phone number (tel:, or a sip: URI with a number at a trunk host) is allowed when
   `numbers` is on (calls through the configured trunk), or when it matches `allowed`.
4. Any other URI is allowed only when it matches an `allowed` pattern.

Patterns are shell globs (fnmatch, case-insensitive): numbers like "+4420*" match the
number; URI patterns start with "sip:" and match "sip:user@host" or "sip:user@host:port".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase

from sip.grammar import SipParseError
from sip.uri import Uri

__all__ = ["TargetPolicy", "listed_targets", "same_target", "target_uri"]

_NUMBER = re.compile(r"\+?[0-9*#]{1,32}")
Rule = Callable[[Uri], bool]


def target_uri(target: str) -> Uri | None:
    """The URI of a target as an API or the agent names it: a number ("+15551234",
    "tel:+1-555-1234") becomes tel:+15551234; anything else must be a URI. None if it
    is neither."""
    text = target.strip()
    if text.lower().startswith("tel:"):
        text = text[4:].split(";")[0].replace("-", "").replace(".", "")
    if _NUMBER.fullmatch(text):
        return Uri("tel", user=text)
    try:
        return Uri.parse(text)
    except SipParseError:
        return None


def same_target(a: Uri, b: Uri) -> bool:
    """The same number, or the same user at the same host and port (parameters aside)."""
    return (a.scheme, a.user or "", a.host.lower().strip("[]"), a.port) == (
        b.scheme, b.user or "", b.host.lower().strip("[]"), b.port)


def listed_targets(targets: Callable[[], Iterable[str]]) -> Rule:
    """A rule allowing exactly the targets `targets()` names now (the dialplan's transfer
    targets; read on every check, so a reloaded plan applies at once)."""
    def rule(uri: Uri) -> bool:
        for text in targets():
            listed = target_uri(text)
            if listed is not None and same_target(listed, uri):
                return True
        return False

    return rule


class TargetPolicy:
    def __init__(self, *, numbers: bool = True, allowed: Iterable[str] = (),
                 denied: Iterable[str] = (), trunk_hosts: Iterable[str] = ()) -> None:
        self.numbers = numbers
        self.allowed = tuple(p.lower() for p in allowed)
        self.denied = tuple(p.lower() for p in denied)
        self.trunk_hosts = frozenset(h.lower().strip("[]") for h in trunk_hosts if h)
        self._rules: list[Rule] = []

    def add_rule(self, rule: Rule) -> None:
        """Allow whatever `rule(uri)` says yes to (unless denied): the app's hook for
        dialplan transfer targets."""
        self._rules.append(rule)

    def number_of(self, uri: Uri) -> str | None:
        """The phone number a URI dials: tel:, or a numeric user at a trunk host."""
        user = uri.user or ""
        if not _NUMBER.fullmatch(user):
            return None
        if uri.scheme == "tel" or uri.host.lower().strip("[]") in self.trunk_hosts:
            return user
        return None

    def _names(self, uri: Uri) -> list[str]:
        number = self.number_of(uri)
        names = [number] if number is not None else []
        if uri.scheme in ("sip", "sips") and uri.host:
            host = uri.host.strip("[]")  # "[" would open a glob character class
            base = f"{uri.scheme}:{uri.user + '@' if uri.user else ''}{host}".lower()
            names.append(base)
            if uri.port is not None:
                names.append(f"{base}:{uri.port}")
        return names

    def allowed_target(self, uri: Uri) -> bool:
        names = self._names(uri)
        if not names:
            return False  # neither a number nor a sip: URI with a host
        if any(fnmatchcase(n, p) for n in names for p in self.denied):
            return False
        if any(rule(uri) for rule in self._rules):
            return True
        if self.numbers and self.number_of(uri) is not None:
            return True
        return any(fnmatchcase(n, p) for n in names for p in self.allowed)
