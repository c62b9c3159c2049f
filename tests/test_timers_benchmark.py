"""The timer benchmark runs end to end and prints its report. Its targets (all fired within 10 s, none
early, all continued at 500/s) depend on the machine, so nothing here asserts the timings: only that the run
is complete and judged."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_timer_benchmark_quick_run_fires_and_resumes_every_instance() -> None:
    completed = subprocess.run(
        [sys.executable, "benchmarks/timers.py", "--quick", "--instances", "40", "--backends", "memory,sqlite"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = completed.stdout
    assert completed.returncode == 0, f"stdout:\n{output}\nstderr:\n{completed.stderr}"
    assert "Traceback" not in completed.stderr
    for backend in ("memory", "sqlite"):
        assert f"== {backend}: 40 instances" in output
    assert len(re.findall(r"^fired\s+40\s+all within", output, re.MULTILINE)) == 2
    assert len(re.findall(r"^resumed\s+40\s+all within", output, re.MULTILINE)) == 2
    assert output.count("db: 40 timers fired, 0 fired before due; 40 instances completed") == 2
    assert "lateness p50" in output and "p99" in output
    # The continuation target (10,000 within 20 s, pro rata) is judged and reported, met or missed.
    judged = re.findall(
        r"^TARGET MISSED: (\w+): 40 of 40 instances continued, the last [0-9.]+ s after due", output, re.M
    )
    # Each backend is judged on its own: a run may meet it on one backend and miss it on the other.
    assert set(judged) <= {"memory", "sqlite"} and (judged or "all continued in time" in output), output
