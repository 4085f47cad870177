"""Configuration: one YAML file plus SWITCHBOARD_* environment overrides, validated.

An override names a key path with double underscores: SWITCHBOARD_SIP__PORT=5070 sets
sip.port. Values from the environment are parsed as YAML scalars ("5070" -> 5070,
"[PCMU, PCMA]" -> a list). Every error names the file (or variable), the key, the line
when the key came from the file, and what was expected.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "SWITCHBOARD_"
# Keys whose values are never echoed in errors, nor anything under them (sip.callers.*).
_SECRETS = {("password",), ("api_key",), ("auth_token",), ("token",), ("callers",),
            ("auth_secret",), ("dsn",), ("api_token",)}


class ConfigError(Exception):
    """A config file or override is wrong; the message says where and why."""


def _check_cidrs(networks: list[str]) -> list[str]:
    for net in networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as e:
            raise ValueError(f"{net!r} is not a CIDR network ({e})") from None
    return networks


class _Section(BaseModel):
    # A numeric password or token from the environment ("12345") stays a string.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class TrunkConfig(_Section):
    """The SIP trunk Switchboard registers with and dials out through."""

    registrar: str  # host[:port]
    username: str
    password: str = Field(default="", repr=False)
    realm: str | None = None
    domain: str | None = None  # the From/To domain, defaults to the registrar host
    expires: int = Field(default=600, ge=60, le=86400)
    transport: Literal["udp", "tcp"] = "udp"
    registration: bool = True  # REGISTER with the trunk (false: IP-authenticated trunk)


class FloodConfig(_Section):
    """Per-source limits (like Kamailio's pike): a source over a method's rate is blocked,
    every message from it dropped silently, for block_seconds. Rates are sustained
    requests per second; bursts the requests allowed at once."""

    enabled: bool = True
    invite_per_second: float = Field(default=10.0, gt=0)
    invite_burst: int = Field(default=50, ge=1)
    register_per_second: float = Field(default=5.0, gt=0)
    register_burst: int = Field(default=20, ge=1)
    options_per_second: float = Field(default=10.0, gt=0)
    options_burst: int = Field(default=50, ge=1)
    other_per_second: float = Field(default=50.0, gt=0)  # every other request (BYE, MESSAGE...)
    other_burst: int = Field(default=200, ge=1)
    malformed_per_second: float = Field(default=5.0, gt=0)  # messages that fail to parse
    malformed_burst: int = Field(default=20, ge=1)
    block_seconds: float = Field(default=60.0, gt=0, le=86400)
    max_sources: int = Field(default=10_000, ge=100, le=10_000_000)  # bounds the tables
    # Never limited; add the address of a SIP proxy in front of Switchboard.
    exempt_networks: list[str] = ["127.0.0.1/32", "::1/128"]
    # sip.trusted_networks (the trunk, the PBX: one address carrying every call) are not
    # limited either; false limits them too.
    exempt_trusted: bool = True

    @field_validator("exempt_networks")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return _check_cidrs(v)


class TargetsConfig(_Section):
    """Who Switchboard may call (POST /calls) or transfer to (REFER), against toll fraud
    (sip.policy). Patterns are globs: "+4420*" for numbers, "sip:*@pbx.example.com"."""

    numbers: bool = True  # phone numbers through the configured trunk (unless denied)
    # Direct SIP URIs allowed; loopback by default (another local Switchboard, tests).
    allowed: list[str] = ["sip:*@127.0.0.1", "sip:*@localhost", "sip:*@::1"]
    denied: list[str] = []  # checked first: e.g. premium-rate prefixes "+1900*"


class SipConfig(_Section):
    listen: str = "0.0.0.0"
    port: int = Field(default=5060, ge=1, le=65535)
    transports: list[Literal["udp", "tcp", "tls"]] = ["udp", "tcp"]
    # SIP over TLS (inbound: answered on the caller's connection): "tls" in transports.
    tls_port: int = Field(default=5061, ge=1, le=65535)
    tls_cert_file: str | None = None  # PEM certificate (chain)
    tls_key_file: str | None = None  # PEM private key
    advertised_address: str | None = None  # public address for SDP and Contact behind NAT
    codecs: list[Literal["PCMU", "PCMA", "opus"]] = ["PCMU", "PCMA", "opus"]
    rtp_port_min: int = Field(default=20000, ge=1024, le=65534)
    rtp_port_max: int = Field(default=30000, ge=1025, le=65535)
    max_calls: int = Field(default=200, ge=1)
    trusted_networks: list[str] = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12",
                                   "192.168.0.0/16"]
    media_timeout: float = Field(default=30.0, gt=0)  # hang up after this long without RTP
    # RTP is latched to the first source; true also follows a source that continues the
    # same stream from a new address (NAT rebinding) instead of dropping it.
    rtp_follow_rebinding: bool = False
    ring_seconds: float = Field(default=0.0, ge=0, le=60)  # 180 Ringing this long before 200
    timer_t1: float = Field(default=0.5, gt=0, le=10)  # RFC 3261 T1 (RTT estimate)
    timer_t2: float = Field(default=4.0, gt=0, le=60)  # RFC 3261 T2 (max non-INVITE retransmit)
    user_agent: str = "Switchboard"
    # Callers outside trusted_networks: with callers configured, an INVITE is challenged
    # (401, digest SHA-256 and MD5) and answered if it authenticates as one of them;
    # without, it gets 403. OPTIONS stays open to all (load balancers probe it).
    callers: dict[str, str] = Field(default={}, repr=False)  # digest username -> password
    auth_realm: str = Field(default="switchboard", min_length=1, max_length=128)
    # Challenge order: clients answer the first they support; some read only the first.
    auth_algorithms: list[Literal["SHA-256", "MD5"]] = Field(
        default=["SHA-256", "MD5"], min_length=1, max_length=2)
    nonce_ttl: float = Field(default=300.0, ge=10, le=86400)  # a nonce older gets stale=true
    # The nonces' HMAC key; unset: random per process (a restart voids outstanding nonces).
    auth_secret: str | None = Field(default=None, repr=False, min_length=16)
    trunk: TrunkConfig | None = None
    # The largest SIP message taken (UDP datagram or TCP frame): larger ones get 513/413.
    max_message_bytes: int = Field(default=65536, ge=4096, le=1 << 20)
    flood: FloodConfig = FloodConfig()  # per-source rate limits (sip.flood)
    targets: TargetsConfig = TargetsConfig()  # allowed call and transfer targets (sip.policy)

    @field_validator("trusted_networks")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return _check_cidrs(v)

    @field_validator("callers")
    @classmethod
    def _callers(cls, v: dict[str, str]) -> dict[str, str]:
        for user, password in v.items():
            if not user.strip():
                raise ValueError("a caller's username is empty")
            if not password:
                raise ValueError(f"caller {user!r} has an empty password")
        return v

    @field_validator("auth_realm")
    @classmethod
    def _realm(cls, v: str) -> str:
        if any(c in v for c in '"\\\r\n'):
            raise ValueError("must not contain quotes, backslashes or line breaks")
        return v

    @field_validator("auth_algorithms")
    @classmethod
    def _algorithms(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("an algorithm is listed twice")
        return v

    @model_validator(mode="after")
    def _port_range(self) -> SipConfig:
        if self.rtp_port_max - self.rtp_port_min < 2:
            raise ValueError("rtp_port_max must be at least rtp_port_min + 2")
        if "tls" in self.transports and not (self.tls_cert_file and self.tls_key_file):
            raise ValueError("transport tls needs sip.tls_cert_file and sip.tls_key_file")
        return self


class HttpConfig(_Section):
    listen: str = "0.0.0.0"
    port: int = Field(default=8080, ge=1, le=65535)
    # Needed by the calls API (POST /calls, GET /calls...); unset: loopback clients only.
    api_token: str = Field(default="", repr=False)


class AsrConfig(_Section):
    model_path: str | None = None  # None: the packaged Whisper tiny.en
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    compute_type: str = "int8"
    language: str = "en"
    cpu_threads: int = Field(default=2, ge=1)
    hint: str | None = None
    # Whisper's encoder sees this much (or the utterance + 2 s) instead of 30 s: ~4x
    # faster on CPU; null restores the full window.
    min_window_s: float | None = Field(default=10.0, ge=3, le=30)


class LlmConfig(_Section):
    engine: Literal["llamacpp", "ollama", "openai"] = "llamacpp"
    model_path: str | None = None  # llamacpp: None = the packaged SmolLM2-135M-Instruct
    host: str = "http://127.0.0.1:11434"  # ollama / openai-compatible base URL
    model: str = "llama3.2:1b"
    api_key: str | None = Field(default=None, repr=False)
    keep_alive: str = "30m"
    max_tokens: int = Field(default=80, ge=1, le=4096)
    temperature: float = Field(default=0.3, ge=0, le=2)
    threads: int = Field(default=1, ge=1)  # 2 slows to a crawl while Piper and Whisper run
    fallback_to_embedded: bool = True


class TtsConfig(_Section):
    engine: Literal["piper", "coqui"] = "piper"
    voice_path: str | None = None  # piper: None = the packaged en_US-joe-medium
    coqui_url: str = "http://127.0.0.1:5002"


class LogConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


# -- media-stream doors (streams/) ---------------------------------------------------------


class TwilioStreamsConfig(_Section):
    """Twilio Media Streams. With an auth token, webhooks and stream upgrades must carry a
    valid X-Twilio-Signature; with the account SID too, hang-up and transfer use the REST API."""

    auth_token: str = Field(default="", repr=False)
    account_sid: str = Field(default="", repr=False)
    max_lead_ms: int = Field(default=100, ge=20, le=2000)  # audio sent ahead of real time

    @field_validator("max_lead_ms")
    @classmethod
    def _whole_frames(cls, v: int) -> int:
        if v % 20:
            raise ValueError(f"must be a multiple of 20 ms, got {v}")
        return v


class FreeswitchStreamsConfig(_Section):
    """mod_audio_stream. `output`: stream_audio = the open-source module's JSON streamAudio
    messages (played by the dialplan on mod_audio_stream::play); binary = raw L16 back, for
    the full-duplex build."""

    token: str = Field(default="", repr=False)  # required in ?token= or a header when set
    output: Literal["stream_audio", "binary"] = "stream_audio"
    sample_rate: Literal[8000, 16000] = 8000  # unless the metadata names one
    chunk_ms: int = Field(default=200, ge=20, le=240)  # audio per streamAudio message
    max_lead_ms: int = Field(default=100, ge=20, le=2000)  # binary output: ahead of real time

    @field_validator("chunk_ms", "max_lead_ms")
    @classmethod
    def _whole_frames(cls, v: int) -> int:
        if v % 20:
            raise ValueError(f"must be a multiple of 20 ms, got {v}")
        return v


class AudioSocketConfig(_Section):
    """Asterisk AudioSocket. The protocol has no authentication: only sources inside
    `allowed_networks` are served."""

    enabled: bool = False
    listen: str = "0.0.0.0"
    port: int = Field(default=9092, ge=1, le=65535)
    allowed_networks: list[str] = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12",
                                   "192.168.0.0/16"]

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return _check_cidrs(v)


class AsteriskWsStreamsConfig(_Section):
    """Asterisk chan_websocket (GET /asterisk/ws): Asterisk connects out to Switchboard
    through a websocket_client.conf entry. `marks`: timeline = marks fire on our clock;
    asterisk = MARK_MEDIA / MEDIA_MARK_PROCESSED (a release that has MARK_MEDIA).
    `answer`: send ANSWER when the call starts (for the dial string's `n` option)."""

    enabled: bool = False
    token: str = Field(default="", repr=False)  # websocket_client.conf password, or ?token=
    max_lead_ms: int = Field(default=100, ge=20, le=2000)  # audio sent ahead of real time
    marks: Literal["timeline", "asterisk"] = "timeline"
    answer: bool = False

    @field_validator("max_lead_ms")
    @classmethod
    def _whole_frames(cls, v: int) -> int:
        if v % 20:
            raise ValueError(f"must be a multiple of 20 ms, got {v}")
        return v


class StreamsConfig(_Section):
    public_base_url: str | None = None  # e.g. https://voice.example.com, for TwiML stream URLs
    max_concurrent_streams: int = Field(default=200, ge=1)  # all stream doors together
    max_message_bytes: int = Field(default=65536, ge=1024, le=1 << 20)
    idle_timeout: float = Field(default=10.0, gt=0, le=3600)  # close a stream silent this long
    # Worker processes for the stream doors (switchboard.workers); 0: this process serves
    # them. One process carries ~100 Twilio streams per core; each worker loads the models.
    workers: int = Field(default=0, ge=0, le=64)
    twilio: TwilioStreamsConfig = TwilioStreamsConfig()
    freeswitch: FreeswitchStreamsConfig = FreeswitchStreamsConfig()
    audiosocket: AudioSocketConfig = AudioSocketConfig()
    asterisk_ws: AsteriskWsStreamsConfig = AsteriskWsStreamsConfig()

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("https://", "http://")) or "?" in v or "#" in v:
            raise ValueError("must be an http(s):// URL without query or fragment")
        return v.rstrip("/")


# -- call records (switchboard.records) -----------------------------------------------------


class RecordsConfig(_Section):
    """Where every call's record goes (GET /calls, `switchboard calls`)."""

    enabled: bool = True
    backend: Literal["sqlite", "postgresql"] = "sqlite"
    path: str = "./switchboard-calls.db"  # sqlite: the database file (WAL)
    # postgresql: a libpq DSN, postgresql://user:pw@host:5432/db or "host=... dbname=...";
    # a secret (the password): never logged nor echoed (SWITCHBOARD_RECORDS__DSN).
    dsn: str = Field(default="", repr=False)
    retention_days: float = Field(default=30, gt=0, le=36500)
    redact_digits: bool = False  # blank runs of 4+ digits (cards, phones) in transcripts

    @field_validator("backend", mode="before")
    @classmethod
    def _backend_alias(cls, v: Any) -> Any:
        return "postgresql" if v == "postgres" else v  # the name most people type

    @model_validator(mode="after")
    def _dsn(self) -> RecordsConfig:
        if self.backend == "postgresql" and not self.dsn.strip():
            raise ValueError("the postgresql backend needs records.dsn "
                             "(or SWITCHBOARD_RECORDS__DSN)")
        return self


# -- the browser console (switchboard.console) ----------------------------------------------


class ConsoleConfig(_Section):
    """Talk and Watch pages at /console/. Without a token only loopback clients may call
    or watch; set one before exposing the HTTP port (it is then required from everyone)."""

    enabled: bool = True
    token: str = Field(default="", repr=False)  # ?token= in the page URL, or a header
    max_lead_ms: int = Field(default=100, ge=20, le=2000)  # audio sent ahead of real time


class Config(_Section):
    agent: Literal["echo", "conversation"] = "conversation"
    # Which agent answers which call (dialplan/README.md). Unset: `agent` answers all.
    dialplan: str | None = None
    dialplan_poll_seconds: float = Field(default=2.0, ge=0, le=3600)  # 0: SIGHUP only
    # SIGTERM: stop taking calls at once, let calls in progress go on this long, then end them.
    shutdown_drain_seconds: float = Field(default=30.0, ge=0, le=3600)
    # uvloop (the default) or the standard asyncio loop (switchboard.eventloop)
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    sip: SipConfig = SipConfig()
    http: HttpConfig = HttpConfig()
    asr: AsrConfig = AsrConfig()
    llm: LlmConfig = LlmConfig()
    tts: TtsConfig = TtsConfig()
    log: LogConfig = LogConfig()
    streams: StreamsConfig = StreamsConfig()  # media-stream doors (streams/)
    records: RecordsConfig = RecordsConfig()  # call records (switchboard.records)
    console: ConsoleConfig = ConsoleConfig()  # browser console (switchboard.console)


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML document to its 1-based line, for error messages."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = path + (str(k.value),)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[path + (str(i),)] = item.start_mark.line + 1
                walk(item, path + (str(i),))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def _env_overrides(env: Mapping[str, str]) -> dict[str, tuple[tuple[str, ...], Any]]:
    out: dict[str, tuple[tuple[str, ...], Any]] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        path = tuple(p.lower() for p in name[len(ENV_PREFIX):].split("__") if p)
        if not path:
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out[name] = (path, value)
    return out


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any, source: str) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read, merge and validate. `path` None means defaults plus environment."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{source}: cannot read config file: {e.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
            lines = _key_lines(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        data = loaded

    origin: dict[tuple[str, ...], str] = {}
    for var, (key_path, value) in _env_overrides(env).items():
        _set_path(data, key_path, value, f"environment {var}")
        origin[key_path] = f"environment {var}"

    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, source, lines, origin)) from None


def _describe(
    err: ValidationError,
    source: str,
    lines: dict[tuple[str, ...], int],
    origin: dict[tuple[str, ...], str],
) -> str:
    msgs = []
    for item in err.errors():
        loc = tuple(str(p) for p in item["loc"])
        key = ".".join(loc) or "(top level)"
        where = source
        for n in range(len(loc), 0, -1):
            if loc[:n] in origin:
                where = origin[loc[:n]]
                break
            if loc[:n] in lines:
                where = f"{source}, line {lines[loc[:n]]}"
                break
        problem = item["msg"]
        if item["type"] == "extra_forbidden":
            problem = "unknown key (check the spelling)"
        elif ("input" in item and item["type"] != "missing"
              and not any((part,) in _SECRETS for part in loc)):
            problem += f" (got {item['input']!r})"
        msgs.append(f"{where}: {key}: {problem}")
    return "invalid configuration:\n  " + "\n  ".join(msgs)
