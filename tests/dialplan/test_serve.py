"""The dialplan inside a real `switchboard serve`: a DTMF action transfers a real SIP call
(SIPp sees the REFER), calls with no route are refused on every door, and a reload while a
call is up leaves that call alone while new calls follow the new plan."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from streams.audiosocket_frames import FrameReader, Kind, audio_frame, uuid_frame
from streams.twilio_messages import Connected, Start
from tests.helpers import Server, free_port, switchboard

pytestmark = pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp not installed")

SIPP = Path(__file__).parent / "sipp"
WAV = Path(__file__).parents[2] / "dialplan" / "sounds" / "closed.wav"

PLAN = f"""
agents:
  echo-a:
    kind: echo
    dtmf: {{"0": {{transfer: "sip:operator@pbx.example.test"}}}}
  closed:
    kind: playback
    wav: {WAV}
routes:
  - match: {{callee: "600"}}
    agent: echo-a
  - match: {{callee: {{prefix: "7"}}}}
    agent: closed
  - match: {{twilio_param: {{To: "+15550002222"}}}}
    agent: echo-a
  - match: {{audiosocket_uuid: {{prefix: "00000000-"}}}}
    agent: echo-a
"""


def sipp(scenario: str, server: Server, tmp_path: Path, callee: str, *extra: str,
         wait: bool = True) -> subprocess.Popen[str]:
    name = f"{scenario}-{callee}-{time.monotonic_ns()}"
    cmd = ["sipp", "-sf", str(SIPP / f"{scenario}.xml"), "-s", callee, "-m", "1",
           "-timeout", "30s", "-timeout_error", "-trace_err", "-trace_msg",
           "-message_file", str(tmp_path / f"{name}.messages.log"),
           "-error_file", str(tmp_path / f"{name}.errors.log"),
           "-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(free_port()), "-nostdin",
           *extra, f"127.0.0.1:{server.sip_port}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        assert finished(proc, tmp_path, name) == 0
    return proc


def finished(proc: subprocess.Popen[str], tmp_path: Path, name: str = "") -> int:
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    if proc.returncode != 0:
        logs = "".join(p.read_text(errors="replace")[-3000:]
                       for p in sorted(tmp_path.glob(f"{name}*.log")))
        print(out[-3000:], logs)
    return proc.returncode


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def serve(tmp_path: Path, plan: str, **env: str) -> tuple[Path, object]:
    path = tmp_path / "dialplan.yaml"
    path.write_text(plan)
    full = {"SWITCHBOARD_DIALPLAN": str(path), "SWITCHBOARD_AGENT": "echo", **env}
    return path, switchboard(tmp_path, env=full, ready_timeout=60)


def test_dtmf_action_transfers_a_real_sip_call_with_refer(tmp_path: Path) -> None:
    _, server_cm = serve(tmp_path, PLAN)
    with server_cm as server:  # type: ignore[attr-defined]
        sipp("uac_dtmf_refer", server, tmp_path, "600")
        metrics = server.metrics()
        assert 'switchboard_call_actions_total{action="transfer",outcome="ok"} 1.0' in metrics
        assert 'switchboard_sip_transfers_total{outcome="ok"} 1.0' in metrics
        calls = server.http_json("/calls")["calls"]  # type: ignore[index]
        assert [c["agent"] for c in calls] == ["echo-a"]


async def _twilio_webhook(port: int, to: str) -> ET.Element:
    async with aiohttp.ClientSession() as session:
        form = {"CallSid": "CA1", "From": "+15550001111", "To": to}
        async with session.post(f"http://127.0.0.1:{port}/twilio/voice", data=form) as resp:
            assert resp.status == 200
            return ET.fromstring(await resp.text())


async def _twilio_stream_close(port: int, to: str) -> int | None:
    """A stream whose start message names a number no route takes (as if the webhook
    had been bypassed): closed with 1008."""
    params = {"From": "+15550001111", "To": to, "CallSid": "CA2"}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{port}/twilio/stream") as ws:
            await ws.send_str(Connected().to_json())
            await ws.send_str(Start("MZ2", "CA2", "AC1", 1, ("inbound",), params).to_json())
            msg = await ws.receive(timeout=10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            return ws.close_code


async def _freeswitch_close(port: int, metadata: str) -> int | None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{port}/freeswitch") as ws:
            await ws.send_str(metadata)
            msg = await ws.receive(timeout=10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            return ws.close_code


async def _audiosocket(port: int, call: uuid.UUID) -> list[Kind]:
    """Kinds of the frames Switchboard sends back in ~0.3 s, until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(bytes(uuid_frame(call)))
    kinds: list[Kind] = []
    framer = FrameReader(65535)
    try:
        for _ in range(15):
            writer.write(bytes(audio_frame(bytes(320))))
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(65536), 0.02)
            except TimeoutError:
                continue
            if not data:
                break
            kinds += [f.kind for f in framer.feed(data)]
    except ConnectionError:
        pass
    writer.close()
    return kinds


