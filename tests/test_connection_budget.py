"""Bounded connections: API and worker processes on one PostgreSQL server started with max_connections=100
each stay within the budget the README documents, and together fit and serve."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from server.queues.procrastinate import ensure_schema
from tests.conftest import with_database
from tests.forked import JourneysProcess, journeys
from tests.server_support import free_port, start_worker, stop_worker, wait_until_serving

POOL_SIZE = 10  # `journeys serve`: JourneyRuntime.open's default pool size
WORKER_CONCURRENCY = 8  # `journeys worker`'s default: its pool size is max(4, concurrency)
APIS, WORKERS, RUNS_PER_API = 2, 2, 12


def budget(pool_size: int) -> int:
    """The README's bound for one process: the shared psycopg pool, SQLAlchemy's pool, the instance locks'
    connection and one listening connection (an API's LISTEN, or a worker's procrastinate listener)."""
    return 2 * pool_size + 2


@pytest.fixture(scope="module")
def capped_postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server of its own, restarted with max_connections=100."""
    from pgserver._commands import pg_ctl
    from pgserver.postgres_server import get_server

    scratch = Path(tempfile.mkdtemp(prefix="journeys-cap-"))
    server = get_server(scratch / "data", cleanup_mode="delete")
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET max_connections = 100")
        pg_ctl(["-w", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=30)
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            assert conn.execute("SHOW max_connections").fetchone() == ("100",)
            conn.execute("CREATE DATABASE budget")
        yield with_database(server.get_uri(), "budget")
    finally:
        server.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)


def start_api(url: str, port: int, log: Path) -> JourneysProcess:
    return journeys(["serve", "--database-url", url, "--port", str(port), "--no-auth", "--distributed"], output=log)


def connections(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert found is not None
    return int(found[0])


async def test_api_and_worker_processes_fit_in_a_hundred_connections(capped_postgres: str, tmp_path: Path) -> None:
    url = capped_postgres
    ensure_schema(url)
    ports = [free_port() for _ in range(APIS)]
    logs = [tmp_path / f"api-{n}.log" for n in range(APIS)]
    apis = [start_api(url, port, log) for port, log in zip(ports, logs, strict=True)]
    workers = [start_worker(url, "--concurrency", str(WORKER_CONCURRENCY)) for _ in range(WORKERS)]
    peak = 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not sampling.is_set():
            peak = max(peak, connections(url))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        for api, port, log in zip(apis, ports, logs, strict=True):
            wait_until_serving(api, port, log)
        sampler.start()

        async def run(client: httpx.AsyncClient, n: int) -> int:
            body = {"assistant_id": "structured", "input": {"journey_type": "content_migration", "user_id": f"u{n}"}}
            response = await client.post("/runs/wait", json=body)
            assert response.status_code == 200, response.text
            return n

        clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) for port in ports]
        try:
            done = await asyncio.gather(
                *(run(client, n * APIS + i) for n in range(RUNS_PER_API) for i, client in enumerate(clients))
            )
        finally:
            for client in clients:
                await client.aclose()
        assert sorted(done) == list(range(APIS * RUNS_PER_API))
    finally:
        sampling.set()
        if sampler.is_alive():
            sampler.join()
        for worker in workers:
            stop_worker(worker)
        for api in apis:
            api.terminate()
            api.wait(timeout=15)
    with psycopg.connect(url) as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM server_runs GROUP BY status").fetchall())
    assert statuses == {"success": APIS * RUNS_PER_API}
    bound = APIS * budget(POOL_SIZE) + WORKERS * budget(max(4, WORKER_CONCURRENCY))
    assert bound <= 97  # max_connections less PostgreSQL's 3 reserved for superusers
    assert 0 < peak <= bound, f"{peak} connections at the peak, over the documented {bound}"
