"""A throwaway PostgreSQL 15 server for the tests: its own cluster in a temp dir, on a free
loopback port, trust authentication, stopped and deleted at the end of the session.

PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres`
system user (runuser). The fixtures skip, saying why, only when the binaries (Debian's
postgresql-15) are missing.

    postgres_server  (session)  -> PostgresServer
    postgres_dsn     (per test) -> the DSN of a fresh, empty database on it
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port

PG_BIN = Path(os.environ.get("SWITCHBOARD_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
# The password is ignored (trust), but every DSN carries one so tests can check that it
# never shows in a log, an error or /readyz.
PASSWORD = "pg-s3cret-pw"


class PostgresServer:
    def __init__(self, root: Path, port: int, as_user: list[str]) -> None:
        self.root, self.port, self._as_user = root, port, as_user
        self.data = root / "data"
        self._names = itertools.count(1)

    def _run(self, *cmd: str, timeout: float = 120) -> None:
        out = subprocess.run([*self._as_user, *cmd], capture_output=True, text=True,
                             timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({out.returncode}):\n{out.stdout}{out.stderr}")

    def start(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
                   " -c max_connections=60 -c shared_buffers=16MB")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                  "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                  "-t", "30", "stop", timeout=60)

    def log(self) -> str:
        path = self.root / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def new_database(self) -> str:
        """A fresh empty database's DSN (created from template0: nothing inherited)."""
        name = f"records_{os.getpid()}_{next(self._names)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.dsn(name)


def _as_postgres_user(root: Path) -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
    if shutil.which("runuser") is None:
        pytest.skip("running as root and runuser (util-linux) is missing")
    os.chown(root, pw.pw_uid, pw.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    missing = [b for b in ("initdb", "pg_ctl", "postgres") if not (PG_BIN / b).exists()]
    if missing:
        pytest.skip(f"PostgreSQL server binaries not installed ({', '.join(missing)} not in "
                    f"{PG_BIN}; Debian: postgresql-15)")
    pytest.importorskip("psycopg", reason="psycopg (the postgresql backend's driver) missing")
    root = Path(tempfile.mkdtemp(prefix="switchboard-pg-"))
    root.chmod(0o755)
    server = PostgresServer(root, free_port(), _as_postgres_user(root))
    try:
        server.start()
    except BaseException:
        print(server.log())
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    return postgres_server.new_database()
