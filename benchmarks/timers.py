"""Durable timers under load: N process instances parked on timers that all fall due at the same moment.

Each instance runs ``start → timer (PT{lead}S) → end``. While the instances are parked the runtime's
clock stands still, so every timer falls due at the same instant D; then the clock is released and
runs in real time (a fixed offset from the wall clock, so every duration measured is a real one), and
one worker, ``fire_due_timers`` in this process, fires them all when D comes.

Printed per backend:

- **fired**: when each timer's firing became durable (its wait resolved and the timer row marked
  fired, one transaction per batch). Time from D until the last one, lateness p50 / p99, and the
  earliest firing relative to D (never negative: never early; also checked row by row in the DB).
- **resumed**: when each instance's thread had been resumed past the timer and completed (the
  graph run, its events and checkpoints). Time from D until the last one, lateness p50 / p99.

Targets: every timer fired within 10 s of D; none early; every instance continued within 20 s of D at
10,000 instances on one worker (issue 15), i.e. at 500 continuations/s: ``N / 500`` s for N instances.

    python benchmarks/timers.py                                     # 10,000 instances on a throwaway Postgres
    python benchmarks/timers.py --database-url postgresql://...     # on an existing server
    python benchmarks/timers.py --quick --backends memory,sqlite    # smoke run (the test suite)
    python benchmarks/timers.py --fresh-worker --database-url ...   # fired by a worker that did not park them
    python benchmarks/timers.py --instances 1000 --profile-park 30  # where a start that parks spends its CPU

The exit code is 0 whatever the figures: this is a report. Missed targets print ``TARGET MISSED``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, Durability, interrupt
from sqlalchemy import func, select

from benchmarks.overhead import fresh_database, postgres_server
from checkpoints.savers import open_saver
from checkpoints.schema.tables import process_timers
from checkpoints.url import parse_store_url
from graphs.process.timers import RESUME_CONCURRENCY, fire_due_timers
from graphs.runtime import JourneyRuntime
from server.cli import event_loop_runner
from server.heap import freeze_startup_heap

FIRE_TARGET_S = 10.0
RESUME_TARGET_PER_S = 500.0  # continuations per second: 10,000 within 20 s


class HeldClock:
    """Stands still at ``start`` until released, then runs in real time from there."""

    def __init__(self, start: datetime) -> None:
        self._start = start
        self._released_at: float | None = None

    def release(self) -> None:
        self._released_at = time.monotonic()

    def now(self) -> datetime:
        if self._released_at is None:
            return self._start
        return self._start + timedelta(seconds=time.monotonic() - self._released_at)


@dataclass
class Result:
    backend: str
    instances: int
    park_s: float
    fired: int = 0
    resumed: int = 0
    fire_lateness: list[float] = field(default_factory=list)
    resume_lateness: list[float] = field(default_factory=list)
    early_in_db: int = 0
    fired_in_db: int = 0
    completed: int = 0
    errors: list[str] = field(default_factory=list)
    worker_cpu_s: float = 0.0  # CPU time this process used to fire and resume them all
    park_cpu_s: float = 0.0  # CPU time this process used to start them all, each parking on its timer


def spec(lead_s: int) -> dict[str, Any]:
    return {
        "name": "timer_bench",
        "elements": [
            {"type": "start", "id": "start"},
            {"type": "timer", "id": "wait", "timer": {"duration": f"PT{lead_s}S"}},
            {"type": "end", "id": "end"},
        ],
        "flows": ["start -> wait", "wait -> end"],
    }


async def bench(
    backend: str,
    url: str,
    n: int,
    *,
    lead_s: int,
    park_concurrency: int,
    resume_concurrency: int,
    durability: Durability,
    profile: int = 0,
    profile_park: int = 0,
    fresh_worker: bool = False,
) -> Result:
    """Park ``n`` instances, then fire and resume them all; ``fresh_worker``: from a runtime opened anew on
    the store after parking (a worker that never saw them start, as when timers fall due hours later).

    Each runtime, once open, has its startup heap frozen as ``journeys worker`` and ``journeys serve`` do
    (``server.heap``): the worker measured is the one deployed, whose garbage collections do not traverse
    the startup's objects (without it, 0.1-0.4 ms of CPU per continuation, varying from run to run)."""
    clock = HeldClock(datetime.now(UTC).replace(microsecond=0))
    opened = functools.partial(JourneyRuntime.open, url, clock=clock, durability=durability, pool_size=20)
    async with opened() as runtime:
        freeze_startup_heap()
        result, due = await park_all(
            runtime, backend, n, lead_s=lead_s, concurrency=park_concurrency, profile=profile_park
        )
        if not fresh_worker:
            await fire_all(runtime, result, clock, due, concurrency=resume_concurrency, profile=profile)
            return result
    async with opened() as worker:
        freeze_startup_heap()
        await fire_all(worker, result, clock, due, concurrency=resume_concurrency, profile=profile)
        return result


