"""Static checks of the shipped Asterisk and FreeSWITCH configuration.

Neither PBX is packaged in Debian 12, so neither runs here. These tests check what can be
checked without them: the files are well formed, they refer to each other consistently
(endpoint, AOR, context, gateway names), they match Switchboard's own defaults (SIP and
HTTP ports, the AudioSocket port, codecs, AudioSocket sample rates), and their READMEs
describe the values the files actually carry.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.asterisk_ws import PATH as ASTERISK_WS_PATH
from streams.asterisk_ws import SUBPROTOCOL as ASTERISK_WS_SUBPROTOCOL
from streams.asterisk_ws_messages import FORMATS as ASTERISK_WS_FORMATS
from streams.audiosocket import RATES as AUDIOSOCKET_RATES
from streams.freeswitch import PATH as FREESWITCH_PATH
from switchboard.config import AudioSocketConfig, HttpConfig, SipConfig

ROOT = Path(__file__).resolve().parents[2]
ASTERISK = ROOT / "asterisk-config"
FREESWITCH = ROOT / "freeswitch"

# Switchboard's SIP codec names as Asterisk and FreeSWITCH spell them
ASTERISK_CODECS = {"ulaw": "PCMU", "alaw": "PCMA", "opus": "opus"}
FREESWITCH_CODECS = {"PCMU": "PCMU", "PCMA": "PCMA", "OPUS": "opus"}
ASTERISK_SLIN_RATES = {"slin": 8000, "slin12": 12000, "slin16": 16000, "slin24": 24000,
                       "slin32": 32000, "slin44": 44100, "slin48": 48000}


# -- a small reader for Asterisk's .conf format ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    template: bool
    parents: tuple[str, ...]
    options: tuple[tuple[str, str], ...]
    line: int

    def get(self, key: str) -> list[str]:
        return [v for k, v in self.options if k == key]


def read_conf(path: Path) -> list[Section]:
    """Sections in file order; `key = value` and `key => value` lines; `;` comments."""
    sections: list[Section] = []
    name, template, parents, options, start = None, False, (), [], 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = re.sub(r"(?<!\\);.*", "", raw).strip()
        if not line:
            continue
        header = re.fullmatch(r"\[([^\]]+)\](?:\(([^)]*)\))?", line)
        if header:
            if name is not None:
                sections.append(Section(name, template, parents, tuple(options), start))
            flags = [f.strip() for f in (header[2] or "").split(",") if f.strip()]
            name, template, start = header[1], "!" in flags, number
            parents, options = tuple(f for f in flags if f != "!"), []
            continue
        kv = re.fullmatch(r"([\w-]+)\s*=>?\s*(.*)", line)
        assert kv, f"{path.name}:{number}: not a section, option or comment: {raw!r}"
        assert name is not None, f"{path.name}:{number}: option before any section"
        options.append((kv[1], kv[2].strip()))
    if name is not None:
        sections.append(Section(name, template, parents, tuple(options), start))
    return sections


def resolve(sections: list[Section]) -> dict[tuple[str, str], dict[str, list[str]]]:
    """pjsip objects by (name, type), with their templates' options first."""
    templates = {s.name: s for s in sections if s.template}
    objects: dict[tuple[str, str], dict[str, list[str]]] = {}
    for s in sections:
        if s.template:
            continue
        merged: dict[str, list[str]] = {}
        for parent in s.parents:
            assert parent in templates, f"[{s.name}] line {s.line}: no template [{parent}]"
            for k, v in templates[parent].options:
                merged.setdefault(k, []).append(v)
        for k, v in s.options:
            merged.setdefault(k, []).append(v)
        kind = merged.get("type", [""])[-1]
        assert kind, f"[{s.name}] line {s.line}: no type="
        assert (s.name, kind) not in objects, f"[{s.name}] type={kind} defined twice"
        objects[(s.name, kind)] = merged
    return objects


def one(options: dict[str, list[str]], key: str) -> str:
    values = options.get(key, [])
    assert len(values) == 1, f"{key}: expected one value, got {values}"
    return values[0]


@pytest.fixture(scope="module")
def pjsip() -> dict[tuple[str, str], dict[str, list[str]]]:
    return resolve(read_conf(ASTERISK / "pjsip.conf"))


