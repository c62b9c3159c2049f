"""The overhead benchmark runs end to end and prints its report. Its performance targets are a report,
not a test: they depend on the machine, so nothing here asserts them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_overhead_benchmark_quick_run_prints_the_table() -> None:
    completed = subprocess.run(
        [sys.executable, "benchmarks/overhead.py", "--quick", "--backends", "memory,sqlite"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = completed.stdout
    assert completed.returncode == 0, f"stdout:\n{output}\nstderr:\n{completed.stderr}"
    assert "journeys/s" in output
    assert "ours/raw" in output
    rows = [line.split() for line in output.splitlines() if line.startswith(("memory ", "sqlite "))]
    # One row per backend and concurrency level (--quick runs C=1 and C=4), each with a ratio.
    assert sorted((row[0], row[1]) for row in rows) == [
        ("memory", "1"),
        ("memory", "4"),
        ("sqlite", "1"),
        ("sqlite", "4"),
    ]
    for row in rows:
        float(row[-2])  # the ours/raw column, before the per-round ratios (one round in --quick)
    assert "Traceback" not in completed.stderr