async def park_all(
    runtime: JourneyRuntime, backend: str, n: int, *, lead_s: int, concurrency: int, profile: int = 0
) -> tuple[Result, datetime]:
    """Start ``n`` instances, each parked on a timer due ``lead_s`` after the held clock; and that due time.
    ``profile``: profile the starts (cProfile in CPU time) and print the top ``profile`` entries."""
    await runtime.processes.deploy(spec(lead_s))
    due = runtime.store.clock.now() + timedelta(seconds=lead_s)
    keys = iter(range(n))

    async def park() -> None:
        for i in keys:  # one shared iterator: each worker takes the next key
            view = await runtime.processes.start("timer_bench", f"key-{i}")
            if view["status"] != "in_progress":
                raise RuntimeError(f"instance {i} did not park: {view}")

    with profiled(f"{backend}-park", "the starts' CPU", profile):
        started, cpu_before = time.perf_counter(), time.process_time()
        await asyncio.gather(*(park() for _ in range(concurrency)))
        result = Result(backend, n, time.perf_counter() - started)
        result.park_cpu_s = time.process_time() - cpu_before
    print(
        f"  {backend:<8} parked {n} instances in {result.park_s:.1f} s "
        f"({result.park_cpu_s / n * 1000:.2f} ms CPU a start); timers due in {lead_s} s",
        flush=True,
    )
    return result, due


@contextmanager
def profiled(name: str, what: str, top: int) -> Iterator[None]:
    """Profile the block in CPU time, not wall time, if ``top``: then print its top ``top`` entries (by own time, then
    by cumulative time) and dump the whole profile to ``timers-<name>.prof`` in the temporary directory. On a shared
    box a call waiting for a core (or, in a C call that frees the GIL, for the saver's serialising thread) would
    otherwise count as the block's own cost."""
    if not top:
        yield
        return
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
    print(f"\n  {name}: where {what} went (cProfile in CPU time, top {top} by own time):")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(top)
    dump = Path(tempfile.gettempdir()) / f"timers-{name}.prof"
    profiler.dump_stats(dump)
    print(f"  the whole profile: {dump} (python -m pstats {dump})")


