"""HTTP benchmark of the server in distributed mode (API + procrastinate workers on PostgreSQL).

Prints, in distributed mode (API + procrastinate workers on PostgreSQL):
- start-to-completion p50/p95 of an 8-step journey (POST /runs/wait) at 20 concurrent clients, and at one;
- CPU per journey at 20 clients in the API process, the worker and PostgreSQL (the postmaster and all its
  backends, exited ones included), and their total: what decides journeys/s per core; and, apart, this
  process's own (the HTTP client generating the load, on the same machine); of PostgreSQL's, what the backends
  of the API's connections and of the workers' spent (the statements each side sends);
- what one journey step costs the database at 20 clients: transactions, rows written, WAL bytes, table
  bytes, and the connections the API and the worker hold (figures for docs/scaling.md);
- completed journeys/s with one worker and with two, and their ratio;
- worker RSS with 100 journeys parked at user tasks, and with 10,000 (50 and 200 with --quick);
and the same latency and throughput in embedded mode (runs execute in the API process; no workers).

The API is a `journeys serve` process and the workers `journeys worker` processes, as deployed; this
process is only the HTTP client.

At 20 clients that each start the next journey as soon as one completes, latency is bound by throughput:
p50 is about 20 / (journeys/s). The one-client figure is the latency of the path itself.

    python benchmarks/server.py [--quick] [--latency-only] [--database-url postgresql://…]

Target (issue 15): p95 under 150 ms at 20 clients, distributed; a miss prints ``TARGET MISSED`` (the exit
code is 0 whatever the figures: this is a report).

``--latency-only`` measures only the distributed latency, CPU and database figures (a minute, not ten).
``--workers N`` measures that latency with N ``journeys worker`` processes (concurrency 8 each) instead of one:
what a deployer gains from a second process on a machine with cores to spare (the worker's figure is then
their sum). The throughput phase compares one worker with two whatever this is.
``--profile N`` samples the API and the worker with py-spy (``pip install py-spy``; left out with a note when
it is missing) during the 20-client phase and prints each one's top N entries by own time. Samples are of
time a thread was not idle: a thread preempted right after waking PostgreSQL (a send) counts there too.

Without --database-url (or $DATABASE_URL) a throwaway PostgreSQL is started with pgserver.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeAlias

import aiohttp
import httpx
import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents import AgentRegistry, EchoAgent  # noqa: E402
from server.queues.procrastinate import ensure_schema  # noqa: E402
from tests.server_support import free_port  # noqa: E402

EIGHT_STEPS = {
    "journey_type": "bench8",
    "steps": [{"step_id": f"s{i}", "mode": "auto", "agent": "bench_step"} for i in range(8)],
}
PARKED = {"journey_type": "parked", "steps": [{"step_id": "approve"}, {"step_id": "done", "mode": "auto"}]}


# The load generator: aiohttp's client, since it shares the machine's cores with what it measures (1.5 ms of CPU
# per request with httpx's, 0.3 ms with aiohttp's).
Client: TypeAlias = aiohttp.ClientSession


def load_client(base: str) -> aiohttp.ClientSession:
    """The HTTP client the load is sent with, on ``base``; no pool limit (20 clients, 20 connections)."""
    return aiohttp.ClientSession(
        base_url=base, timeout=aiohttp.ClientTimeout(total=300), connector=aiohttp.TCPConnector(limit=0)
    )


def register(registry: AgentRegistry) -> None:
    registry.register("bench_step", EchoAgent("bench_step", {"ok": True}), replace=True)


def journeys(*args: str, name: str = "journeys") -> subprocess.Popen[bytes]:
    """A ``journeys`` command in its own process, with this benchmark's agents; its database connections
    carry ``name`` as their application_name (libpq's PGAPPNAME), so they can be counted."""
    command = [
        sys.executable,
        "-c",
        "from server.cli import app; app()",
        *args,
        "--plugin",
        "benchmarks.server:register",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PGAPPNAME": name}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_worker(url: str, concurrency: int) -> subprocess.Popen[bytes]:
    return journeys("worker", "--database-url", url, "--concurrency", str(concurrency), name="bench-worker")


@contextlib.contextmanager
def serving(url: str, *, distributed: bool) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``journeys serve`` on a free loopback port, auth off; yields its base URL (and the process) once it
    answers."""
    port = free_port()
    mode = ["--distributed"] if distributed else []
    api = journeys("serve", "--database-url", url, "--no-auth", "--port", str(port), *mode, name="bench-api")
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/ok", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if api.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("journeys serve did not start")
            time.sleep(0.1)
        yield base, api
    finally:
        stop([api])


def stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(timeout=30)


def wait_for_workers(url: str, count: int) -> None:
    """Until ``count`` workers have registered with procrastinate (imports done, listening for jobs)."""
    deadline = time.monotonic() + 120
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
            if row and row[0] >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} workers did not start")
            time.sleep(0.1)


class Pending:
    """Counts the runs still to finish, on one connection (a new one per poll costs the server a fork)."""

    def __init__(self, url: str) -> None:
        self._conn = psycopg.connect(url, autocommit=True)

    def __call__(self) -> int:
        row = self._conn.execute("SELECT count(*) FROM server_runs WHERE status IN ('pending', 'running')").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._conn.close()


async def latency(client: Client, journeys: int, concurrency: int) -> list[float]:
    gate = asyncio.Semaphore(concurrency)
    times: list[float] = []

    async def one(i: int) -> None:
        async with gate:
            began = time.perf_counter()
            body = {
                "assistant_id": "structured",
                "input": {"journey_type": "bench8", "spec": EIGHT_STEPS, "user_id": f"lat{i}"},
                "on_completion": "keep",  # as measured before stateless runs deleted their threads
            }
            async with client.post("/runs/wait", json=body) as response:
                answer = await response.json()
            assert answer.get("status") == "completed", answer
            times.append(time.perf_counter() - began)

    await asyncio.gather(*(one(i) for i in range(journeys)))
    return times


async def queue_run(client: Client, journey: dict[str, Any]) -> None:
    """POST /runs (a background run) and check it was taken."""
    body = {"assistant_id": "structured", "input": journey, "on_completion": "keep"}  # kept, as measured before
    async with client.post("/runs", json=body) as response:
        assert response.status == 200, await response.text()


async def throughput(client: Client, pending: Pending, journeys: int, tag: str) -> float:
    began = time.perf_counter()
    for chunk in range(0, journeys, 50):
        await asyncio.gather(
            *(
                queue_run(client, {"journey_type": "bench8", "spec": EIGHT_STEPS, "user_id": f"{tag}{i}"})
                for i in range(chunk, min(chunk + 50, journeys))
            )
        )
    while await asyncio.to_thread(pending):  # noqa: ASYNC110 - another process's rows: polled
        await asyncio.sleep(0.1)
    return journeys / (time.perf_counter() - began)


async def park(client: Client, pending: Pending, first: int, journeys: int) -> None:
    for chunk in range(first, journeys, 100):
        await asyncio.gather(
            *(
                queue_run(client, {"journey_type": "parked", "spec": PARKED, "user_id": f"p{i}"})
                for i in range(chunk, min(chunk + 100, journeys))
            )
        )
    while await asyncio.to_thread(pending):  # noqa: ASYNC110 - another process's rows: polled
        await asyncio.sleep(0.2)


def rss_mb(process: subprocess.Popen[bytes]) -> float:
    return float(psutil.Process(process.pid).memory_info().rss) / 2**20


Measured: TypeAlias = subprocess.Popen[bytes] | psutil.Process


def cpu_seconds(process: Measured) -> float:
    """CPU seconds of ``process``; of a PostgreSQL postmaster, with every backend's, live or exited (the
    postmaster reaps its backends, so an exited one's time is in its children's)."""
    proc = process if isinstance(process, psutil.Process) else psutil.Process(process.pid)
    times = proc.cpu_times()
    total = times.user + times.system
    if proc.name().startswith("postgres"):
        total += times.children_user + times.children_system
        for child in proc.children():
            with contextlib.suppress(psutil.Error):  # a backend that exited since it was listed
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
    return float(total)


def backends_cpu(url: str) -> dict[int, tuple[str, float]]:
    """CPU seconds of each live backend of the benchmark's database serving the API (``api``) or a worker
    (``worker``), by process id: the PostgreSQL side of the statements each sends (their connections carry the
    application_name ``journeys`` gives them)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name IN ('bench-api', 'bench-worker')"
        ).fetchall()
    found: dict[int, tuple[str, float]] = {}
    for pid, name in rows:
        with contextlib.suppress(psutil.Error):  # a backend that exited since it was listed
            times = psutil.Process(int(pid)).cpu_times()
            found[int(pid)] = (str(name).removeprefix("bench-"), times.user + times.system)
    return found