@pytest.fixture(scope="module")
def dialplan() -> dict[str, Section]:
    contexts = read_conf(ASTERISK / "extensions.conf")
    names = [c.name for c in contexts]
    assert len(names) == len(set(names)), f"a context is defined twice: {names}"
    return {c.name: c for c in contexts}


def contact_of(pjsip: dict[tuple[str, str], dict[str, list[str]]]) -> tuple[str, int]:
    found = re.fullmatch(r"sip:([\w.-]+):(\d+)", one(pjsip[("switchboard", "aor")], "contact"))
    assert found, "the AOR contact is not sip:host:port"
    return found[1], int(found[2])


def globals_of(dialplan: dict[str, Section]) -> dict[str, str]:
    return dict(dialplan["globals"].options)


# -- Asterisk ---------------------------------------------------------------------------------


def test_pjsip_objects_refer_to_each_other(pjsip: dict, dialplan: dict[str, Section]) -> None:
    kinds = {kind for _, kind in pjsip}
    assert kinds == {"transport", "endpoint", "aor", "identify"}
    endpoint = pjsip[("switchboard", "endpoint")]
    assert (one(endpoint, "transport"), "transport") in pjsip
    for aor in one(endpoint, "aors").split(","):
        assert (aor.strip(), "aor") in pjsip
    assert one(endpoint, "context") in dialplan
    identify = pjsip[("switchboard", "identify")]
    assert (one(identify, "endpoint"), "endpoint") in pjsip
    assert one(identify, "match") == contact_of(pjsip)[0]


def test_pjsip_endpoint_speaks_what_switchboard_speaks(pjsip: dict) -> None:
    endpoint = pjsip[("switchboard", "endpoint")]
    assert one(endpoint, "disallow") == "all"
    allowed = [c.strip() for v in endpoint["allow"] for c in v.split(",")]
    assert allowed[0] == "ulaw"  # no transcoding for G.711 callers
    assert {ASTERISK_CODECS[c] for c in allowed} == set(SipConfig().codecs)
    assert one(endpoint, "dtmf_mode") == "rfc4733"
    assert one(endpoint, "direct_media") == "no"


def test_pjsip_qualifies_switchboard_on_its_sip_port(pjsip: dict) -> None:
    assert contact_of(pjsip)[1] == SipConfig().port
    aor = pjsip[("switchboard", "aor")]
    assert int(one(aor, "qualify_frequency")) > 0
    assert 0 < float(one(aor, "qualify_timeout")) < int(one(aor, "qualify_frequency"))


def test_dialplan_routes_numbers_to_the_endpoint(pjsip: dict,
                                                 dialplan: dict[str, Section]) -> None:
    sip = dialplan["to-switchboard"]
    extens = sip.get("exten")
    assert extens and all(re.match(r"_?[\dXZN.\[\]-]+,1,", e) for e in extens), extens
    dials = [m for v in sip.get("same") for m in re.findall(r"Dial\(PJSIP/\$\{EXTEN\}@([\w-]+)", v)]
    assert dials, "no Dial(PJSIP/${EXTEN}@endpoint) in [to-switchboard]"
    for endpoint in dials:
        assert (endpoint, "endpoint") in pjsip
    assert any("CONGESTION" in v for v in sip.get("same"))  # a 503 is handled


def test_dialplan_audiosocket_forms_match_switchboard(pjsip: dict,
                                                      dialplan: dict[str, Section]) -> None:
    target = globals_of(dialplan)["SWITCHBOARD_AUDIOSOCKET"]
    host, port = target.rsplit(":", 1)
    assert int(port) == AudioSocketConfig().port
    assert host == contact_of(pjsip)[0]  # the same Switchboard

    context = dialplan["to-switchboard-audiosocket"]
    lines = " ".join(v for _, v in context.options)
    app = re.search(r"AudioSocket\(\$\{(\w+)\},\$\{SWITCHBOARD_AUDIOSOCKET\}\)", lines)
    assert app, "no AudioSocket(uuid,host:port) application"
    assert f"Set({app[1]}=${{UUID()}})" in lines  # the UUID is set before it is used
    driver = re.search(
        r"Dial\(AudioSocket/\$\{SWITCHBOARD_AUDIOSOCKET\}/\$\{UUID\(\)\}/c\((\w+)\)\)", lines)
    assert driver, "no Dial(AudioSocket/host:port/uuid/c(codec)) channel driver form"
    assert ASTERISK_SLIN_RATES[driver[1]] in AUDIOSOCKET_RATES
    assert lines.count("Answer()") >= 2  # neither form answers by itself


