"""HTTP benchmark of the server in distributed mode (API + procrastinate workers on PostgreSQL).

Prints:
- start-to-completion p50/p95 of an 8-step journey (POST /runs/wait) at 20 concurrent clients;
- completed journeys/s with one worker and with two, and their ratio;
- worker RSS with N journeys parked at user tasks (10,000; 100 with --quick).

    python benchmarks/server.py [--quick] [--database-url postgresql://…]

Without --database-url (or $DATABASE_URL) a throwaway PostgreSQL is started with pgserver.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents import AgentRegistry, EchoAgent  # noqa: E402
from server.app import create_app  # noqa: E402
from server.queue import ensure_schema  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.server_support import serving  # noqa: E402

EIGHT_STEPS = {
    "journey_type": "bench8",
    "steps": [{"step_id": f"s{i}", "mode": "auto", "agent": "bench_step"} for i in range(8)],
}
PARKED = {"journey_type": "parked", "steps": [{"step_id": "approve"}, {"step_id": "done", "mode": "auto"}]}


def register(registry: AgentRegistry) -> None:
    registry.register("bench_step", EchoAgent("bench_step", {"ok": True}), replace=True)


def start_worker(url: str, concurrency: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-c",
        "from server.cli import app; app()",
        "worker",
        "--database-url",
        url,
        "--concurrency",
        str(concurrency),
        "--plugin",
        "benchmarks.server:register",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(timeout=30)


def pending(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM server_runs WHERE status IN ('pending', 'running')").fetchone()
    return int(row[0]) if row else 0


async def latency(client: httpx.AsyncClient, journeys: int, concurrency: int) -> list[float]:
    gate = asyncio.Semaphore(concurrency)
    times: list[float] = []

    async def one(i: int) -> None:
        async with gate:
            began = time.perf_counter()
            response = await client.post(
                "/runs/wait",
                json={
                    "assistant_id": "structured",
                    "input": {"journey_type": "bench8", "spec": EIGHT_STEPS, "user_id": f"lat{i}"},
                },
            )
            assert response.json().get("status") == "completed", response.text
            times.append(time.perf_counter() - began)

    await asyncio.gather(*(one(i) for i in range(journeys)))
    return times


async def throughput(client: httpx.AsyncClient, url: str, journeys: int, tag: str) -> float:
    began = time.perf_counter()
    for chunk in range(0, journeys, 50):
        await asyncio.gather(
            *(
                client.post(
                    "/runs",
                    json={
                        "assistant_id": "structured",
                        "input": {"journey_type": "bench8", "spec": EIGHT_STEPS, "user_id": f"{tag}{i}"},
                    },
                )
                for i in range(chunk, min(chunk + 50, journeys))
            )
        )
    while await asyncio.to_thread(pending, url):  # noqa: ASYNC110 - another process's rows: polled
        await asyncio.sleep(0.1)
    return journeys / (time.perf_counter() - began)


async def park(client: httpx.AsyncClient, url: str, journeys: int) -> None:
    for chunk in range(0, journeys, 100):
        await asyncio.gather(
            *(
                client.post(
                    "/runs",
                    json={
                        "assistant_id": "structured",
                        "input": {"journey_type": "parked", "spec": PARKED, "user_id": f"p{i}"},
                    },
                )
                for i in range(chunk, min(chunk + 100, journeys))
            )
        )
    while await asyncio.to_thread(pending, url):  # noqa: ASYNC110 - another process's rows: polled
        await asyncio.sleep(0.2)


async def bench(url: str, quick: bool) -> dict[str, Any]:
    ensure_schema(url)
    registry = AgentRegistry()
    register(registry)
    app = create_app(
        Settings(database_url=url, auth=False, execution="distributed"), runtime_options={"agents": registry}
    )
    results: dict[str, Any] = {}
    with serving(app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=300) as client:
            workers = [start_worker(url, 8)]
            try:
                await latency(client, 5, 5)  # warm-up: imports, compiled graphs, pools
                times = sorted(await latency(client, 20 if quick else 200, 20))
                results["p50_ms"] = 1000 * statistics.median(times)
                results["p95_ms"] = 1000 * times[int(0.95 * (len(times) - 1))]
                n = 30 if quick else 400
                results["one_worker_per_s"] = await throughput(client, url, n, "one")
                workers.append(start_worker(url, 8))
                await latency(client, 4, 4)
                results["two_workers_per_s"] = await throughput(client, url, n, "two")
                results["ratio"] = results["two_workers_per_s"] / results["one_worker_per_s"]
                stop(workers[1:])
                workers = workers[:1]
                parked = 100 if quick else 10_000
                await park(client, url, parked)
                results["parked"] = parked
                results["worker_rss_mb"] = psutil.Process(workers[0].pid).memory_info().rss / 2**20
            finally:
                stop(workers)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few journeys")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    args = parser.parse_args()
    url, server = args.database_url, None
    if url is None:
        from pgserver import get_server

        server = get_server(Path(tempfile.mkdtemp(prefix="journeys-bench-")), cleanup_mode="delete")
        url = server.get_uri()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS journeys_bench WITH (FORCE)")
            conn.execute("CREATE DATABASE journeys_bench")
        url = url.rsplit("/", 1)[0] + "/journeys_bench" if "?" not in url else url
    try:
        results = asyncio.run(bench(url, args.quick))
    finally:
        if server is not None:
            server.cleanup()
    print(
        f"8-step journey, HTTP start to completion at 20 clients: p50 {results['p50_ms']:.0f} ms, "
        f"p95 {results['p95_ms']:.0f} ms"
    )
    print(
        f"completed journeys/s: one worker {results['one_worker_per_s']:.1f}, two workers "
        f"{results['two_workers_per_s']:.1f} (ratio {results['ratio']:.2f})"
    )
    print(f"worker RSS with {results['parked']} journeys parked at user tasks: {results['worker_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
