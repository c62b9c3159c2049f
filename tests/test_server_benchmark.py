"""The server benchmark runs (--quick); no performance assertions."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.server import bench

pytestmark = pytest.mark.slow


def test_server_benchmark_quick(postgres_url: str) -> None:
    results = asyncio.run(bench(postgres_url, quick=True))
    assert results["parked"] == 200
    assert results["p50_ms"] > 0 and results["one_worker_per_s"] > 0 and results["two_workers_per_s"] > 0
    assert results["worker_rss_mb"] > 0 and results["worker_rss_small_mb"] > 0
    assert results["embedded_p50_ms"] > 0 and results["embedded_per_s"] > 0
    assert results["cpu_ms_api"] > 0 and results["cpu_ms_worker"] > 0 and results["embedded_cpu_ms_api"] > 0
