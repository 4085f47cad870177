"""Not a target: a "parser" that fails on every input, so the tests can check that
`python -m fuzz` reports a crash and keeps the input."""

from __future__ import annotations


def test_one_input(data: bytes) -> None:
    raise RuntimeError(f"selftest crash on {len(data)} bytes")
