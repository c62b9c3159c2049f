"""Overhead of the journeys runtime over hand-written LangGraph, on the same checkpointer.

An 8-step Structured journey of ``auto`` steps, each calling a registered no-op agent
(``{"ok": True}``), runs in two forms:

- **ours**: ``JourneyRuntime.open(url, durability=...)`` with the default policies on (the
  least-privilege policy, really exercised: the journey grants the scope the agent needs) and the
  event log on. Nothing is switched off.
- **raw**: a hand-written ``StateGraph`` of 8 nodes, each awaiting the same agent and merging its
  output into ``results: dict[str, dict]``, compiled on the same official saver class (opened by the
  same code, so the same pool and serializer settings) and invoked with the same ``durability``
  (under "async", the default, ours checkpoints where the journey stops, as a structured journey does:
  its steps are in the event log; "sync" gives both a checkpoint after every step).

Batches of N journeys are interleaved (ours, raw, ours, raw, ...) on each backend, one journey at a
time and with C in flight. On Postgres each form has a database of its own, and the bytes stored per
completed journey are measured as ``pg_total_relation_size`` deltas and as row sizes. With
``--retention``, ours applies its default checkpoint retention (``keep_latest``: a finished journey keeps
its event log and its latest checkpoint) before the sizes are taken, and both forms' tables are
compacted (``VACUUM FULL``), so the relation sizes are the live data a long-running service keeps.

    python benchmarks/overhead.py                                   # full report; starts a Postgres
    python benchmarks/overhead.py --database-url postgresql://...   # on an existing server
    python benchmarks/overhead.py --quick --backends memory,sqlite  # smoke run (the test suite)
    python benchmarks/overhead.py --backends postgres --retention   # bytes kept after retention

The exit code is 0 whatever the figures: this is a report. Missed targets print ``TARGET MISSED``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol, TypedDict
from urllib.parse import urlsplit, urlunsplit

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Durability
from psycopg import sql

from agents.registry import AgentRegistry
from checkpoints.retention import RetentionPolicy
from checkpoints.savers import open_saver
from checkpoints.url import parse_store_url
from graphs.runtime import JourneyRuntime

BACKENDS = ("memory", "sqlite", "postgres")
STEPS = tuple(f"step_{i}" for i in range(1, 9))
INTENT = "bench.noop"
SCOPE = "bench:run"
RATIO_TARGET = 0.8
DBOS_BYTES = 5_584  # DBOS Transact 3.4 per completed 8-step journey (issue 15): the target with --retention
CHECKPOINT_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
OUR_TABLES = ("journey_events", "journey_instances", "journey_designs")
SPEC: dict[str, Any] = {
    "journey_type": "overhead_bench",
    "name": "Overhead benchmark",
    "steps": [{"step_id": s, "agent": INTENT, "mode": "auto"} for s in STEPS],
    "permissions": [SCOPE],
}


async def noop_agent(_request: object) -> dict[str, Any]:
    """The agent both forms await at every step."""
    return {"ok": True}


# --- the two forms ------------------------------------------------------------------------------


class Form(Protocol):
    name: str

    async def prepare(self) -> None: ...

    async def run(self, user: str) -> None: ...


class Ours:
    """The runtime as a user drives it: design once, then ``execute_journey`` per user."""

    name = "ours"

    def __init__(self, runtime: JourneyRuntime) -> None:
        self.runtime = runtime
        self.journey_id = ""

    async def prepare(self) -> None:
        design = await self.runtime.structured.design_journey(SPEC["journey_type"], spec=SPEC)
        self.journey_id = design["journey_id"]

    async def run(self, user: str) -> None:
        view = await self.runtime.structured.execute_journey(self.journey_id, user)
        if view["status"] != "completed" or len(view["completed_steps"]) != len(STEPS):
            raise RuntimeError(f"ours: journey for {user} did not complete: {view}")


def merge_results(
    left: dict[str, dict[str, Any]] | None, right: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    return {**(left or {}), **right}


class RawState(TypedDict, total=False):
    context: dict[str, Any]
    results: Annotated[dict[str, dict[str, Any]], merge_results]


def build_raw_graph() -> StateGraph[RawState]:
    """What a user writes by hand: one node per step, in order, each storing its agent's output."""

    def node_for(step: str) -> Any:
        async def node(state: RawState) -> RawState:
            output = await noop_agent({"step_id": step, "context": state.get("context") or {}})
            return {"results": {step: output}}

        node.__name__ = step
        return node

    builder: StateGraph[RawState] = StateGraph(RawState)
    previous = START
    for step in STEPS:
        builder.add_node(step, node_for(step))
        builder.add_edge(previous, step)
        previous = step
    builder.add_edge(previous, END)
    return builder


