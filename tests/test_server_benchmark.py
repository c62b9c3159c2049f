"""The server benchmark runs (--quick); no performance assertions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from benchmarks import job_queue
from benchmarks.server import Sampler, backends_cpu, backends_spent, bench, each_worker, fold_workers, missed_targets

pytestmark = pytest.mark.slow


def test_server_benchmark_quick(postgres_url: str) -> None:
    results = asyncio.run(bench(postgres_url, quick=True))
    assert results["parked"] == 200
    assert results["p50_ms"] > 0 and results["one_worker_per_s"] > 0 and results["two_workers_per_s"] > 0
    assert results["worker_rss_mb"] > 0 and results["worker_rss_small_mb"] > 0
    assert results["embedded_p50_ms"] > 0 and results["embedded_per_s"] > 0
    assert results["cpu_ms_api"] > 0 and results["cpu_ms_worker"] > 0 and results["embedded_cpu_ms_api"] > 0
    # The load generator's own CPU (it shares the cores) is reported apart, outside the total.
    assert results["cpu_ms_client"] > 0 and results["embedded_cpu_ms_client"] > 0
    # The local throwaway PostgreSQL's CPU is measured too, and summed with the processes'.
    assert results["cpu_ms_postgres"] > 0
    assert results["cpu_ms_total"] == pytest.approx(
        results["cpu_ms_api"] + results["cpu_ms_worker"] + results["cpu_ms_postgres"]
    )
    # Of PostgreSQL's, what the backends of the API's connections and of the worker's spent: the statements each
    # side sends (CPU time has 10 ms ticks: neither alone is sure to have one in a quick run, their sum is).
    api, worker = results["cpu_ms_postgres_api"], results["cpu_ms_postgres_worker"]
    assert api >= 0 and worker >= 0 and api + worker > 0
    step = results["per_step"]
    assert step["transactions"] > 0 and step["rows_written"] > 0 and step["wal_bytes"] > 0
    assert results["connections"]["api"] > 0 and results["connections"]["worker"] > 0
    judged = missed_targets(results)  # the p95 target is judged on these results, met or missed
    assert judged == [] if results["p95_ms"] < 150 else judged[0].startswith("TARGET MISSED: p95 at 20 clients")


def test_queue_benchmark_quick(postgres_url: str) -> None:
    results = asyncio.run(job_queue.bench(postgres_url, clients=4, seconds=0.5))
    forms = {
        f"{form} trigger {state} x{n}" for form in ("api", "sql", "batch") for state in ("on", "off") for n in (1, 4)
    }
    assert set(results) == forms
    assert all(r["jobs_per_s"] > 0 for r in results.values())
    assert sum(r["client_cpu_ms"] for r in results.values()) > 0  # CPU time has 10 ms ticks: not per line


def test_the_profile_shares_leave_the_idle_event_loop_out(tmp_path: Path) -> None:
    """``--profile``: py-spy's folded stacks summed by innermost frame, as shares of the non-idle samples."""
    sampler = Sampler({}, tmp_path)
    sampler.files["api"] = tmp_path / "api.folded"
    sampler.files["api"].write_text(
        "main (a.py:1);Runner.run (asyncio/runners.py:118) 50\n"  # the loop waiting for I/O
        "main (a.py:1);handle (b.py:2);send (c.py:3) 30\n"
        "main (a.py:1);other (d.py:4);send (c.py:3) 30\n"
        "main (a.py:1);handle (b.py:2) 40\n"
    )
    assert sampler.top("api", 5) == [(60.0, "send (c.py:3)"), (40.0, "handle (b.py:2)")]
    assert Sampler({}, tmp_path).top("worker", 5) == []  # no file: py-spy never wrote one


def test_several_workers_cpu_is_their_sum_with_each_shown() -> None:
    """``--workers 2``: the worker figure (and so the total) is the two processes' sum; each is kept."""
    results = {"workers": 2, "cpu_ms_worker": 4.0, "cpu_ms_worker2": 5.5}
    fold_workers(results, 2)
    assert results == {"workers": 2, "cpu_ms_worker": 9.5, "cpu_ms_worker1": 4.0, "cpu_ms_worker2": 5.5}
    assert each_worker(results) == " (4.0 + 5.5)"
    alone = {"workers": 1, "cpu_ms_worker": 4.0}
    fold_workers(alone, 1)
    assert alone == {"workers": 1, "cpu_ms_worker": 4.0} and each_worker(alone) == ""


@pytest.mark.fresh_database
def test_postgresql_cpu_is_split_by_the_side_whose_connections_sent_the_statements(postgres_url: str) -> None:
    """The benchmark's PostgreSQL CPU of the API's connections and of the workers' (by application_name, as
    ``journeys`` names them), read from their backends: a statement a worker's connection sends counts there."""
    api = psycopg.connect(postgres_url, autocommit=True, application_name="bench-api")
    worker = psycopg.connect(postgres_url, autocommit=True, application_name="bench-worker")
    other = psycopg.connect(postgres_url, autocommit=True, application_name="someone-else")
    try:
        before = backends_cpu(postgres_url)
        assert sorted(side for side, _seconds in before.values()) == ["api", "worker"]
        worker.execute("SELECT count(*) FROM generate_series(1, 3000000)")  # ~0.3 s of the backend's CPU
        other.execute("SELECT count(*) FROM generate_series(1, 3000000)")  # neither side's
        spent = backends_spent(before, backends_cpu(postgres_url))
    finally:
        for conn in (api, worker, other):
            conn.close()
    assert spent["worker"] >= 0.05 and spent["api"] < spent["worker"] / 2
    # A backend that started after the first reading counts whole, on its side.
    assert backends_spent({}, {7: ("api", 0.25), 8: ("worker", 0.5)}) == {"api": 0.25, "worker": 0.5}
