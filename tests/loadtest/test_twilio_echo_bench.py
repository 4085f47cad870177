"""loadtest.twilio_echo_bench: the lean client's protocol against bytes cut at every
point (a fake transport), the server process-tree CPU, and two tiny real runs against a
`switchboard serve` the bench starts (one and two client processes). The runs check
counts and report keys, nothing about timing."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

from loadtest import twilio_echo_bench as bench
from loadtest import twilio_stream_client as client
from loadtest import ws_frames as wf
from tests.loadtest.test_ws_frames import parse_all, server_frame

MEDIA = b'{"event":"media","streamSid":"MZ1","media":{"payload":"////"}}'
MARK = b'{"event":"mark","streamSid":"MZ1","mark":{"name":"x"}}'


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closing = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True


def _connect() -> tuple[client.StreamProtocol, FakeTransport, bytes]:
    proto = client.StreamProtocol(client.Stream(1), "127.0.0.1:1", "/twilio/stream")
    t = FakeTransport()
    proto.connection_made(t)
    request = bytes(t.out).decode()
    key = request.split("Sec-WebSocket-Key: ")[1].split("\r\n")[0]
    t.out.clear()
    response = (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {wf.accept_for(key)}\r\n\r\n")
    return proto, t, response.encode()


async def test_media_arrivals_are_counted_however_the_bytes_are_cut() -> None:
    wire_frames = [
        server_frame(wf.TEXT, MEDIA),
        server_frame(wf.TEXT, MARK),
        server_frame(wf.TEXT, MEDIA[:5], fin=False),  # a fragmented media message
        server_frame(wf.CONTINUATION, MEDIA[5:9], fin=False),
        server_frame(wf.CONTINUATION, MEDIA[9:]),
        server_frame(wf.BINARY, MEDIA),  # not text: not counted
        server_frame(wf.TEXT, MEDIA.ljust(300)),  # a 16-bit length
        wf.client_frame(wf.TEXT, MEDIA),  # masked (a server must not, but it is read)
    ]
    for size in (1, 2, 3, 7, 64, 10_000):
        proto, t, response = _connect()
        wire = response + b"".join(wire_frames)
        for at in range(0, len(wire), size):
            proto.data_received(wire[at : at + size])
        assert proto.opened.done() and proto.opened.exception() is None
        assert len(proto.stream.arrivals) == 4, size
        assert proto.stream.failed is None and not t.closing


async def test_ping_is_answered_and_a_server_close_is_echoed_and_counted() -> None:
    proto, t, response = _connect()
    proto.data_received(response + server_frame(wf.PING, b"hb"))
    assert parse_all(bytes(t.out))[0] == [(True, wf.PONG, b"hb")]
    t.out.clear()
    proto.data_received(server_frame(wf.CLOSE, struct.pack("!H", 1008) + b"full"))
    assert parse_all(bytes(t.out))[0] == [(True, wf.CLOSE, struct.pack("!H", 1008))]
    assert t.closing
    proto.connection_lost(None)
    assert proto.stream.failed == "closed by the server (1008)"
    assert proto.lost.done()


async def test_a_close_after_stop_is_not_a_failure() -> None:
    proto, t, response = _connect()
    proto.data_received(response)
    proto.stopped = True
    proto.close()
    proto.data_received(server_frame(wf.CLOSE, struct.pack("!H", 1000)))
    assert [f[1] for f in parse_all(bytes(t.out))[0]] == [wf.CLOSE]  # one close, not two
    proto.connection_lost(None)
    assert proto.stream.failed is None


async def test_a_refused_upgrade_fails_the_stream() -> None:
    proto, t, _ = _connect()
    proto.data_received(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    assert t.aborted and proto.stream.failed is not None
    assert proto.stream.failed.startswith("connect:")
    proto.connection_lost(None)
    with pytest.raises(ConnectionError):
        proto.opened.result()


def test_server_cpu_counts_the_whole_process_tree() -> None:
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
            "print(c.pid, flush=True); time.sleep(30)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        tree = bench._tree_cpu(parent.pid)
        assert {parent.pid, child} <= set(tree)
        assert os.getpid() not in tree
        assert bench._cpu_used({parent.pid: 0.0}, {parent.pid: 1.5, child: 0.5}) == 2.0
    finally:
        parent.kill()
        parent.wait(timeout=10)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_tiny_run_reports_every_stream(processes: int, capsys: pytest.CaptureFixture[str],
                                          ) -> None:
    assert bench.main(["--streams", "3", "--seconds", "3", "--json",
                       "--client-processes", str(processes)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["streams"] == 3 and r["client_processes"] == processes and r["workers"] is None
    assert r["frames_expected"] == 3 * (150 - 25)
    assert r["frames_received"] > 0  # the pacer sends while the stream is open, not per frame in
    for key in ("jitter_ms_p50", "jitter_ms_p99", "jitter_ms_max", "server_cpu_pct",
                "client_cpu_pct", "server_cpu_machine_pct", "client_cpu_machine_pct",
                "client_us_per_stream_tick", "dropped"):
        assert key in r
    assert r["server_cpu_pct"] > 0 and r["client_cpu_pct"] > 0


def test_repeated_runs_are_summarised() -> None:
    def run(dropped: int, p99: float, cpu: float) -> dict[str, object]:
        return {"streams": 200, "dropped": dropped, "jitter_ms_p99": p99, "server_cpu_pct": cpu}

    s = bench.summarise_runs([run(0, 6.4, 120.0), run(0, 17.8, 131.0), run(2, 9.0, 118.0)])
    assert s == {"streams": 200, "runs": 3, "held_runs": 1, "dropped_max": 2,
                 "jitter_ms_p99_median": 9.0, "jitter_ms_p99_range": [6.4, 17.8],
                 "server_cpu_pct_median": 120.0, "server_cpu_pct_range": [118.0, 131.0]}
    assert bench.held(run(0, 10.0, 1.0)) and not bench.held(run(0, 10.01, 1.0))


def test_repeat_runs_a_fresh_server_each_time_and_summarises(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--streams", "2", "--seconds", "2", "--json", "--repeat", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line.get("summary", False) for line in lines] == [False, False, True]
    assert lines[2]["runs"] == 2 and lines[2]["streams"] == 2
    with pytest.raises(SystemExit):
        bench.main(["--streams", "2", "--repeat", "11"])


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        receiver = socket.create_connection(listener.getsockname())
        sender, _ = listener.accept()
    sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sender, receiver


def _kernel_stamps_on(pair: tuple[socket.socket, socket.socket]) -> bool:
    """Whether the kernel stamps received packets yet. It turns that on for the whole
    system, some time after the first socket asks (a deferred static-key switch)."""
    sender, receiver = pair
    for _ in range(500):
        sender.send(b"x")
        _, ancillary, _, _ = receiver.recvmsg(16, socket.CMSG_SPACE(16))
        if ancillary:
            return True
        time.sleep(0.01)
    return False


async def test_the_batch_reader_stamps_arrivals_with_the_kernels_time_and_hands_back_eof(
        ) -> None:
    loop = asyncio.get_running_loop()
    keeper = _tcp_pair()  # keeps the kernel stamping during the test
    keeper[1].setsockopt(socket.SOL_SOCKET, client.SO_TIMESTAMPNS, 1)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    sock = socket.socket()
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, client.SO_TIMESTAMPNS, 1)
    await loop.sock_connect(sock, listener.getsockname())
    server, _ = listener.accept()
    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle wait for an ACK
    listener.close()
    _, proto = await loop.create_connection(
        lambda: client.StreamProtocol(client.Stream(7), "127.0.0.1", "/twilio/stream"),
        sock=sock)
    proto.sock = sock
    request = server.recv(4096).decode()
    key = request.split("Sec-WebSocket-Key: ")[1].split("\r\n")[0]
    server.sendall(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Accept: {wf.accept_for(key)}"
                   "\r\n\r\n".encode())
    await asyncio.wait_for(proto.opened, 10)
    assert _kernel_stamps_on(keeper)
    reader = client.BatchReader()
    try:
        reader.add(proto, sock)
        proto.send_text(b'{"event":"connected"}')  # straight to the socket
        assert parse_all(server.recv(4096))[0] == [(True, wf.TEXT, b'{"event":"connected"}')]
        server.sendall(server_frame(wf.TEXT, MEDIA) * 2 + server_frame(wf.TEXT, MEDIA)[:9])
        sent_by = time.time()
        await asyncio.sleep(0.05)  # the event loop does not read it: reading is paused
        assert proto.stream.arrivals == []
        for _ in range(200):  # a sweep reads what is there; loopback may take a moment
            reader.sweep()
            if len(proto.stream.arrivals) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(proto.stream.arrivals) == 2
        assert proto.stream.arrivals[0] <= sent_by  # the kernel's time, not the sweep's
        server.sendall(server_frame(wf.TEXT, MEDIA)[9:])
        server.close()  # the end goes back to the event loop, which closes
        for _ in range(200):
            reader.sweep()
            if proto.lost.done():
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(proto.lost, 10)
        assert len(proto.stream.arrivals) == 3
        assert proto.stream.failed == "closed by the server (None)"
    finally:
        reader.close()
        if proto.transport is not None:
            proto.transport.abort()
        for k in keeper:
            k.close()


def test_histogram_p99_names_the_bucket_or_says_past_the_last() -> None:
    name = "switchboard_pacer_lateness_seconds"

    def exposition(counts: list[int], total: int) -> str:
        bounds = ["0.002", "0.01", "0.1"]
        lines = [f'{name}_bucket{{le="{le}"}} {c}.0' for le, c in zip(bounds, counts, strict=True)]
        return "\n".join([*lines, f'{name}_bucket{{le="+Inf"}} {total}.0',
                          f"{name}_count {total}.0"]) + "\n"

    assert bench.histogram_p99_ms(exposition([990, 1000, 1000], 1000), name) == 2.0
    assert bench.histogram_p99_ms(exposition([900, 995, 1000], 1000), name) == 10.0
    over = bench.histogram_p99_ms(exposition([900, 950, 980], 1000), name)
    assert over == ">100" and json.loads(json.dumps(over)) == ">100"
    assert bench.histogram_p99_ms(exposition([0, 0, 0], 0), name) is None
    assert bench.histogram_p99_ms("", name) is None
