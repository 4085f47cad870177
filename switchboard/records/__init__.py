"""Call records: every call, on any door, leaves a row with its transcript and timings.

    recorder = Recorder(config.records, agent="echo", metrics=metrics, clock=clock)
    handler = recorder.wrap(info, agent_handler)   # in the app's handler factory
    await recorder.start() ... await recorder.stop()
    await recorder.get_call(call_id); await recorder.list_calls(CallQuery(...))

store.py says what a store does; sqlite.py is the default one (a file, WAL), postgres.py
the one for shared deployments (records.backend: postgresql, psycopg); writer.py is
the thread that writes; recorder.py follows calls on the event loop; api.py and cli.py
serve the records over HTTP (GET /calls) and in a terminal (`switchboard calls`).
"""

from __future__ import annotations

from switchboard.config import ConfigError, RecordsConfig
from switchboard.records.store import CallQuery, RecordStore, RecordStoreError

__all__ = ["CallQuery", "RecordStore", "RecordStoreError", "check_backend", "describe",
           "open_store"]


def check_backend(config: RecordsConfig) -> None:
    """ConfigError when the configured backend cannot run in this installation."""
    if config.backend == "postgresql":
        try:
            from switchboard.records.postgres import check_dsn
        except ImportError:
            raise ConfigError(
                "records.backend: the postgresql backend needs the psycopg package, which is "
                "not installed (pip install 'psycopg[binary]'), or use backend: sqlite"
            ) from None
        try:
            check_dsn(config.dsn)
        except ValueError as e:
            raise ConfigError(f"records.dsn: not a PostgreSQL connection string: {e}") from None


def describe(config: RecordsConfig) -> str:
    """Where the records go, for logs and /readyz: a path, or a DSN without its password."""
    if config.backend == "postgresql":
        from switchboard.records.postgres import describe_dsn

        return describe_dsn(config.dsn)
    return config.path


def open_store(config: RecordsConfig, *, readonly: bool = False,
               busy_timeout: float = 2.0) -> RecordStore:
    """A connection to the configured store, for the calling thread only."""
    check_backend(config)
    if config.backend == "postgresql":
        from switchboard.records.postgres import PostgresStore  # psycopg only when asked

        return PostgresStore(config.dsn, readonly=readonly, busy_timeout=busy_timeout)
    from switchboard.records.sqlite import SqliteStore

    return SqliteStore(config.path, readonly=readonly, busy_timeout=busy_timeout)