class Raw:
    name = "raw"

    def __init__(self, graph: CompiledStateGraph[Any, Any, Any, Any], durability: Durability) -> None:
        self.graph = graph
        self.durability: Durability = durability
        # Thread ids shaped like ours (``<journey_id>:<user>``), so both store keys of the same length.
        self.prefix = f"journey_{uuid.uuid4().hex[:16]}"

    async def prepare(self) -> None:
        return None

    async def run(self, user: str) -> None:
        config: RunnableConfig = {"configurable": {"thread_id": f"{self.prefix}:{user}"}}
        out = await self.graph.ainvoke({"context": {}}, config, durability=self.durability)
        if len(out.get("results") or {}) != len(STEPS):
            raise RuntimeError(f"raw: journey for {user} did not complete: {out}")


@asynccontextmanager
async def open_ours(url: str, durability: Durability, retention: bool = False) -> AsyncIterator[Ours]:
    registry = AgentRegistry()
    registry.register(INTENT, noop_agent, name="noop", permissions={SCOPE})
    # The default policy, without its settling time: the batches end seconds before the sizes are taken.
    policy = RetentionPolicy(settle=0) if retention else None
    async with JourneyRuntime.open(url, agents=registry, durability=durability, retention=policy) as runtime:
        yield Ours(runtime)


@asynccontextmanager
async def open_raw(url: str, durability: Durability) -> AsyncIterator[Raw]:
    # The very code that opens ours: same saver class, pool, serializer and setup().
    async with open_saver(parse_store_url(url)) as saver:
        yield Raw(build_raw_graph().compile(checkpointer=saver), durability)


# --- Postgres helpers ---------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` (TCP and unix-socket URLs alike)."""
    parts = urlsplit(url)
    query = "&".join(p for p in parts.query.split("&") if p and p.partition("=")[0] != "dbname")
    return urlunsplit(parts._replace(path=f"/{name}", query=query))


