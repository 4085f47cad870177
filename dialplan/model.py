"""The dialplan's shape: agents (who answers) and routes (which calls they answer).

Pydantic models, strict about unknown keys, so a typo is an error that names the key.
Agent sections that tune the engines reuse the config's own sections (switchboard.config):
what an agent leaves out comes from the config file.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.llm import DEFAULT_SYSTEM_PROMPT
from pipeline.tts import DEFAULT_PHRASES
from sip.invite import ROUTING_HEADERS
from switchboard.config import AsrConfig, LlmConfig, TtsConfig

AGENT_KINDS = ("conversation", "echo", "playback", "transfer")
DTMF_KEYS = frozenset("0123456789*#ABCD")
TRANSPORTS = ("sip", "twilio", "freeswitch", "audiosocket", "browser", "asterisk_ws")
# SIP values a route may test: the routing headers and X- headers the SIP door keeps
# (sip.invite.call_info), and the few facts it adds about the request.
SIP_FACTS = ("request_uri", "from", "to", "auth_user", "source")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAX_PATTERN = 512


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _text(v: Any, what: str = "a string") -> str:
    """Phone numbers must be quoted: YAML reads +15551230001 as an integer."""
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise ValueError(f"expected {what}, got {type(v).__name__}")
    if not isinstance(v, str):
        raise ValueError(f"expected {what} in quotes (YAML read {v!r} as a number; "
                         "write it as \"...\" so a leading + or 0 is kept)")
    return v


# --- patterns -----------------------------------------------------------------------------


class Pattern(_Strict):
    """exact: the whole value; prefix: it starts with this; regex: re.search (anchor
    with ^ and $ to match the whole value)."""

    kind: Literal["exact", "prefix", "regex"]
    value: str

    def describe(self) -> str:
        return self.value if self.kind == "exact" else f"{self.kind}:{self.value}"


def parse_pattern(v: Any) -> Pattern:
    if isinstance(v, Pattern):
        return v
    if isinstance(v, dict):
        if len(v) != 1 or next(iter(v)) not in ("exact", "prefix", "regex"):
            raise ValueError("a pattern is a string (exact) or one of {exact: ...}, "
                             "{prefix: ...}, {regex: ...}")
        kind, value = next(iter(v.items()))
    else:
        kind, value = "exact", v
    value = _text(value, "a string pattern")
    if len(value) > _MAX_PATTERN:
        raise ValueError(f"a pattern is at most {_MAX_PATTERN} characters")
    if kind == "regex":
        try:
            re.compile(value)
        except (re.error, RecursionError, OverflowError) as e:
            raise ValueError(f"not a valid regular expression: {e}") from None
    elif kind == "prefix" and not value:
        raise ValueError("an empty prefix matches everything; use `default:` instead")
    return Pattern(kind=kind, value=value)


def parse_patterns(v: Any) -> tuple[Pattern, ...]:
    """One pattern, or a list of them (any may match)."""
    items = v if isinstance(v, list) else [v]
    if not items:
        raise ValueError("an empty list matches nothing")
    return tuple(parse_pattern(item) for item in items)


Patterns = Annotated[tuple[Pattern, ...], Field()]


def _named_patterns(v: Any, what: str) -> dict[str, tuple[Pattern, ...]]:
    if not isinstance(v, dict) or not v:
        raise ValueError(f"expected a mapping of {what} to patterns")
    return {str(k): parse_patterns(p) for k, p in v.items()}


class Match(_Strict):
    """Every condition given must hold. callee/caller apply to every door (SIP: request-URI
    user and From user; Twilio: To and From; FreeSWITCH: metadata callee/caller)."""

    callee: Patterns | None = None
    caller: Patterns | None = None
    transport: tuple[Literal["sip", "twilio", "freeswitch", "audiosocket", "browser",
                             "asterisk_ws"], ...] = ()
    sip_header: dict[str, Patterns] | None = None
    twilio_param: dict[str, Patterns] | None = None
    freeswitch: dict[str, Patterns] | None = None
    audiosocket_uuid: Patterns | None = None

    @field_validator("callee", "caller", "audiosocket_uuid", mode="before")
    @classmethod
    def _patterns(cls, v: Any) -> Any:
        return None if v is None else parse_patterns(v)

    @field_validator("transport", mode="before")
    @classmethod
    def _transport(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else v

    @field_validator("sip_header", mode="before")
    @classmethod
    def _headers(cls, v: Any) -> Any:
        if v is None:
            return v
        out = {}
        allowed = {h.lower() for h in ROUTING_HEADERS} | set(SIP_FACTS)
        for name, p in _named_patterns(v, "SIP header names").items():
            low = name.lower()
            if low not in allowed and not low.startswith("x-"):
                raise ValueError(
                    f"SIP header {name!r} is not kept for routing: use an X- header, one of "
                    f"{', '.join(ROUTING_HEADERS)}, or one of {', '.join(SIP_FACTS)}")
            out[low] = p
        return out

    @field_validator("twilio_param", "freeswitch", mode="before")
    @classmethod
    def _params(cls, v: Any) -> Any:
        return None if v is None else _named_patterns(v, "parameter names")

    @model_validator(mode="after")
    def _something(self) -> Match:
        if not any((self.callee, self.caller, self.transport, self.sip_header,
                    self.twilio_param, self.freeswitch, self.audiosocket_uuid)):
            raise ValueError("a route needs at least one condition (callee, caller, transport, "
                             "sip_header, twilio_param, freeswitch, audiosocket_uuid); "
                             "for a catch-all use `default:`")
        return self


class Route(_Strict):
    name: str | None = None
    match: Match
    agent: str


# --- actions -----------------------------------------------------------------------------


class Action(_Strict):
    """What a DTMF key or a phrase does: transfer (to `target`, or the agent's
    transfer_to), hangup, or send_dtmf."""

    do: Literal["transfer", "hangup", "send_dtmf"]
    target: str | None = None  # transfer
    digits: str | None = None  # send_dtmf

    def describe(self) -> str:
        arg = self.target or self.digits
        return f"{self.do} {arg}" if arg else self.do


def parse_action(v: Any) -> Action:
    """`transfer`, `hangup`, {transfer: target}, {send_dtmf: "123"}."""
    if isinstance(v, Action):
        return v
    if isinstance(v, str):
        if v not in ("transfer", "hangup"):
            raise ValueError("an action is `transfer`, `hangup`, {transfer: <target>} or "
                             "{send_dtmf: <digits>}")
        return Action(do=v)  # type: ignore[arg-type]
    if isinstance(v, dict) and len(v) == 1:
        (do, arg), = v.items()
        if do == "transfer":
            return Action(do="transfer", target=_text(arg, "a transfer target"))
        if do == "send_dtmf":
            digits = _text(arg, "DTMF digits")
            if not digits or len(digits) > 32 or any(d not in DTMF_KEYS for d in digits):
                raise ValueError("send_dtmf needs 1-32 of 0-9 * # A-D")
            return Action(do="send_dtmf", digits=digits)
        if do == "hangup":
            return Action(do="hangup")
    raise ValueError("an action is `transfer`, `hangup`, {transfer: <target>} or "
                     "{send_dtmf: <digits>}")


class PhraseRule(_Strict):
    """The caller said one of `words` (whole words, any case) or text matching `regex`."""

    words: tuple[str, ...] = ()
    regex: str | None = None
    action: Action

    @field_validator("words", mode="before")
    @classmethod
    def _words(cls, v: Any) -> Any:
        items = v if isinstance(v, list) else [v]
        words = tuple(_text(w, "a word or phrase").strip().lower() for w in items)
        if any(not w for w in words):
            raise ValueError("an empty word would match everything")
        return words

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        return None if v is None else parse_pattern({"regex": v}).value

    @field_validator("action", mode="before")
    @classmethod
    def _action(cls, v: Any) -> Any:
        return parse_action(v)

    @model_validator(mode="after")
    def _one(self) -> PhraseRule:
        if not self.words and self.regex is None:
            raise ValueError("a phrase rule needs `words` or `regex`")
        return self


def _dtmf_map(v: Any) -> dict[str, Action]:
    if not isinstance(v, dict):
        raise ValueError("expected a mapping of DTMF keys to actions, e.g. {\"0\": transfer}")
    out = {}
    for key, action in v.items():
        k = str(key) if isinstance(key, int) and not isinstance(key, bool) else key
        if not isinstance(k, str) or k not in DTMF_KEYS:
            raise ValueError(f"DTMF key {key!r}: expected one of 0-9 * # A-D")
        out[k] = parse_action(action)
    return out


# --- agents ------------------------------------------------------------------------------


class AgentAsr(AsrConfig):
    hint_words: tuple[str, ...] = ()  # names and terms Whisper should expect


class AgentLlm(LlmConfig):
    max_sentences: int = Field(default=2, ge=1, le=20)
    history_turns: int = Field(default=8, ge=1, le=100)
    tools: bool = True  # offer transfer/hang-up/DTMF as tools when the engine can


class Vad(_Strict):
    onset_ms: float = Field(default=80, ge=20, le=2000)
    hangover_ms: float = Field(default=300, ge=60, le=5000)
    preroll_ms: float = Field(default=240, ge=0, le=2000)
    speculative_after_ms: float = Field(default=60, ge=20, le=5000)


class BargeIn(_Strict):
    enabled: bool = True
    after_ms: float = Field(default=240, ge=20, le=5000)  # caller speech over the bot


class Silence(_Strict):
    reprompt_after_s: float = Field(default=8.0, gt=0, le=600)
    reprompt: str | None = None  # the text; None: "Are you still there?"
    max_reprompts: int = Field(default=1, ge=0, le=10)
    hangup_after_s: float = Field(default=8.0, gt=0, le=600)


class _AgentBase(_Strict):
    kind: str
    description: str = ""
    max_call_s: float = Field(default=900.0, gt=0, le=86400)
    transfer_to: str | None = None  # where `transfer` actions go when they name no target
    dtmf: dict[str, Action] = {}

    @field_validator("dtmf", mode="before")
    @classmethod
    def _dtmf(cls, v: Any) -> Any:
        return _dtmf_map(v)

    @field_validator("transfer_to", mode="before")
    @classmethod
    def _target(cls, v: Any) -> Any:
        return None if v is None else _text(v, "a transfer target")

    def actions(self) -> list[Action]:
        return list(self.dtmf.values())


class EchoAgent(_AgentBase):
    kind: Literal["echo"]
    delay_s: float = Field(default=0.3, ge=0, le=10)


class PlaybackAgent(_AgentBase):
    """Play a WAV file or speak a text, then hang up."""

    kind: Literal["playback"]
    wav: str | None = None  # relative to the dialplan file's folder
    text: str | None = None
    tts: TtsConfig | None = None
    then: Literal["hangup", "transfer"] = "hangup"

    @model_validator(mode="after")
    def _one_source(self) -> PlaybackAgent:
        if (self.wav is None) == (self.text is None):
            raise ValueError("a playback agent needs exactly one of `wav` or `text`")
        if self.text is not None and not self.text.strip():
            raise ValueError("text: nothing to say")
        return self


class TransferAgent(_AgentBase):
    """Straight to a human: the call is transferred as soon as it is answered."""

    kind: Literal["transfer"]
    transfer_to: str


class ConversationAgent(_AgentBase):
    kind: Literal["conversation"]
    greeting: str | None = DEFAULT_PHRASES["greeting"]  # null or "": start listening
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    asr: AgentAsr | None = None
    llm: AgentLlm | None = None
    tts: TtsConfig | None = None
    vad: Vad = Vad()
    barge_in: BargeIn = BargeIn()
    silence: Silence = Silence()
    fillers: tuple[str, ...] | None = None  # None: the default fillers; []: none
    filler_after_s: float = Field(default=2.0, gt=0, le=60)
    goodbye_detection: bool = True
    phrases: tuple[PhraseRule, ...] = ()

    @field_validator("fillers", mode="before")
    @classmethod
    def _fillers(cls, v: Any) -> Any:
        if v is None:
            return v
        if not isinstance(v, list):
            raise ValueError("expected a list of short phrases, e.g. [\"Hmm.\", \"Let me see.\"]")
        return tuple(_text(x, "a phrase") for x in v)

    def actions(self) -> list[Action]:
        return [*self.dtmf.values(), *(r.action for r in self.phrases)]


AGENT_MODELS: dict[str, type[_AgentBase]] = {
    "conversation": ConversationAgent, "echo": EchoAgent, "playback": PlaybackAgent,
    "transfer": TransferAgent,
}
Agent = ConversationAgent | EchoAgent | PlaybackAgent | TransferAgent


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))