def test_dialplan_contexts_are_well_formed(dialplan: dict[str, Section]) -> None:
    for context in dialplan.values():
        if context.name == "globals":
            continue
        seen_exten = False
        for key, value in context.options:
            assert key in ("exten", "same", "include"), (context.name, key)
            if key == "exten":
                assert re.match(r"[^,]+,1,\w+\(", value), (context.name, value)
                seen_exten = True
            elif key == "same":
                assert seen_exten and re.match(r"n(\(\w+\))?,\w+\(", value), (context.name, value)
    assert "from-switchboard" in dialplan  # REFER transfers and outbound calls land here


def test_asterisk_readme_says_what_the_files_say(pjsip: dict,
                                                 dialplan: dict[str, Section]) -> None:
    readme = (ASTERISK / "README.md").read_text()
    endpoint = pjsip[("switchboard", "endpoint")]
    host, port = contact_of(pjsip)
    for text in (f"allow={','.join(endpoint['allow'])}", "dtmf_mode=rfc4733", "direct_media=no",
                 f"contact=sip:{host}:{port}", f"match={host}", str(port),
                 f"SWITCHBOARD_AUDIOSOCKET={globals_of(dialplan)['SWITCHBOARD_AUDIOSOCKET']}",
                 "AudioSocket(uuid,host:port)", "Dial(AudioSocket/host:port/uuid/c(slin16))",
                 "qualify_frequency=15", "[to-switchboard]", "[to-switchboard-audiosocket]",
                 "[from-switchboard]", "streams.audiosocket", "not packaged"):
        assert text in readme, f"README.md does not say {text!r}"
    for exten in dialplan["to-switchboard"].get("exten"):
        assert exten.split(",")[0] in readme


def test_websocket_client_and_dialplan_reach_the_chan_websocket_door(
        pjsip: dict, dialplan: dict[str, Section]) -> None:
    clients = {c.name: dict(c.options) for c in read_conf(ASTERISK / "websocket_client.conf")}
    context = dialplan["to-switchboard-websocket"]
    lines = " ".join(v for _, v in context.options)
    dial = re.search(r"Dial\(WebSocket/([\w-]+)/c\((\w+)\)v\((.*)\),\d+\)", lines)
    assert dial, "no Dial(WebSocket/<connection>/c(codec)v(params),timeout)"
    client = clients[dial[1]]  # the dial string names the websocket_client.conf section
    assert client["type"] == "websocket_client"
    assert client["connection_type"] == "per_call_config"  # media cannot use persistent
    assert client["protocols"] == ASTERISK_WS_SUBPROTOCOL
    assert client["username"] and client["password"]  # Basic auth carries the token
    uri = re.fullmatch(r"wss?://([\w.-]+):(\d+)(/\S*)", client["uri"])
    assert uri, client["uri"]
    assert uri[1] == contact_of(pjsip)[0]  # the same Switchboard
    assert int(uri[2]) == HttpConfig().port and uri[3] == ASTERISK_WS_PATH
    assert dial[2] in ASTERISK_WS_FORMATS  # a format the door decodes
    assert re.findall(r"(?:^|,)(\w+)=", dial[3]) == ["caller", "callee"]
    assert "URIENCODE" in dial[3]  # each value encoded on its own
    readme = (ASTERISK / "README.md").read_text()
    for text in ("[to-switchboard-websocket]", "streams.asterisk_ws", ASTERISK_WS_PATH,
                 f"[{dial[1]}]", "websocket_client.conf", "per_call_config", "FLUSH_MEDIA",
                 f"c({dial[2]})"):
        assert text in readme, f"README.md does not say {text!r}"
    for exten in context.get("exten"):
        assert exten.split(",")[0] in readme


# -- FreeSWITCH -------------------------------------------------------------------------------