@contextmanager
def postgres_server(url: str | None) -> Iterator[str]:
    """``url`` if given, else a throwaway pgserver instance, removed on exit."""
    if url:
        yield url
        return
    if not os.environ.get("XDG_RUNTIME_DIR"):
        # pgserver asks platformdirs for a runtime dir at import time, which warns when this is unset.
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="journeys-xdg-")
    from pgserver.postgres_server import get_server

    scratch = Path(tempfile.mkdtemp(prefix="journeys-pgb-"))  # short: the socket lives inside it
    server = get_server(scratch / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def fresh_database(server_url: str, form: str) -> Iterator[str]:
    name = f"bench_{form}_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


@dataclass(frozen=True, slots=True)
class TableSize:
    total: int  # pg_total_relation_size: heap + TOAST + indexes
    rows_bytes: int  # sum(pg_column_size(t.*))
    rows: int


async def vacuum_full(url: str, tables: Sequence[str]) -> None:
    """Compact ``tables`` so their relation size is their live rows (space freed by deletes is otherwise
    only reused by later rows, which a benchmark's end never sees)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for table in tables:
            await conn.execute(sql.SQL("VACUUM FULL {}").format(sql.Identifier(table)))


async def table_sizes(url: str, tables: Sequence[str]) -> dict[str, TableSize]:
    sizes = {}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for table in tables:
            ident = sql.Identifier(table)
            query = sql.SQL(
                "SELECT pg_total_relation_size({name}), coalesce(sum(pg_column_size(t.*)), 0), count(*) FROM {t} t"
            ).format(name=sql.Literal(table), t=ident)
            row = await (await conn.execute(query)).fetchone()
            assert row is not None
            sizes[table] = TableSize(int(row[0]), int(row[1]), int(row[2]))
    return sizes


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Settings:
    journeys: int
    rounds: int
    concurrency: tuple[int, ...]
    backends: tuple[str, ...]
    durability: Durability
    warmup: int
    database_url: str | None
    retention: bool = False


@dataclass
class StorageReport:
    journeys: dict[str, int] = field(default_factory=dict)  # form -> completed journeys measured
    retention: bool = False  # ours pruned by its retention, both forms compacted, before "after"
    kept_all: dict[str, TableSize] = field(default_factory=dict)  # ours compacted before its retention ran
    before: dict[str, dict[str, TableSize]] = field(default_factory=dict)
    after: dict[str, dict[str, TableSize]] = field(default_factory=dict)

    def per_journey(self, form: str, table: str) -> tuple[float, float, float]:
        """(relation bytes, row bytes, rows) per completed journey."""
        before, after, n = self.before[form][table], self.after[form][table], self.journeys[form]
        return (
            (after.total - before.total) / n,
            (after.rows_bytes - before.rows_bytes) / n,
            (after.rows - before.rows) / n,
        )


@dataclass
class Report:
    settings: Settings
    # (backend, concurrency, form) -> journeys/s of each round
    rates: dict[tuple[str, int, str], list[float]] = field(default_factory=dict)
    # (backend, concurrency, form) -> CPU ms of this process per journey, each round
    cpu: dict[tuple[str, int, str], list[float]] = field(default_factory=dict)
    storage: StorageReport | None = None


async def run_batch(form: Form, users: Sequence[str], concurrency: int) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all threads) to complete ``users`` with ``concurrency`` in flight."""
    pending = iter(users)

    async def worker() -> None:
        for user in pending:  # one shared iterator: each worker takes the next user
            await form.run(user)

    gc.collect()
    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(users))))))
    return time.perf_counter() - started, time.process_time() - cpu_started


async def bench_backend(backend: str, settings: Settings, report: Report, scratch: Path) -> None:
    with store_urls(backend, settings.database_url, scratch) as urls:
        async with AsyncExitStack() as stack:
            forms: list[Form] = [
                await stack.enter_async_context(open_ours(urls["ours"], settings.durability, settings.retention)),
                await stack.enter_async_context(open_raw(urls["raw"], settings.durability)),
            ]
            storage = StorageReport(retention=settings.retention) if backend == "postgres" else None
            if storage is not None:
                for form in forms:
                    storage.before[form.name] = await table_sizes(urls[form.name], tables_of(form.name))
            counts = dict.fromkeys((f.name for f in forms), 0)
            serial = 0

            def users(form: Form, n: int) -> list[str]:
                nonlocal serial
                serial += 1
                counts[form.name] += n
                return [f"u{serial}-{i}" for i in range(n)]

            for form in forms:
                await form.prepare()
                await run_batch(form, users(form, settings.warmup), max(settings.concurrency))
            for concurrency in settings.concurrency:
                for round_no in range(settings.rounds):
                    for form in forms:
                        elapsed, cpu = await run_batch(form, users(form, settings.journeys), concurrency)
                        rate, cpu_ms = settings.journeys / elapsed, cpu * 1000 / settings.journeys
                        report.rates.setdefault((backend, concurrency, form.name), []).append(rate)
                        report.cpu.setdefault((backend, concurrency, form.name), []).append(cpu_ms)
                        print(
                            f"  {backend:<8} C={concurrency:<3} round {round_no + 1}/{settings.rounds} "
                            f"{form.name:<4} {rate:9.1f} journeys/s {cpu_ms:8.2f} CPU ms/journey",
                            flush=True,
                        )
            if storage is not None:
                if settings.retention:
                    ours = forms[0]
                    assert isinstance(ours, Ours)
                    await vacuum_full(urls["ours"], tables_of("ours"))
                    storage.kept_all = await table_sizes(urls["ours"], tables_of("ours"))
                    pruned = await ours.runtime.retention.run()
                    print(f"  retention: {pruned.pruned} finished journeys pruned to their latest checkpoint")
                    for form in forms:
                        await vacuum_full(urls[form.name], tables_of(form.name))
                for form in forms:
                    storage.after[form.name] = await table_sizes(urls[form.name], tables_of(form.name))
                    storage.journeys[form.name] = counts[form.name]
                report.storage = storage


