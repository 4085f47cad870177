"""Call-record tests run against both backends: `records_config` is SQLite in tmp_path, then
a fresh database on a real, throwaway PostgreSQL server (tests/postgres.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard.config import RecordsConfig
from tests.postgres import postgres_dsn, postgres_server  # noqa: F401 (fixtures)

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
def records_config(request: pytest.FixtureRequest, tmp_path: Path) -> RecordsConfig:
    if request.param == "sqlite":
        return RecordsConfig(path=str(tmp_path / "calls.db"))
    return RecordsConfig(backend="postgresql", dsn=request.getfixturevalue("postgres_dsn"))
