"""The lifecycle benchmark's quick mode runs end to end on memory and SQLite (no performance assertions)."""

from __future__ import annotations

import pytest

from benchmarks import lifecycle as bench


def test_quick_lifecycle_benchmark_runs_on_memory_and_sqlite(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--backends", "memory,sqlite"]) == 0
    out = capsys.readouterr().out
    assert "promotions/s" in out and "gate p95 ms" in out and "rollbacks/s" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("memory ", "sqlite "))]
    assert [row[0] for row in rows if len(row) == 8] == ["memory", "sqlite"]
    assert "FAILED" not in out and "all targets met" in out
    assert "active journeys by stage at the end: {'sandbox': 1, 'pilot': 0, 'production': 7, 'rollback': 0}" in out