def tables_of(form: str) -> tuple[str, ...]:
    return CHECKPOINT_TABLES + OUR_TABLES if form == "ours" else CHECKPOINT_TABLES


@contextmanager
def store_urls(backend: str, server_url: str | None, scratch: Path) -> Iterator[dict[str, str]]:
    """The store URL of each form on ``backend``: separate SQLite files, separate Postgres databases."""
    if backend == "memory":
        yield {"ours": "memory://", "raw": "memory://"}
        return
    if backend == "sqlite":
        yield {form: f"sqlite:///{scratch}/{form}-{uuid.uuid4().hex[:8]}.db" for form in ("ours", "raw")}
        return
    assert server_url is not None
    with fresh_database(server_url, "ours") as ours, fresh_database(server_url, "raw") as raw:
        yield {"ours": ours, "raw": raw}


# --- the printed report -------------------------------------------------------------------------


def print_report(report: Report) -> None:
    s = report.settings
    print()
    print(
        f"== journeys/s: 8 auto steps, no-op agents, durability={s.durability!r}, "
        f"N={s.journeys} per batch, {s.rounds} interleaved rounds (median; min-max over rounds) =="
    )
    print("   cpu = CPU ms per journey of this process, all threads (the database server's CPU is not in it)")
    header = (
        f"{'backend':<9}{'C':>4}  {'ours j/s':>24}  {'raw j/s':>24}  {'ours cpu':>9}  {'raw cpu':>9}  "
        f"{'ours/raw':>8}  {'per-round ratios'}"
    )
    print(header)
    print("-" * len(header))
    missed: list[str] = []
    for backend in s.backends:
        for concurrency in s.concurrency:
            ours = report.rates.get((backend, concurrency, "ours"))
            raw = report.rates.get((backend, concurrency, "raw"))
            if not ours or not raw:
                continue
            ratio = statistics.median(ours) / statistics.median(raw)
            per_round = " ".join(f"{o / r:.2f}" for o, r in zip(ours, raw, strict=True))
            cpu = [statistics.median(report.cpu[(backend, concurrency, form)]) for form in ("ours", "raw")]
            print(
                f"{backend:<9}{concurrency:>4}  {_rate(ours):>24}  {_rate(raw):>24}  {cpu[0]:>9.2f}  {cpu[1]:>9.2f}  "
                f"{ratio:>8.2f}  {per_round}"
            )
            if backend == "postgres" and ratio < RATIO_TARGET:
                missed.append(f"TARGET MISSED: postgres C={concurrency}: ours/raw = {ratio:.2f} < {RATIO_TARGET}")
    if report.storage is not None:
        missed += print_storage(report.storage)
    print()
    for line in missed:
        print(line)
    if not missed:
        print("all targets met" if "postgres" in s.backends else "(targets apply to postgres, which was not run)")


def _rate(rates: Sequence[float]) -> str:
    return f"{statistics.median(rates):.1f} ({min(rates):.1f}-{max(rates):.1f})"


