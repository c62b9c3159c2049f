"""One embedded server executes a database's runs: a second `journeys serve` (embedded) on the same SQLite file
or PostgreSQL database is refused in one line, since it would take up, and execute again, every run the first
is executing (each agent call twice); once the first stops, a new one starts in its place. Real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.server_support import ROOT, free_port, journeys_serve

EIGHT_STEPS = {
    "journey_type": "one8",
    "steps": [{"step_id": f"s{i}", "mode": "auto", "agent": "bench_step"} for i in range(8)],
}
PLUGIN = ("--plugin", "benchmarks.server:register")


def completed(base: str, user: str) -> bool:
    answer = httpx.post(
        f"{base}/runs/wait",
        json={"assistant_id": "structured", "input": {"journey_type": "one8", "spec": EIGHT_STEPS, "user_id": user}},
        timeout=60,
    )
    return bool(answer.json()["status"] == "completed")


def test_a_second_embedded_server_on_a_database_is_refused_and_takes_over_once_the_first_stops(
    durable_url: str, tmp_path: Path
) -> None:
    with journeys_serve(durable_url, tmp_path / "first.log", "--no-auth", *PLUGIN) as first:
        assert completed(first, "a")
        serve = [sys.executable, "-c", "from server.cli import app; app()", "serve", "--database-url", durable_url]
        second = subprocess.run(
            [*serve, "--no-auth", "--port", str(free_port()), *PLUGIN],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
        [error] = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert "another journeys serve executes this database's runs in embedded mode" in error, error
        assert "--distributed" in error
        assert completed(first, "b")  # the first serves on
    with journeys_serve(durable_url, tmp_path / "next.log", "--no-auth", *PLUGIN) as following:
        assert completed(following, "c")
