"""The overhead benchmark runs end to end and prints its report. Its performance targets are a report,
not a test: they depend on the machine, so nothing here asserts them."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_overhead_benchmark_quick_run_prints_the_table() -> None:
    output = run_benchmark("overhead.py", "--quick", "--backends", "memory,sqlite")
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


def run_benchmark(script: str, *args: str) -> str:
    """What ``benchmarks/<script>`` printed, once it ran to the end without a traceback."""
    completed = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    assert "Traceback" not in completed.stderr
    return completed.stdout


def dbos_installed() -> bool:
    return importlib.util.find_spec("dbos") is not None


@pytest.mark.slow
def test_peers_benchmark_quick_run_prints_every_form_with_ratios(postgres_server_url: str) -> None:
    output = run_benchmark("peers.py", "--quick", "--database-url", postgres_server_url)
    forms = ["ours", "raw", "dbos"] if dbos_installed() else ["ours", "raw"]
    if not dbos_installed():
        assert "the DBOS form was left out" in output
    # One row per in-flight level (--quick runs C=1 and C=4) and form: journeys/s and the two CPU figures.
    rows = [line.split() for line in output.splitlines() if re.match(r"^\s+[14]\s+(ours|raw|dbos)\s", line)]
    assert sorted((row[0], row[1]) for row in rows) == sorted((c, f) for c in ("1", "4") for f in forms)
    for row in rows:
        assert float(row[2]) > 0  # journeys/s
        assert float(row[3]) > 0  # client CPU ms per journey
    # Bytes per completed journey, and the ratios of ours to each peer.
    for form in forms:
        bytes_line = re.search(rf"^\s+{form}\s+(\d+)\s+over (\d+)", output, re.MULTILINE)
        assert bytes_line is not None, output
        assert int(bytes_line.group(1)) > 0
    for peer in forms[1:]:
        assert re.search(rf"ours/{peer}\s+C=1\s+\d+\.\d\d", output), output
        assert re.search(rf"ours/{peer}\s+bytes per journey \d+\.\d\d", output), output