def print_storage(storage: StorageReport) -> list[str]:
    print()
    print(
        "== Postgres bytes per completed journey (fresh database per form; "
        f"ours over {storage.journeys['ours']} journeys, raw over {storage.journeys['raw']}) =="
    )
    print("   relation = pg_total_relation_size delta (heap + TOAST + indexes); rows = sum(pg_column_size(t.*))")
    columns = ("relation", "rows", "rows/j")
    header = f"{'':<20}" + "".join(f"{f'{form} {c}':>16}" for form in ("ours", "raw") for c in columns)
    print(header)
    print("-" * len(header))
    totals = {form: [0.0, 0.0, 0.0] for form in ("ours", "raw")}
    for table in CHECKPOINT_TABLES + OUR_TABLES:
        line = f"{table:<20}"
        for form in ("ours", "raw"):
            if table not in storage.before[form]:
                line += f"{'-':>16}" * 3
                continue
            figures = storage.per_journey(form, table)
            totals[form] = [a + b for a, b in zip(totals[form], figures, strict=True)]
            line += f"{figures[0]:>16.0f}{figures[1]:>16.0f}{figures[2]:>16.1f}"
        print(line)
    print("-" * len(header))
    ours, raw = totals["ours"], totals["raw"]
    print(f"{'total':<20}{ours[0]:>16.0f}{ours[1]:>16.0f}{ours[2]:>16.1f}{raw[0]:>16.0f}{raw[1]:>16.0f}{raw[2]:>16.1f}")
    print(f"{'ours/raw':<20}{ours[0] / raw[0]:>16.2f}{ours[1] / raw[1]:>16.2f}")
    # The target is the bytes on disk (relation size). Row bytes leave indexes and page space out, and
    # count a row PostgreSQL compressed (any row over its 2 kB TOAST threshold) at its compressed size.
    print("   target: ours relation <= raw relation (bytes on disk); row bytes are shown for insight")
    if storage.retention:
        kept = sum(storage.kept_all[t].total - storage.before["ours"][t].total for t in storage.kept_all)
        print(f"   ours before retention (compacted too): {kept / storage.journeys['ours']:.0f} B/journey")
        print(f"   with --retention: ours kept (retention, VACUUM FULL); target ours relation <= DBOS {DBOS_BYTES}")
        if ours[0] > DBOS_BYTES:
            return [f"TARGET MISSED: postgres storage after retention: ours {ours[0]:.0f} B/journey > {DBOS_BYTES}"]
    if ours[0] > raw[0]:
        return [f"TARGET MISSED: postgres storage (relation size): ours {ours[0]:.0f} B/journey > raw {raw[0]:.0f}"]
    return []


# --- entry point --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--journeys", type=int, default=200, help="journeys per timed batch (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds ours/raw/ours/raw... (default 3)")
    parser.add_argument(
        "--concurrency",
        default="1,16",
        help="journeys in flight; a comma list reports each (default 1,16: sequential and concurrent)",
    )
    parser.add_argument("--database-url", default=None, help="a Postgres server; default: start a throwaway one")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma list of memory,sqlite,postgres")
    parser.add_argument("--durability", choices=("sync", "async", "exit"), default="async")
    parser.add_argument("--warmup", type=int, default=None, help="untimed journeys per form first (default N/10)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny batches, one round")
    parser.add_argument(
        "--retention", action="store_true", help="postgres bytes after ours applies its checkpoint retention"
    )
    args = parser.parse_args(argv)
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    journeys, rounds, concurrency, warmup = batch_sizes(parser, args)
    return Settings(journeys, rounds, concurrency, backends, args.durability, warmup, args.database_url, args.retention)


def batch_sizes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[int, int, tuple[int, ...], int]:
    """Journeys per batch, rounds, in-flight levels and warm-up journeys from the options every benchmark
    of batches takes (``--journeys``, ``--rounds``, ``--concurrency``, ``--warmup``, ``--quick``)."""
    concurrency = tuple(int(c) for c in str(args.concurrency).split(",") if c.strip())
    if not concurrency or min(concurrency) < 1 or args.journeys < 1 or args.rounds < 1:
        parser.error("--journeys, --rounds and --concurrency must be positive")
    journeys, rounds = args.journeys, args.rounds
    if args.quick:
        journeys, rounds, concurrency = 4, 1, (1, 4)
    warmup = args.warmup if args.warmup is not None else max(2, journeys // 10)
    return journeys, rounds, concurrency, warmup


async def main_async(settings: Settings) -> Report:
    report = Report(settings)
    print(
        f"overhead benchmark: backends={','.join(settings.backends)} N={settings.journeys} "
        f"rounds={settings.rounds} concurrency={','.join(map(str, settings.concurrency))} "
        f"durability={settings.durability}",
        flush=True,
    )
    scratch = Path(tempfile.mkdtemp(prefix="journeys-bench-"))
    try:
        for backend in settings.backends:
            await bench_backend(backend, settings, report, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    if "postgres" in settings.backends:
        with postgres_server(settings.database_url) as server_url:
            settings.database_url = server_url
            report = asyncio.run(main_async(settings))
    else:
        report = asyncio.run(main_async(settings))
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