async def fire_all(
    runtime: JourneyRuntime, result: Result, clock: HeldClock, due: datetime, *, concurrency: int, profile: int
) -> None:
    """Release the clock, fire every timer when due and resume the instances; the figures into ``result``."""
    backend = result.backend
    clock.release()
    with profiled(backend, "the worker's CPU", profile):
        cpu_before = time.process_time()  # CPU time, not wall time: see profiled
        for _poll in range(1000):  # the worker waits for the due time, as TimerScheduler's loop does
            await asyncio.sleep(max(0.0, (due - clock.now()).total_seconds()))
            report = await fire_due_timers(runtime.processes, concurrency=concurrency)
            if report.fired:  # an asyncio sleep may end a hair early: then nothing was due yet
                break
        result.worker_cpu_s = time.process_time() - cpu_before
    result.fired, result.resumed = report.fired, report.resumed
    result.fire_lateness, result.resume_lateness = report.lateness, report.resume_lateness
    result.errors = report.errors[:5]

    t = process_timers.c
    async with runtime.store.engine.connect() as conn:
        result.fired_in_db = int((await conn.execute(select(func.count()).where(t.status == "fired"))).scalar_one())
        result.early_in_db = int((await conn.execute(select(func.count()).where(t.fired_at < t.due_at))).scalar_one())
    counts = await runtime.store.index.count_by_status(pattern="process")
    result.completed = counts.get("completed", 0)


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def print_result(result: Result) -> list[str]:
    missed = []
    fire, resume = result.fire_lateness, result.resume_lateness
    print(f"\n== {result.backend}: {result.instances} instances, timers due at the same moment, one worker ==")
    if fire:
        print(
            f"fired   {result.fired:>6}  all within {max(fire):7.3f} s of due   "
            f"lateness p50 {statistics.median(fire) * 1000:8.1f} ms  p99 {pct(fire, 99) * 1000:8.1f} ms  "
            f"earliest {min(fire) * 1000:+.1f} ms"
        )
    if resume:
        print(
            f"resumed {result.resumed:>6}  all within {max(resume):7.3f} s of due   "
            f"lateness p50 {statistics.median(resume) * 1000:8.1f} ms  p99 {pct(resume, 99) * 1000:8.1f} ms"
        )
    if result.resumed:
        print(
            f"worker  CPU {result.worker_cpu_s:.1f} s to fire and resume them: "
            f"{result.worker_cpu_s / result.resumed * 1000:.2f} ms CPU per continuation, its firing included "
            "(on a shared machine the wall times above also include waiting for a core)"
        )
    print(
        f"db: {result.fired_in_db} timers fired, {result.early_in_db} fired before due; "
        f"{result.completed} instances completed; park {result.instances / result.park_s:.0f} instances/s"
    )
    for error in result.errors:
        print(f"  error: {error}")
    if result.fired != result.instances or result.fired_in_db != result.instances:
        missed.append(f"TARGET MISSED: {result.backend}: {result.fired} of {result.instances} timers fired")
    if fire and max(fire) > FIRE_TARGET_S:
        missed.append(
            f"TARGET MISSED: {result.backend}: last timer fired {max(fire):.1f} s after due (> {FIRE_TARGET_S} s)"
        )
    if result.early_in_db or (fire and min(fire) < 0):
        missed.append(f"TARGET MISSED: {result.backend}: timers fired early")
    resume_target = result.instances / RESUME_TARGET_PER_S
    if result.resumed < result.instances or (resume and max(resume) > resume_target):
        last = f"the last {max(resume):.1f} s after due" if resume else "none"
        missed.append(
            f"TARGET MISSED: {result.backend}: {result.resumed} of {result.instances} instances continued, {last} "
            f"(target: all within {resume_target:.1f} s, {RESUME_TARGET_PER_S:.0f} continuations/s)"
        )
    return missed


class FloorState(TypedDict, total=False):
    answer: str
    done: bool


def _floor_wait(_state: FloorState) -> FloorState:
    return {"answer": interrupt("timer")}


def _floor_end(_state: FloorState) -> FloorState:
    return {"done": True}


