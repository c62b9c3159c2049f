"""Client lifecycle at scale: N concurrent client journeys driven through the default lifecycle.

All N journeys are open at once and move together through the seed's stages on a virtual clock
(days pass between phases, instantly), with C operations in flight at any moment:

1. day 1   start every journey (sandbox entry gate, connector installation unit)
2. day 3-9 the sandbox units (test data + security scan, search quality), then the sandbox metrics
3. day 10  promote every journey to pilot                                   -> promotions/s
4. day 11  the pilot units and metrics; day 18 a week of stable precision
5. day 18  a share of the clients reports satisfaction 3.0 (< 3.5): an automatic rollback each,
           plan → rollback unit → validation → notification → back in the sandbox -> rollbacks/s
6. day 21  promote the others to production                                 -> promotions/s

Every call is the public API (``runtime.lifecycle``) with the default agents, policies and event log:
nothing is switched off. Printed: promotions/s, p95 gate-validation latency (the gate's own
evaluation, stored with each validation, and the whole ``promote`` call), rollbacks/s, and the seed's
targets (100+ concurrent journeys, a stage transition under 5 minutes).

    python benchmarks/lifecycle.py                                   # 10,000 journeys on a throwaway Postgres
    python benchmarks/lifecycle.py --database-url postgresql://...   # on an existing server
    python benchmarks/lifecycle.py --quick --backends memory,sqlite  # smoke run (the test suite)
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.overhead import fresh_database, postgres_server
from checkpoints.clock import VirtualClock
from checkpoints.reports import LifecycleReports
from graphs.lifecycle.catalog import READY_TO_START
from graphs.lifecycle.orchestrator import LifecycleOrchestrator
from graphs.runtime import JourneyRuntime

BACKENDS = ("memory", "sqlite", "postgres")
DAY = timedelta(days=1)
SANDBOX_METRICS = {
    "connector_sync_rate": 1.0,
    "search_precision": 0.86,
    "security_vulnerabilities": 0,
    "demo_approved": 1,
    "pilot_cohort_size": 25,
    "production_infra_ready": 1,
}
PILOT_METRICS = {"search_precision": 0.88, "user_satisfaction": 4.2, "bug_count": 0, "p95_latency_ms": 420}
PRODUCTION_ENTRY = {"rollout_plan_approved": 1, "monitoring_configured": 1}
SEED_CONCURRENT_JOURNEYS = 100
SEED_TRANSITION_SECONDS = 300.0


@dataclass
class Settings:
    journeys: int
    concurrency: int
    rollback_share: float
    backends: tuple[str, ...]
    database_url: str | None
    pool_size: int
    workers: int


@dataclass
class Phase:
    name: str
    operations: int
    seconds: float
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.operations / self.seconds if self.seconds else 0.0


@dataclass
class Result:
    backend: str
    journeys: int
    phases: list[Phase] = field(default_factory=list)
    gate_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)


def p95(values: Sequence[float]) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[94]


async def run_phase(
    result: Result, name: str, items: Sequence[str], work: Callable[[str], Awaitable[Any]], concurrency: int
) -> None:
    """``work(item)`` for every item, ``concurrency`` at a time; records the wall time and each latency."""
    pending = iter(items)
    latencies: list[float] = []

    async def worker() -> None:
        for item in pending:  # one shared iterator: each worker takes the next item
            started = time.perf_counter()
            try:
                await work(item)
            except Exception as exc:  # a report, not a crash: count and show what failed
                result.failures.append(f"{name} {item}: {type(exc).__name__}: {exc}")
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(items))))))
    phase = Phase(name, len(items), time.perf_counter() - started, latencies)
    result.phases.append(phase)
    print(
        f"  {result.backend:<8} {name:<22} {phase.operations:>7} ops in {phase.seconds:8.2f}s "
        f"= {phase.rate:9.1f}/s   p95 {p95(latencies) * 1000:8.1f} ms",
        flush=True,
    )


async def bench(url: str, backend: str, settings: Settings) -> Result:
    clock = VirtualClock(datetime(2026, 1, 1, 9, 0, tzinfo=UTC))
    result = Result(backend, settings.journeys)
    workers = 1 if backend == "memory" else settings.workers  # memory:// is one database per runtime
    async with AsyncExitStack() as stack:
        runtimes = [
            await stack.enter_async_context(JourneyRuntime.open(url, clock=clock, pool_size=settings.pool_size))
            for _ in range(workers)
        ]
        runtime = runtimes[0]
        owner: dict[str, LifecycleOrchestrator] = {}
        journeys: list[str] = []
        c = settings.concurrency

        def lc_of(key: str) -> LifecycleOrchestrator:
            return owner[key]

        async def start(client: str) -> None:
            worker = runtimes[int(client.rsplit("-", 1)[1]) % workers].lifecycle
            journey_id = (await worker.start_journey(client, metrics=READY_TO_START))["journey_id"]
            owner[journey_id] = worker
            journeys.append(journey_id)

        async def sandbox_work(journey_id: str) -> None:
            lc = lc_of(journey_id)
            await lc.run_unit_of_work(journey_id, "test_dataset_provisioning")
            await lc.run_unit_of_work(journey_id, "search_quality_validation")
            await lc.record_metrics(journey_id, SANDBOX_METRICS)

        async def promote(journey_id: str) -> None:
            if not (await lc_of(journey_id).promote(journey_id)).passed:
                raise RuntimeError(f"journey {journey_id} did not pass its gate")

        async def pilot_work(journey_id: str) -> None:
            lc = lc_of(journey_id)
            await lc.run_unit_of_work(journey_id, "limited_user_rollout")
            await lc.run_unit_of_work(journey_id, "pilot_validation")
            await lc.record_metrics(journey_id, PILOT_METRICS)

        async def week_later(journey_id: str) -> None:
            await lc_of(journey_id).record_metrics(journey_id, {**PILOT_METRICS, **PRODUCTION_ENTRY})

        async def roll_back(journey_id: str) -> None:
            recorded = await lc_of(journey_id).record_metric(journey_id, "user_satisfaction", 3.0)
            if not recorded["rollback"] or recorded["rollback"]["status"] != "completed":
                raise RuntimeError(f"journey {journey_id} did not roll back: {recorded['rollback']}")

        clients = [f"client-{i:05d}" for i in range(settings.journeys)]
        await run_phase(result, "start", clients, start, c)
        clock.advance(2 * DAY)
        await run_phase(result, "sandbox units+metrics", journeys, sandbox_work, c)
        clock.advance(7 * DAY)
        await run_phase(result, "promote to pilot", journeys, promote, c)
        clock.advance(DAY)
        await run_phase(result, "pilot units+metrics", journeys, pilot_work, c)
        clock.advance(7 * DAY)
        await run_phase(result, "pilot week later", journeys, week_later, c)
        cut = round(len(journeys) * settings.rollback_share)
        await run_phase(result, "automatic rollback", journeys[:cut], roll_back, c)
        clock.advance(3 * DAY)
        await run_phase(result, "promote to production", journeys[cut:], promote, c)

        result.gate_ms = await LifecycleReports(runtime.store.engine).gate_evaluation_ms("promotion")
        summary = await runtime.lifecycle.dashboard()
        active = summary["active_journeys_by_stage"]
        print(f"  {backend:<8} active journeys by stage at the end: {active}", flush=True)
    return result


def print_report(results: Sequence[Result], settings: Settings) -> None:
    print()
    print(
        f"== client lifecycle: {settings.journeys} concurrent journeys, {settings.concurrency} operations in flight, "
        f"{settings.rollback_share:.0%} rolled back =="
    )
    header = (
        f"{'backend':<9}{'promotions/s':>13}{'gate p95 ms':>13}{'promote p95 ms':>16}{'max promote s':>15}"
        f"{'rollbacks/s':>13}{'rollback p95 ms':>17}{'failures':>10}"
    )
    print(header)
    print("-" * len(header))
    missed = []
    for r in results:
        promotions = [r.phase("promote to pilot"), r.phase("promote to production")]
        count = sum(p.operations for p in promotions)
        seconds = sum(p.seconds for p in promotions)
        latencies = [x for p in promotions for x in p.latencies]
        rollback = r.phase("automatic rollback")
        print(
            f"{r.backend:<9}{count / seconds if seconds else 0:>13.1f}{p95(r.gate_ms):>13.2f}"
            f"{p95(latencies) * 1000:>16.1f}{max(latencies, default=0):>15.2f}"
            f"{rollback.rate:>13.1f}{p95(rollback.latencies) * 1000:>17.1f}{len(r.failures):>10}"
        )
        if max(latencies, default=0) >= SEED_TRANSITION_SECONDS:
            missed.append(f"TARGET MISSED: {r.backend}: a stage transition took {max(latencies):.1f}s (seed: < 300s)")
        for failure in r.failures[:5]:
            missed.append(f"FAILED: {r.backend}: {failure}")
    print()
    print(
        f"seed targets: {SEED_CONCURRENT_JOURNEYS}+ concurrent journeys (ran {settings.journeys}), "
        f"stage transitions under {SEED_TRANSITION_SECONDS:.0f}s"
    )
    for line in missed:
        print(line)
    if not missed:
        print("all targets met")


# --- Postgres ---------------------------------------------------------------------------------


@contextmanager
def store_url(backend: str, server_url: str | None, scratch: Path) -> Iterator[str]:
    if backend == "memory":
        yield "memory://"
        return
    if backend == "sqlite":
        yield f"sqlite:///{scratch}/lifecycle-{uuid.uuid4().hex[:8]}.db"
        return
    assert server_url is not None
    with fresh_database(server_url, "lifecycle") as url:
        yield url


# --- entry point --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--journeys", type=int, default=10_000, help="concurrent client journeys (default 10000)")
    parser.add_argument("--concurrency", type=int, default=64, help="operations in flight (default 64)")
    parser.add_argument("--rollback-share", type=float, default=0.1, help="share of journeys rolled back (0.1)")
    parser.add_argument(
        "--backends", default="postgres", help="comma list of memory,sqlite,postgres (default postgres)"
    )
    parser.add_argument("--database-url", default=None, help="a Postgres server; default: start a throwaway one")
    parser.add_argument("--pool-size", type=int, default=6, help="connections per pool and worker (default 6)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runtimes sharing the database, each owning a share of the journeys, as worker processes would "
        "(default 1; memory:// always 1)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 journeys, 4 in flight")
    args = parser.parse_args(argv)
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    if args.journeys < 1 or args.concurrency < 1 or not 0 <= args.rollback_share <= 1:
        parser.error("--journeys and --concurrency must be positive, --rollback-share within 0..1")
    journeys, concurrency = (8, 4) if args.quick else (args.journeys, args.concurrency)
    if args.workers < 1:
        parser.error("--workers must be positive")
    return Settings(
        journeys, concurrency, args.rollback_share, backends, args.database_url, args.pool_size, args.workers
    )


async def main_async(settings: Settings) -> list[Result]:
    print(
        f"lifecycle benchmark: backends={','.join(settings.backends)} journeys={settings.journeys} "
        f"concurrency={settings.concurrency} rollback share={settings.rollback_share}",
        flush=True,
    )
    scratch = Path(tempfile.mkdtemp(prefix="journeys-bench-"))
    results = []
    try:
        for backend in settings.backends:
            with store_url(backend, settings.database_url, scratch) as url:
                results.append(await bench(url, backend, settings))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    if "postgres" in settings.backends:
        with postgres_server(settings.database_url) as server_url:
            settings.database_url = server_url
            results = asyncio.run(main_async(settings))
    else:
        results = asyncio.run(main_async(settings))
    print_report(results, settings)
    return 1 if any(r.failures for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
