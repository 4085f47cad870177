"""Faults: the call-record database locked by another process, or its disk full.

A real `switchboard serve` (conversation agent, packaged Whisper and Piper, the fake
Ollama over HTTP for a quick known answer) takes a real call while the database refuses
every write. The call must go on (the caller hears the answer), the failure must be
counted (records_write_errors_total{kind}) and logged, and once the database takes
writes again the record must hold the call and its completed turn: nothing is lost.

"Disk full" is real: the server runs in its own mount namespace (`unshare -rm`, no root
needed) with its database on a 1 MiB tmpfs, and the test fills that tmpfs (through
/proc/PID/root) until the kernel says ENOSPC; deleting the filler frees it again.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.faults.common import ask, metric, ollama_env, record_of, wait_for
from tests.helpers import Server, switchboard
from tests.pipeline.fake_ollama import FakeOllama

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                       reason="espeak-ng and sox make the spoken question"),
]


def env_for(ollama: FakeOllama, db: Path, rtp: int) -> dict[str, str]:
    return {**ollama_env(ollama, rtp), "SWITCHBOARD_RECORDS__PATH": str(db)}


def call_through_the_fault(server: Server, question: Path, kind: str) -> tuple[dict, str]:
    """A call while the database refuses: it goes on, and the refusal is counted."""
    result = ask(server, question)
    assert (result["status"], result["hangup"]) == ("completed", "local"), result
    assert result["reply_latency_s"] is not None, result  # the caller heard the answer
    text = wait_for(f"{kind} counted", lambda: (
        t if metric(t := server.metrics(), "switchboard_records_write_errors_total",
                    kind=kind) >= 1 and metric(t, "switchboard_calls_active") == 0 else None))
    assert metric(text, "switchboard_records_pending") >= 1, text  # kept, not dropped
    assert record_of(server, result["call_id"]) is None  # nothing could be written yet
    assert server.proc.poll() is None
    assert f"call records: cannot write ({kind})" in server.log()
    return result, text


def check_record(server: Server, result: dict) -> None:
    """Once writes work again: the whole call, its turn and its end, nothing lost."""
    call = wait_for("the record after the fault", lambda: record_of(server, result["call_id"]),
                    timeout=40, every=0.25)
    assert (call["agent"], call["outcome"]) == ("conversation", "remote_bye"), call
    assert call["turn_count"] == 1 and len(call["turns"]) == 1, call
    turn = call["turns"][0]
    assert turn["outcome"] == "answered" and turn["answer"] == "We open at nine on Saturday."
    assert turn["transcript"], turn
    assert [e["event"] for e in call["events"]][-1] == "call_end"
    text = server.metrics()
    assert metric(text, "switchboard_records_pending") == 0, text
    assert "call records: writing again after" in server.log()


def test_a_locked_database(tmp_path: Path, ollama: FakeOllama, question: Path) -> None:
    db = tmp_path / "calls.db"
    with switchboard(tmp_path, env=env_for(ollama, db, 44700)) as server:
        other = sqlite3.connect(db, isolation_level=None)  # another process's lock
        other.execute("BEGIN EXCLUSIVE")
        try:
            result, _ = call_through_the_fault(server, question, "locked")
        finally:
            other.execute("ROLLBACK")
            other.close()
        check_record(server, result)


def fill(path: Path) -> int:
    """Write until the filesystem is full (ENOSPC); the bytes written."""
    written = 0
    with path.open("wb", buffering=0) as f:  # unbuffered: nothing left to fail at close
        for _ in range(4096):  # 16 MiB at most: far more than the 1 MiB tmpfs
            try:
                written += f.write(b"\0" * 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                return written
    raise AssertionError(f"{path}: still not full after {written} bytes")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) needed")
def test_a_full_disk(tmp_path: Path, ollama: FakeOllama, question: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs tmpfs {disk}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no user and mount namespaces here: {probe.stderr.strip()}")
    # The server's own mount namespace: its database on a tmpfs of 1 MiB.
    prefix = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"',
              str(disk)]
    with switchboard(tmp_path, env=env_for(ollama, disk / "calls.db", 44800),
                     prefix=prefix) as server:
        seen = Path(f"/proc/{server.proc.pid}/root") / str(disk).lstrip("/")
        assert (seen / "calls.db").exists()  # the server's tmpfs, seen from here
        filler = seen / "filler"
        assert fill(filler) > 0
        try:
            result, _ = call_through_the_fault(server, question, "disk_full")
        finally:
            filler.unlink()  # room again
        check_record(server, result)
