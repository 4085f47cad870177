from pathlib import Path

import pytest

from switchboard.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "switchboard.yaml"
    p.write_text(text)
    return p


def test_defaults_without_file():
    c = load_config(None, env={})
    assert c.sip.port == 5060
    assert c.sip.transports == ["udp", "tcp"]
    assert c.http.port == 8080
    assert c.agent == "conversation"


def test_file_values_are_read(tmp_path):
    c = load_config(write(tmp_path, "agent: echo\nsip:\n  port: 5070\n  codecs: [PCMA]\n"), env={})
    assert c.agent == "echo"
    assert c.sip.port == 5070
    assert c.sip.codecs == ["PCMA"]


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, "sip:\n  port: 5070\n")
    c = load_config(path, env={"SWITCHBOARD_SIP__PORT": "5080", "SWITCHBOARD_AGENT": "echo",
                               "SWITCHBOARD_SIP__CODECS": "[opus, PCMU]", "OTHER": "x"})
    assert c.sip.port == 5080
    assert c.agent == "echo"
    assert c.sip.codecs == ["opus", "PCMU"]


def test_bad_value_names_file_line_and_key(tmp_path):
    path = write(tmp_path, "agent: echo\nsip:\n  listen: 0.0.0.0\n  port: 70000\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    msg = str(e.value)
    assert f"{path}, line 4: sip.port" in msg
    assert "70000" in msg


def test_unknown_key_is_an_error(tmp_path):
    path = write(tmp_path, "sip:\n  prot: 5060\n")
    with pytest.raises(ConfigError, match=r"line 2: sip\.prot: unknown key"):
        load_config(path, env={})


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match=r"environment SWITCHBOARD_HTTP__PORT: http\.port"):
        load_config(None, env={"SWITCHBOARD_HTTP__PORT": "eighty"})


def test_bad_cidr_is_explained(tmp_path):
    path = write(tmp_path, "sip:\n  trusted_networks: [10.0.0.0/33]\n")
    with pytest.raises(ConfigError, match=r"sip\.trusted_networks.*not a CIDR"):
        load_config(path, env={})


def test_secret_is_not_echoed_in_errors(tmp_path):
    path = write(tmp_path, "sip:\n  trunk:\n    registrar: t.example\n    username: u\n"
                           "    password: [hunter2]\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert "hunter2" not in str(e.value)
    assert "sip.trunk.password" in str(e.value)


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "sip: [\n"), env={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml", env={})
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), env={})


def test_the_shipped_example_config_is_valid():
    example = Path(__file__).parents[2] / "switchboard.example.yaml"
    c = load_config(example, env={})
    assert c.sip.port == 5060 and c.agent == "conversation"


def test_a_numeric_secret_from_the_environment_stays_a_string():
    c = load_config(None, env={"SWITCHBOARD_SIP__TRUNK__REGISTRAR": "t.example",
                               "SWITCHBOARD_SIP__TRUNK__USERNAME": "15551230000",
                               "SWITCHBOARD_SIP__TRUNK__PASSWORD": "12345"})
    assert c.sip.trunk is not None
    assert (c.sip.trunk.username, c.sip.trunk.password) == ("15551230000", "12345")


def test_asterisk_ws_door_config():
    c = load_config(None, env={})
    assert not c.streams.asterisk_ws.enabled  # off unless asked for
    c = load_config(None, env={"SWITCHBOARD_STREAMS__ASTERISK_WS__ENABLED": "true",
                               "SWITCHBOARD_STREAMS__ASTERISK_WS__TOKEN": "123456",
                               "SWITCHBOARD_STREAMS__ASTERISK_WS__MARKS": "asterisk"})
    aw = c.streams.asterisk_ws
    assert (aw.enabled, aw.token, aw.marks, aw.max_lead_ms) == (True, "123456", "asterisk", 100)
    assert "123456" not in repr(aw)  # the token stays out of logs
    with pytest.raises(ConfigError, match="max_lead_ms"):
        load_config(None, env={"SWITCHBOARD_STREAMS__ASTERISK_WS__MAX_LEAD_MS": "30"})