def backends_spent(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds the API's and the workers' backends spent between two :func:`backends_cpu` readings: a backend
    that started meanwhile counts whole; one that exited meanwhile is not seen (pooled connections live on)."""
    spent = {"api": 0.0, "worker": 0.0}
    for pid, (side, seconds) in after.items():
        earlier = before.get(pid)
        spent[side] += seconds - (earlier[1] if earlier is not None and earlier[0] == side else 0.0)
    return spent


def postmaster(url: str) -> psutil.Process | None:
    """The local PostgreSQL server's postmaster (its CPU is measured), or None when it is on another host."""
    with psycopg.connect(url, autocommit=True) as conn:  # its backend asked while it lives
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        try:
            parent = psutil.Process(int(row[0])).parent() if row else None
        except psutil.Error:
            return None
    return parent if parent is not None and parent.name().startswith("postgres") else None


def py_spy() -> str | None:
    """The py-spy executable (next to this interpreter, or on PATH), or None."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Sampler:
    """py-spy sampling the given processes while the context is open (raw folded stacks, one file each)."""

    def __init__(self, processes: dict[str, Measured], folder: Path) -> None:
        self.files = {name: folder / f"{name}.folded" for name in processes}
        self._processes = processes
        self._samplers: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Sampler:
        executable = py_spy()
        assert executable is not None
        for name, process in self._processes.items():
            command = [executable, "record", "--pid", str(process.pid), "--rate", "200", "--nonblocking"]
            command += ["--format", "raw", "-o", str(self.files[name])]
            self._samplers.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)  # attached before the phase starts
        return self

    def __exit__(self, *exc: object) -> None:
        for sampler in self._samplers:
            sampler.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
        for sampler in self._samplers:
            sampler.wait(timeout=60)

    def top(self, name: str, count: int) -> list[tuple[float, str]]:
        """The ``count`` frames with the most own samples, as shares of the process's non-idle samples (the
        event loop's own frame, where py-spy puts a loop waiting for I/O, left out)."""
        own: collections.Counter[str] = collections.Counter()
        path = self.files.get(name)
        for line in path.read_text().splitlines() if path is not None and path.exists() else []:
            stack, _, n = line.rpartition(" ")
            frame = stack.rsplit(";", 1)[-1]
            if not frame.startswith(("Runner.run ", "run_forever ", "_run_once ")):
                own[frame] += int(n)
        total = sum(own.values()) or 1
        return [(100 * n / total, frame) for frame, n in own.most_common(count)]


DB_COUNTERS = """
SELECT xact_commit + xact_rollback AS transactions,
       tup_inserted + tup_updated + tup_deleted AS rows_written,
       pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') AS wal_bytes,
       pg_database_size(current_database()) AS database_bytes
FROM pg_stat_database WHERE datname = current_database()
"""


def db_counters(url: str) -> dict[str, float]:
    """The database's cumulative transactions, written rows, WAL and size. Statistics reach
    pg_stat_database when a backend flushes them (at most a second after its transaction): read after a
    pause."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        cursor = conn.execute(DB_COUNTERS)
        row = cursor.fetchone()
        assert row is not None and cursor.description is not None
        return {column.name: float(value) for column, value in zip(cursor.description, row, strict=True)}


def connections(url: str) -> dict[str, int]:
    """How many connections to the database the API process and the workers hold."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name IN ('bench-api', 'bench-worker') GROUP BY application_name"
        ).fetchall()
    held = {str(name).removeprefix("bench-"): int(n) for name, n in rows}
    return {"api": held.get("api", 0), "worker": held.get("worker", 0)}


