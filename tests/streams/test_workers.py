"""Stream workers (streams.workers): a real `switchboard serve --agent echo` with two worker
processes. Twilio streams reach a worker through the main process's HTTP port, AudioSocket
through the workers' shared port; /metrics adds every process up; a worker that dies is
replaced and takes the streams it had with it, no others; a signal stops them all; the
console's list of calls up now includes the workers' calls."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import aiohttp

from streams.twilio_messages import Connected, Media, Start
from tests.dialplan.test_serve import PLAN, _twilio_stream_close
from tests.helpers import free_port, switchboard
from tests.streams.test_app import _audiosocket_call, _twilio_call

SID = "MZ000000000000000000000000000000aa"
CALL = "CA000000000000000000000000000000aa"


def _workers(pid: int) -> list[int]:
    """The stream-worker children of `pid`."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = []
    for child in children:
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"switchboard.stream_worker" in cmd:
            found.append(int(child))
    return found


def _wait(condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) is not alive either
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _env(as_port: int) -> dict[str, str]:
    return {"SWITCHBOARD_STREAMS__WORKERS": "2",
            "SWITCHBOARD_STREAMS__AUDIOSOCKET__ENABLED": "true",
            "SWITCHBOARD_STREAMS__AUDIOSOCKET__LISTEN": "127.0.0.1",
            "SWITCHBOARD_STREAMS__AUDIOSOCKET__PORT": str(as_port)}


def test_streams_are_served_by_workers_and_counted_once(tmp_path: Path) -> None:
    as_port = free_port()
    with switchboard(tmp_path, "--agent", "echo", env=_env(as_port)) as server:
        workers = _workers(server.proc.pid)
        assert len(workers) == 2
        state = server.http_json("/readyz")
        assert state["stream_workers"]["running"] == 2  # type: ignore[index]
        for _ in range(2):
            got = asyncio.run(_twilio_call(server.http_port))
            assert got and all(len(p) == 160 for p in got)  # the echo, whole frames
        kinds = asyncio.run(_audiosocket_call(as_port))  # the workers' shared port
        assert kinds
        metrics = server.metrics()
        # the two streams were counted by the workers that served them, merged here once
        assert 'switchboard_calls_total{outcome="remote_stop",transport="twilio"} 2.0' in metrics
        assert ('switchboard_calls_total{outcome="remote_hangup",transport="audiosocket"} 1.0'
                in metrics)
        assert "switchboard_ready 1.0" in metrics
        assert metrics.count("# TYPE switchboard_calls_total counter") == 1
        # the webhook and the APIs stay in the main process; records from all processes
        records = server.http_json("/calls")
        assert len(records["calls"]) == 3, records  # type: ignore[index]
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0, server.log()
        _wait(lambda: not any(_alive(p) for p in workers), timeout=10)


async def _open_stream(
        http_port: int) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(f"ws://127.0.0.1:{http_port}/twilio/stream")
    await ws.send_str(Connected().to_json())
    await ws.send_str(Start(SID, CALL, "AC1", 1, ("inbound",), {}).to_json())
    for i in range(10):
        await ws.send_str(Media(SID, i + 2, i + 1, i * 20, bytes([0x10, 0x90] * 80)).to_json())
        await asyncio.sleep(0.02)
    return session, ws


async def _ends(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> bool:
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.ERROR):
                return True


def test_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    with switchboard(tmp_path, "--agent", "echo", env=_env(free_port())) as server:
        before = _workers(server.proc.pid)

        async def kill_under_a_stream() -> None:
            session, ws = await _open_stream(server.http_port)
            try:
                # the Watch page's list, served by the main process, has the worker's call
                url = f"http://127.0.0.1:{server.http_port}/console/api/calls"
                async with session.get(url) as r:
                    active = (await r.json())["active"]
                assert [c["transport"] for c in active] == ["twilio"], active
                for pid in before:  # the stream is in one of them: it goes with it
                    os.kill(pid, signal.SIGKILL)
                assert await _ends(ws)
            finally:
                await ws.close()
                await session.close()

        asyncio.run(kill_under_a_stream())
        assert server.proc.poll() is None  # the main process stays up
        # each restarted once and running again (a kill is noticed when the exit is reaped)
        def replaced() -> bool:
            state = server.http_json("/readyz")["stream_workers"]  # type: ignore[index]
            return state["running"] == 2 and state["restarts"] == 2  # type: ignore[no-any-return]

        _wait(replaced)
        after = _workers(server.proc.pid)
        assert len(after) == 2 and not set(after) & set(before)
        got = asyncio.run(_twilio_call(server.http_port))  # new streams are served
        assert got and all(len(p) == 160 for p in got)
        assert "stream worker 0 exited" in server.log()


def test_workers_that_cannot_start_leave_the_streams_to_the_main_process(
        tmp_path: Path) -> None:
    as_port = free_port()
    with socket.socket() as squatter:  # AudioSocket's port, taken without SO_REUSEPORT
        squatter.bind(("127.0.0.1", as_port))
        squatter.listen()
        with switchboard(tmp_path, "--agent", "echo", env=_env(as_port)) as server:
            state = server.http_json("/readyz")
            assert state["ready"] is True
            assert state["stream_workers"]["running"] == 0  # type: ignore[index]
            got = asyncio.run(_twilio_call(server.http_port))  # served here instead
            assert got and all(len(p) == 160 for p in got)
            assert "stream worker 0 exited" in server.log()


def test_workers_follow_an_edited_dialplan(tmp_path: Path) -> None:
    plan = tmp_path / "dialplan.yaml"
    plan.write_text(PLAN)
    env = {**_env(free_port()), "SWITCHBOARD_DIALPLAN": str(plan),
           "SWITCHBOARD_DIALPLAN_POLL_SECONDS": "0.2"}
    with switchboard(tmp_path, "--agent", "echo", env=env) as server:
        # the plan routes To +15550002222 to an agent; after the edit no route takes it
        plan.write_text(PLAN.replace("+15550002222", "+15550003333"))
        reloaded = 'switchboard_dialplan_reloads_total{outcome="ok"} 3.0'  # main + 2 workers
        _wait(lambda: reloaded in server.metrics(), timeout=30)
        assert asyncio.run(_twilio_stream_close(server.http_port, "+15550002222")) == 1008