def test_no_route_is_refused_on_each_door_with_a_reason(tmp_path: Path) -> None:
    as_port = free_port()
    _, server_cm = serve(tmp_path, PLAN, SWITCHBOARD_STREAMS__AUDIOSOCKET__ENABLED="true",
                         SWITCHBOARD_STREAMS__AUDIOSOCKET__LISTEN="127.0.0.1",
                         SWITCHBOARD_STREAMS__AUDIOSOCKET__PORT=str(as_port))
    with server_cm as server:  # type: ignore[attr-defined]
        refused = asyncio.run(_audiosocket(as_port, uuid.UUID(int=1 << 127)))
        assert refused == [Kind.ERROR]  # closed with an error frame, nothing served
        served = asyncio.run(_audiosocket(as_port, uuid.UUID(int=42)))  # 00000000-...
        assert served and Kind.ERROR not in served
        sipp("uac_404", server, tmp_path, "999")
        reject = asyncio.run(_twilio_webhook(server.http_port, "+15559999999"))
        assert reject.find("./Reject") is not None and reject.find("./Connect") is None
        routed = asyncio.run(_twilio_webhook(server.http_port, "+15550002222"))
        assert routed.find("./Connect/Stream") is not None
        code = asyncio.run(_freeswitch_close(server.http_port, '{"callee": "999"}'))
        assert code == 1008  # policy violation: no agent for this call
        assert asyncio.run(_twilio_stream_close(server.http_port, "+15559999999")) == 1008
        log = server.log()
        assert "refused with 404: no route matches transport=sip callee='999'" in log
        assert "twilio call CA1 rejected: no route matches" in log
        metrics = server.metrics()
        for door in ("sip", "twilio", "freeswitch", "audiosocket"):
            assert (f'switchboard_calls_rejected_total{{reason="no_route",transport="{door}"}}'
                    in metrics), door


def test_reload_while_a_call_is_up(tmp_path: Path) -> None:
    path, server_cm = serve(tmp_path, PLAN, SWITCHBOARD_DIALPLAN_POLL_SECONDS="0")
    with server_cm as server:  # type: ignore[attr-defined]
        held = sipp("uac_hold_bye", server, tmp_path, "600", "-d", "5000", wait=False)
        wait_for(lambda: 'switchboard_calls_active{transport="sip"} 1.0' in server.metrics())
        # The new plan sends 600 to the recording; the call in progress stays an echo.
        path.write_text(PLAN.replace('callee: "600"', 'callee: "601"')
                        .replace('prefix: "7"', 'prefix: "6"'))
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: 'switchboard_dialplan_reloads_total{outcome="ok"} 1.0'
                 in server.metrics())
        sipp("uac_bye_from_server", server, tmp_path, "600")  # the playback hangs up
        # An invalid file is refused and the plan stays.
        path.write_text(PLAN + "  - match: {callee: 5}\n    agent: nobody\n")
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: 'switchboard_dialplan_reloads_total{outcome="invalid"} 1.0'
                 in server.metrics())
        ready = server.http_json("/readyz")
        assert ready["ready"] is True  # type: ignore[index]
        assert "routes.4.match.callee" in ready["dialplan_reload_error"]  # type: ignore[index]
        assert finished(held, tmp_path) == 0  # the held call ended by its own BYE
        sipp("uac_bye_from_server", server, tmp_path, "612")  # still the new plan
        calls = server.http_json("/calls?limit=10")["calls"]  # type: ignore[index]
        assert sorted(c["agent"] for c in calls) == ["closed", "closed", "echo-a"]
        assert "dialplan reload (SIGHUP) refused, the current plan stays" in server.log()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics") as r:
            assert b'switchboard_calls_total{outcome="remote_bye",transport="sip"} 1.0' in r.read()