def gateways() -> dict[str, dict[str, str]]:
    root = ET.parse(FREESWITCH / "gateway.xml").getroot()
    assert root.tag == "include"
    return {gw.attrib["name"]: {p.attrib["name"]: p.attrib["value"] for p in gw.iter("param")}
            for gw in root.iter("gateway")}


def extensions() -> dict[str, ET.Element]:
    root = ET.parse(FREESWITCH / "dialplan.xml").getroot()
    assert root.tag == "include"
    return {ext.attrib["name"]: ext for ext in root.iter("extension")}


def actions(ext: ET.Element) -> list[tuple[str, str]]:
    return [(a.attrib["application"], a.attrib.get("data", "")) for a in ext.iter("action")]


def test_freeswitch_gateway_points_at_switchboard_without_registering() -> None:
    gws = gateways()
    assert set(gws) == {"switchboard"}  # the second node is a comment
    gw = gws["switchboard"]
    assert int(gw["proxy"].rsplit(":", 1)[1]) == SipConfig().port
    assert gw["register"] == "false"
    assert "password" not in gw
    assert gw["caller-id-in-from"] == "true"
    assert int(gw["ping"]) > 0 and 1 <= int(gw["ping-min"]) <= int(gw["ping-max"])


def test_freeswitch_dialplan_bridges_numbers_to_the_gateway() -> None:
    ext = extensions()["switchboard-sip"]
    condition = ext.find("condition")
    assert condition is not None and condition.attrib["field"] == "destination_number"
    pattern = re.compile(condition.attrib["expression"])
    assert pattern.match("5000") and pattern.match("5009") and not pattern.match("5010")
    bridges = [data for app, data in actions(ext) if app == "bridge"]
    assert len(bridges) == 1
    found = re.fullmatch(r"\{([^}]*)\}sofia/gateway/([\w-]+)/\$1", bridges[0])
    assert found, bridges[0]
    assert found[2] in gateways()
    variables = dict(re.findall(r"(\w+)=('[^']*'|[^,]*)", found[1]))
    codecs = variables["absolute_codec_string"].strip("'").split(",")
    assert codecs[0] == "PCMU"
    assert {FREESWITCH_CODECS[c] for c in codecs} == set(SipConfig().codecs)
    assert ("set", "continue_on_fail=true") in actions(ext)
    assert actions(ext)[-1][0] == "hangup"  # a failed bridge ends the call plainly
    assert not any("bypass_media" in data or "proxy_media" in data for _, data in actions(ext))


def test_freeswitch_audio_stream_alternative_reaches_the_door() -> None:
    ext = extensions()["switchboard-audio-stream"]
    data = " ".join(d for _, d in actions(ext))
    found = re.search(r"uuid_audio_stream\(\$\{uuid\} start ws://([\w.-]+):(\d+)(/\w+)\S* "
                      r"(mono|mixed|stereo) (8k|16k) (\{.*\})\)", data)
    assert found, data
    host, port, path = found[1], int(found[2]), found[3]
    assert port == HttpConfig().port and path == FREESWITCH_PATH
    assert host == gateways()["switchboard"]["proxy"].rsplit(":", 1)[0]
    assert found[4] == "mono"
    metadata = found[6].replace("&quot;", '"')
    assert " " not in metadata  # API arguments split on spaces
    apps = [app for app, _ in actions(ext)]
    assert apps[0] == "answer" and apps[-1] == "park"


def test_freeswitch_readme_says_what_the_files_say() -> None:
    readme = (FREESWITCH / "README.md").read_text()
    gw = gateways()["switchboard"]
    for text in ("gateway.xml", "dialplan.xml", "conf/sip_profiles/external/",
                 "conf/dialplan/public/", gw["proxy"], "register=false",
                 f"ping={gw['ping']}", f"ping-max={gw['ping-max']}",
                 f"ping-min={gw['ping-min']}", "absolute_codec_string='PCMU,PCMA,OPUS'",
                 "sofia/gateway/switchboard/$1", r"^(500\d)$", "^(5100)$",
                 f":{HttpConfig().port}", "Not run here"):
        assert text in readme, f"README.md does not say {text!r}"
    # the mod_audio_stream part written before this one is still there
    assert "# FreeSWITCH → Switchboard with mod_audio_stream" in readme