async def measure_latency(
    client: Client,
    journeys: int,
    results: dict[str, Any],
    processes: dict[str, Measured],
    prefix: str = "",
    url: str | None = None,
    profile: int = 0,
) -> None:
    """Latency at 20 clients and at one; and the CPU each of ``processes`` spent per journey at 20 (and
    their total). With ``url``, also what each journey step cost the database, and the connections held.
    ``profile``: the top entries of a py-spy profile of each Python process at 20 clients."""
    if url is not None:
        await asyncio.sleep(1.5)  # earlier statistics flushed
        counters = await asyncio.to_thread(db_counters, url)
    sampled = {name: p for name, p in processes.items() if name != "postgres"}
    split = url is not None and "postgres" in processes  # the local server's backends can be read
    with tempfile.TemporaryDirectory() as folder:
        sampler = Sampler(sampled, Path(folder))
        with sampler if profile else contextlib.nullcontext(sampler):
            backends_before = backends_cpu(url) if split and url is not None else {}
            before = {name: cpu_seconds(p) for name, p in processes.items()}
            client_before = time.process_time()
            times = sorted(await latency(client, journeys, 20))
            client_cpu = time.process_time() - client_before
            after_cpu = {name: cpu_seconds(p) for name, p in processes.items()}
            backends_after = backends_cpu(url) if split and url is not None else {}
        if profile:
            results[f"{prefix}profile"] = {name: sampler.top(name, profile) for name in sampled}
    for name in processes:
        results[f"{prefix}cpu_ms_{name}"] = 1000 * (after_cpu[name] - before[name]) / journeys
    results[f"{prefix}cpu_ms_total"] = sum(results[f"{prefix}cpu_ms_{name}"] for name in processes)
    if split:  # PostgreSQL's part by who sent the statements (the rest: its own processes, exited backends)
        for side, seconds in backends_spent(backends_before, backends_after).items():
            results[f"{prefix}cpu_ms_postgres_{side}"] = 1000 * seconds / journeys
    # The load generator shares the machine's cores: its CPU is reported apart, outside the total.
    results[f"{prefix}cpu_ms_client"] = 1000 * client_cpu / journeys
    if url is not None:
        results["connections"] = await asyncio.to_thread(connections, url)
        await asyncio.sleep(1.5)  # this phase's statistics flushed
        after = await asyncio.to_thread(db_counters, url)
        steps = journeys * len(EIGHT_STEPS["steps"])
        results["per_step"] = {name: (after[name] - counters[name]) / steps for name in counters}
    results[f"{prefix}p50_ms"] = 1000 * statistics.median(times)
    results[f"{prefix}p95_ms"] = 1000 * times[int(0.95 * (len(times) - 1))]
    alone = await latency(client, max(5, journeys // 10), 1)
    results[f"{prefix}one_client_p50_ms"] = 1000 * statistics.median(alone)


async def bench_embedded(url: str, quick: bool, pending: Pending) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with serving(url, distributed=False) as (base, api):
        async with load_client(base) as client:
            await latency(client, 5, 5)  # warm-up
            await measure_latency(client, 20 if quick else 200, results, {"api": api}, "embedded_")
            results["embedded_per_s"] = await throughput(client, pending, 30 if quick else 400, "emb")
    return results


async def bench(
    url: str, quick: bool, *, latency_only: bool = False, profile: int = 0, workers: int = 1
) -> dict[str, Any]:
    ensure_schema(url)
    pending = Pending(url)
    try:
        results = {} if latency_only else await bench_embedded(url, quick, pending)
        results.update(
            await bench_distributed(url, quick, pending, latency_only=latency_only, profile=profile, workers=workers)
        )
    finally:
        pending.close()
    return results


async def bench_distributed(
    url: str, quick: bool, pending: Pending, *, latency_only: bool = False, profile: int = 0, workers: int = 1
) -> dict[str, Any]:
    """The distributed figures: the latency phase with ``workers`` worker processes, the rest with one or two."""
    results: dict[str, Any] = {"workers": workers}
    database = postmaster(url)
    with serving(url, distributed=True) as (base, api):
        async with load_client(base) as client:
            running = [start_worker(url, 8) for _ in range(workers)]
            try:
                await asyncio.to_thread(wait_for_workers, url, workers)
                await latency(client, 5 * workers, 5 * workers)  # warm-up: imports, compiled graphs, pools
                measured: dict[str, Measured] = {"api": api, "worker": running[0]}
                measured |= {f"worker{n}": worker for n, worker in enumerate(running[1:], start=2)}
                if database is not None:
                    measured["postgres"] = database
                await measure_latency(client, 20 if quick else 200, results, measured, url=url, profile=profile)
                fold_workers(results, workers)
                if latency_only:
                    return results
                stop(running[1:])
                del running[1:]
                n = 30 if quick else 400
                results["one_worker_per_s"] = await throughput(client, pending, n, "one")
                running.append(start_worker(url, 8))
                await asyncio.to_thread(wait_for_workers, url, 2)
                await latency(client, 32, 16)  # warm the second worker too (both take jobs)
                results["two_workers_per_s"] = await throughput(client, pending, n, "two")
                results["ratio"] = results["two_workers_per_s"] / results["one_worker_per_s"]
                stop(running[1:])
                del running[1:]
                small, parked = (50, 200) if quick else (100, 10_000)
                await park(client, pending, 0, small)
                results["small_parked"] = small
                results["worker_rss_small_mb"] = rss_mb(running[0])
                await park(client, pending, small, parked)
                results["parked"] = parked
                results["worker_rss_mb"] = rss_mb(running[0])
            finally:
                stop(running)
    return results


def fold_workers(results: dict[str, Any], workers: int) -> None:
    """The worker processes' CPU per journey as one figure, ``cpu_ms_worker`` (their sum); each process's own
    (``cpu_ms_worker1``, ``cpu_ms_worker2``, …) kept beside it when there are several."""
    if workers == 1:
        return
    each = [results.pop(f"cpu_ms_worker{n}") if n > 1 else results["cpu_ms_worker"] for n in range(1, workers + 1)]
    results |= {f"cpu_ms_worker{n}": ms for n, ms in enumerate(each, start=1)}
    results["cpu_ms_worker"] = sum(each)


P95_TARGET_MS = 150.0  # start to completion at 20 clients, distributed


def missed_targets(results: dict[str, Any]) -> list[str]:
    """The ``TARGET MISSED`` lines for ``results`` (none when every target is met)."""
    p95 = float(results["p95_ms"])
    if p95 < P95_TARGET_MS:
        return []
    total = f", {results['cpu_ms_total']:.1f} ms CPU per journey" if "cpu_ms_total" in results else ""
    return [f"TARGET MISSED: p95 at 20 clients {p95:.0f} ms >= {P95_TARGET_MS:.0f} ms{total}"]


def each_worker(results: dict[str, Any]) -> str:
    """Each worker process's share of the worker figure when there were several ("" for one)."""
    workers = int(results["workers"])
    if workers == 1:
        return ""
    return " (" + " + ".join(f"{results[f'cpu_ms_worker{n}']:.1f}" for n in range(1, workers + 1)) + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few journeys")
    parser.add_argument("--latency-only", action="store_true", help="only the distributed latency, CPU, database")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="py-spy the API and the worker at 20 clients: top N"
    )
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="worker processes in the latency phase (default 1)"
    )
    args = parser.parse_args()
    if args.profile and py_spy() is None:
        print("py-spy is not installed (pip install py-spy): no profile")
        args.profile = 0
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
        results = asyncio.run(
            bench(url, args.quick, latency_only=args.latency_only, profile=args.profile, workers=args.workers)
        )
    finally:
        if server is not None:
            server.cleanup()
    r = results
    print(f"distributed mode (API + procrastinate workers; {r['workers']} in the latency phase):")
    print(
        f"  8-step journey, HTTP start to completion at 20 clients: p50 {r['p50_ms']:.0f} ms, "
        f"p95 {r['p95_ms']:.0f} ms; at 1 client: p50 {r['one_client_p50_ms']:.0f} ms"
    )
    postgres = f", PostgreSQL {r['cpu_ms_postgres']:.1f} ms" if "cpu_ms_postgres" in r else " (PostgreSQL remote)"
    if "cpu_ms_postgres_api" in r:
        postgres += (
            f" (its backends of the API's connections {r['cpu_ms_postgres_api']:.1f} ms, of the worker's "
            f"{r['cpu_ms_postgres_worker']:.1f} ms)"
        )
    print(
        f"  CPU per journey at 20 clients: API process {r['cpu_ms_api']:.1f} ms, worker {r['cpu_ms_worker']:.1f} ms"
        f"{each_worker(r)}"
        f"{postgres}; total {r['cpu_ms_total']:.1f} ms (and this benchmark's HTTP client, on the same cores: "
        f"{r['cpu_ms_client']:.1f} ms)"
    )
    step = r["per_step"]
    print(
        f"  per journey step: {step['transactions']:.2f} transactions, {step['rows_written']:.1f} rows written, "
        f"{step['wal_bytes']:,.0f} WAL bytes, {step['database_bytes']:,.0f} bytes of database growth"
    )
    held = ", ".join(f"{name} {n}" for name, n in r["connections"].items())
    print(f"  connections held: {held}")
    for name, entries in r.get("profile", {}).items():
        print(f"  {name} process at 20 clients, py-spy, top {len(entries)} by own samples (% of its non-idle samples):")
        for share, frame in entries:
            print(f"    {share:5.1f}% {frame}")
    for line in missed_targets(r):
        print(line)
    if "one_worker_per_s" not in r:
        return
    print(
        f"  completed journeys/s: one worker {r['one_worker_per_s']:.1f}, two workers "
        f"{r['two_workers_per_s']:.1f} (ratio {r['ratio']:.2f})"
    )
    print(
        f"  worker RSS with journeys parked at user tasks: {r['small_parked']} parked "
        f"{r['worker_rss_small_mb']:.0f} MB, {r['parked']} parked {r['worker_rss_mb']:.0f} MB"
    )
    print("embedded mode (runs execute in the API process):")
    print(
        f"  8-step journey at 20 clients: p50 {r['embedded_p50_ms']:.0f} ms, p95 {r['embedded_p95_ms']:.0f} ms; "
        f"at 1 client: p50 {r['embedded_one_client_p50_ms']:.0f} ms; {r['embedded_per_s']:.1f} completed journeys/s"
    )
    print(f"  CPU per journey at 20 clients: API process {r['embedded_cpu_ms_api']:.1f} ms")


if __name__ == "__main__":
    main()
