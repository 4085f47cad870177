"""`python -m fuzz [--seconds N] [--runs N] [--artifacts DIR] [target ...]`

Runs each target (all by default) under atheris, one subprocess after another, and
exits 1 if any of them crashed. Per target, artifacts/fuzz/<target>/ receives the
crashing inputs (crash-*, timeout-*, oom-*), fuzz.log (libFuzzer's output) and corpus/
(inputs libFuzzer found interesting; the committed seeds in fuzz/corpus/ stay as they
are). Rerun one crash with `python -m fuzz._child TARGET artifacts/fuzz/TARGET/crash-...`.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fuzz import CORPUS_DIR, ROOT, target_names

DEFAULT_SECONDS = 10
_GRACE_SECONDS = 120  # start-up and a final slow input, beyond -max_total_time
_NO_TIME_LIMIT = 3600  # the wall-clock bound of a --runs-only target
_ARTIFACT_KINDS = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")
_EXECUTED = re.compile(rb"stat::number_of_executed_units:\s*(\d+)")


@dataclass(frozen=True)
class Result:
    target: str
    returncode: int
    executions: int
    seconds: float
    new_artifacts: tuple[Path, ...]
    log: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.new_artifacts


def _artifacts_in(folder: Path) -> set[Path]:
    return {p for p in folder.iterdir() if p.name.startswith(_ARTIFACT_KINDS)}


def run_target(target: str, *, seconds: int | None, runs: int | None, artifacts: Path) -> Result:
    """Fuzz one target in a child process; bounded by `seconds` and/or `runs`."""
    out = artifacts / target
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    before = _artifacts_in(out)
    flags = [f"-artifact_prefix={out}/", "-print_final_stats=1", "-timeout=10"]
    if seconds is not None:
        flags.append(f"-max_total_time={seconds}")
    if runs is not None:
        flags.append(f"-runs={runs}")
    # libFuzzer adds new inputs to the first folder; _child adds the target's MORE_SEEDS.
    seeds = [str(p) for p in (corpus, CORPUS_DIR / target) if p.is_dir()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    log = out / "fuzz.log"
    start = time.monotonic()
    limit = (seconds if seconds is not None else _NO_TIME_LIMIT) + _GRACE_SECONDS
    with log.open("wb") as sink:
        try:
            returncode = subprocess.run(
                [sys.executable, "-m", "fuzz._child", target, *flags, *seeds],
                cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=limit,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            returncode = -9
    text = log.read_bytes()
    found = _EXECUTED.findall(text)
    return Result(target, returncode, int(found[-1]) if found else 0,
                  time.monotonic() - start, tuple(sorted(_artifacts_in(out) - before)), log)


def _report(result: Result) -> None:
    status = "ok" if result.ok else f"FAILED (exit {result.returncode})"
    print(f"{result.target}: {result.executions} executions in {result.seconds:.1f} s, {status}",
          flush=True)
    for path in result.new_artifacts:
        print(f"  input: {path}", flush=True)
    if not result.ok:
        tail = result.log.read_bytes()[-3000:].decode("utf-8", "replace")
        print("  " + tail.replace("\n", "\n  "), flush=True)


def main(argv: list[str] | None = None) -> int:
    known = target_names()
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n")[2])
    parser.add_argument("targets", nargs="*", metavar="target", help=f"of {', '.join(known)}")
    parser.add_argument("--seconds", type=int, help=f"per target (default {DEFAULT_SECONDS} "
                        "unless --runs is given)")
    parser.add_argument("--runs", type=int, help="inputs per target")
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts" / "fuzz")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.targets) - set(known))
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {known}")
    seconds = DEFAULT_SECONDS if args.seconds is None and args.runs is None else args.seconds
    results = []
    for target in args.targets or known:
        results.append(run_target(target, seconds=seconds, runs=args.runs,
                                  artifacts=args.artifacts.resolve()))
        _report(results[-1])
    failed = [r.target for r in results if not r.ok]
    total = sum(r.executions for r in results)
    print(f"{len(results)} targets, {total} executions, "
          f"{'crashes in ' + ', '.join(failed) if failed else 'no crashes'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
