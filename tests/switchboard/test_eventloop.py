"""switchboard.eventloop: serve runs on the loop the config names."""

from __future__ import annotations

import asyncio
import builtins

import pytest
import uvloop

from switchboard.config import ConfigError, load_config
from switchboard.eventloop import loop_factory, run


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_uvloop_is_the_default_and_runs() -> None:
    assert load_config(None, env={}).event_loop == "uvloop"
    assert run(_loop_type(), "uvloop") is uvloop.Loop


def test_the_standard_loop_on_request() -> None:
    kind = run(_loop_type(), "asyncio")
    assert not issubclass(kind, uvloop.Loop)
    assert issubclass(kind, asyncio.BaseEventLoop)


def test_missing_uvloop_falls_back_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    real_import = builtins.__import__

    def no_uvloop(name: str, *args: object, **kwargs: object) -> object:
        if name == "uvloop":
            raise ImportError("No module named 'uvloop'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    assert loop_factory("uvloop") is asyncio.new_event_loop
    assert "uvloop is not installed" in caplog.text


def test_an_unknown_loop_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="event_loop"):
        load_config(None, env={"SWITCHBOARD_EVENT_LOOP": "trio"})
    with pytest.raises(ValueError, match="uvloop or asyncio"):
        loop_factory("trio")  # type: ignore[arg-type]
