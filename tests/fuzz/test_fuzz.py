"""The fuzz targets in fuzz/: every crash found so far (tests/fuzz/regressions/<target>/)
and every seed replayed in-process, then each target fuzzed briefly under atheris.

Longer runs: `python -m fuzz --seconds 600` (fuzz/README.md).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from fuzz import CORPUS_DIR, REGRESSIONS_DIR, ROOT, target_names
from fuzz.__main__ import run_target

TARGETS = target_names()
BRIEF_SECONDS = 1  # each, plus ~1 s of start-up; whichever of time and runs ends first
BRIEF_RUNS = 20_000


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


REGRESSIONS = [(p.parent.name, p) for p in _files(REGRESSIONS_DIR)]


def _seeds(target: str) -> list[Path]:
    """fuzz/corpus/<target>/ and the target's MORE_SEEDS folders."""
    more = importlib.import_module(f"fuzz.{target}").__dict__.get("MORE_SEEDS", ())
    return [p for folder in (CORPUS_DIR / target, *(ROOT / m for m in more))
            for p in _files(folder)]


def test_every_target_has_seeds_and_regressions_name_a_target() -> None:
    assert len(TARGETS) >= 13
    assert [t for t in TARGETS if not _seeds(t)] == []
    assert {target for target, _ in REGRESSIONS} <= set(TARGETS)


@pytest.mark.parametrize(("target", "path"), REGRESSIONS,
                         ids=[f"{t}/{p.name}" for t, p in REGRESSIONS])
def test_regression_input_is_handled(target: str, path: Path) -> None:
    importlib.import_module(f"fuzz.{target}").test_one_input(path.read_bytes())


@pytest.mark.parametrize("target", TARGETS)
def test_seeds_are_handled(target: str) -> None:
    module = importlib.import_module(f"fuzz.{target}")
    for path in _seeds(target):
        module.test_one_input(path.read_bytes())


@pytest.mark.parametrize("target", TARGETS)
def test_brief_fuzzing_finds_nothing(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    result = run_target(target, seconds=BRIEF_SECONDS, runs=BRIEF_RUNS, artifacts=tmp_path)
    log = result.log.read_text("utf-8", "replace")
    assert result.ok, f"{result.new_artifacts}\n{log[-4000:]}"
    assert result.executions > 0, log[-2000:]


def test_a_crash_is_reported_with_its_input(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    result = run_target("_selftest", seconds=BRIEF_SECONDS, runs=BRIEF_RUNS, artifacts=tmp_path)
    assert not result.ok and result.returncode != 0
    assert [p.name[:6] for p in result.new_artifacts] == ["crash-"]
    assert "RuntimeError: selftest crash" in result.log.read_text("utf-8", "replace")