async def raw_floor(url: str, n: int, concurrency: int, durability: Durability) -> float:
    """LangGraph's own cost of a continuation, the floor under ours: ms of CPU per resume of ``n`` threads parked
    at an interrupt, each then running one node more to its end (``wait → end``, as the timer instance runs), on
    the same saver class, pool and serializer as ours (``open_saver``), at the same concurrency and durability.
    No timer, lock, event or delivery: only the two supersteps, the checkpoint read and the writes."""
    builder = StateGraph(FloorState)
    builder.add_node("wait", _floor_wait)
    builder.add_node("end", _floor_end)
    builder.add_edge(START, "wait")
    builder.add_edge("wait", "end")
    builder.add_edge("end", END)
    async with open_saver(parse_store_url(url)) as saver:
        graph = builder.compile(checkpointer=saver)
        gate = asyncio.Semaphore(concurrency)

        async def one(thread: int, value: Any) -> None:
            async with gate:
                await graph.ainvoke(value, {"configurable": {"thread_id": f"floor-{thread}"}}, durability=durability)

        await asyncio.gather(*(one(i, {}) for i in range(n)))
        cpu_before = time.process_time()
        await asyncio.gather(*(one(i, Command(resume="fired")) for i in range(n)))
        return (time.process_time() - cpu_before) / n * 1000


@contextmanager
def store_url(backend: str, server_url: str | None, scratch: Path) -> Iterator[str]:
    if backend == "memory":
        yield "memory://"
    elif backend == "sqlite":
        yield f"sqlite:///{scratch}/timers-{uuid.uuid4().hex[:8]}.db"
    else:
        assert server_url is not None
        with fresh_database(server_url, "timers") as url:
            yield url


async def run(args: argparse.Namespace) -> int:
    backends = tuple(args.backends.split(","))
    scratch = Path(tempfile.mkdtemp(prefix="journeys-timers-"))
    missed: list[str] = []
    try:
        with postgres_server(args.database_url) if "postgres" in backends else _nothing() as server_url:
            for backend in backends:
                with store_url(backend, server_url, scratch) as url:
                    result = await bench(
                        backend,
                        url,
                        args.instances,
                        lead_s=args.lead,
                        park_concurrency=args.park_concurrency,
                        resume_concurrency=args.resume_concurrency,
                        durability=args.durability,
                        profile=args.profile,
                        profile_park=args.profile_park,
                        fresh_worker=args.fresh_worker,
                    )
                missed += print_result(result)
                if args.raw and backend != "memory":
                    with store_url(backend, server_url, scratch) as floor_url:
                        floor = await raw_floor(floor_url, args.instances, args.resume_concurrency, args.durability)
                    ours = result.worker_cpu_s / max(result.resumed, 1) * 1000
                    print(
                        f"raw LangGraph {floor:.2f} ms CPU per resume of wait → end ({args.durability}), the floor "
                        f"under ours: ours/raw {ours / floor:.2f}"
                    )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    for line in missed:
        print(line)
    if not missed:
        print("all targets met (fired within 10 s of due, none early, all continued in time)")
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--backends", default="postgres", help="comma-separated: memory,sqlite,postgres")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--lead", type=int, default=2, help="seconds between releasing the clock and due time")
    parser.add_argument("--park-concurrency", type=int, default=16)
    parser.add_argument("--resume-concurrency", type=int, default=RESUME_CONCURRENCY)
    parser.add_argument("--durability", choices=("sync", "async", "exit"), default="async")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="profile the firing and resuming; print the top N entries"
    )
    parser.add_argument(
        "--profile-park", type=int, default=0, metavar="N", help="profile the starts that park; print the top N entries"
    )
    parser.add_argument(
        "--fresh-worker",
        action="store_true",
        help="fire from a runtime opened anew after parking (a worker that did not start the instances); "
        "sqlite and postgres only",
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="also measure raw LangGraph's CPU per resume of the same two-node graph on the same saver (the floor)",
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run: 100 instances, memory and sqlite")
    args = parser.parse_args(argv)
    if args.quick:
        args.instances = min(args.instances, 100)
        if "--backends" not in (argv or sys.argv):
            args.backends = "memory,sqlite"
        args.lead = 1
    if args.fresh_worker and "memory" in args.backends.split(","):
        parser.error("--fresh-worker needs a store a second runtime can open: sqlite or postgres")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    # On the loop a worker runs (``journeys worker``: uvloop where it is installed), as it is deployed.
    return event_loop_runner()(run(parse(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
