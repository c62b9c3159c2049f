"""Ours against the peers users would pick instead, side by side in one run on one PostgreSQL.

The same workflow of 8 no-op steps runs in three forms, each in a database of its own on the same server
(so the bytes each stores are separable), in interleaved batches (ours, raw, dbos, ours, raw, dbos, ...),
one journey at a time and 16 in flight:

- **ours**: an 8-step Structured journey of ``auto`` steps, each calling a registered no-op agent, on
  ``JourneyRuntime.open(url)`` with the runtime's defaults (a structured journey checkpoints where it
  stops, LangGraph's "exit"), its default policies and its event log: nothing switched off.
- **raw**: hand-written LangGraph, a ``StateGraph`` of 8 nodes compiled on the same official
  ``AsyncPostgresSaver`` (opened by the same code as ours), invoked with ``durability="sync"``.
- **dbos**: DBOS Transact (``pip install -e '.[bench]'``, pinned), an async ``@DBOS.workflow`` awaiting 8
  async ``@DBOS.step`` functions, its system database on the same server.

**The guarantee every form gives: a step that has returned is durable before the next step starts.**

- ours: each step's agent call appends its completion event (output included, keyed by the call) to
  the event log in a committed transaction before the node returns, so before the next step runs.
  The LangGraph checkpoint is written where the run stops (here, the end); a run a crash cut short is
  run again from its last checkpoint, or from its first event when it has none, and replays every step
  whose completion event is logged from that event instead of calling its agent again
  (``JourneyEngine.settled_state``, ``nodes.agent_call.logged``; killed for real in
  ``tests/test_crash_resume.py``).
- raw: LangGraph's ``durability="sync"`` awaits the checkpoint of each superstep (one node here) before
  the next superstep starts. Its default, "async", writes it while the next step already runs, which
  would not give the guarantee.
- dbos: ``invoke_step`` records each step's output in ``operation_outputs`` (a committed transaction)
  before the step returns to the workflow; a recovered workflow replays recorded steps.

Printed per form and in-flight level (medians over the rounds):

- journeys/s;
- CPU ms per journey of this process (all threads: ``time.process_time``; DBOS's background threads run
  throughout, so their polling is counted in every form's figure, a little);
- CPU ms per journey of the PostgreSQL server: user + system CPU time of the postmaster and every
  process under it, read with psutil (reaped backends are in the postmaster's children times), so
  background writers, the WAL writer and autovacuum count too. "n/a" when the server is not local;
- bytes per completed journey: the growth of every table of the form's database (``pg_total_relation_size``:
  heap, TOAST and indexes) over all the journeys run, divided by their number, as stored and as kept: every
  form compacted (``VACUUM FULL``), ours after its default retention (``keep_latest``) first; and the same
  per relation: each table (heap and TOAST) and each of its indexes;

then the ratios ours/dbos and ours/raw, and ``TARGET MISSED`` lines for targets not met (throughput, and
bytes kept per journey at most DBOS's).

    python benchmarks/peers.py                                  # full report; starts a throwaway Postgres
    python benchmarks/peers.py --database-url postgresql://...  # on an existing server
    python benchmarks/peers.py --quick                          # smoke run (the test suite)

The exit code is 0 whatever the figures: this is a report.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
import psycopg

from agents.registry import AgentRegistry
from benchmarks.overhead import (
    INTENT,
    SCOPE,
    STEPS,
    Ours,
    Raw,
    batch_sizes,
    build_raw_graph,
    fresh_database,
    noop_agent,
    postgres_server,
)
from checkpoints.savers import open_saver
from checkpoints.url import parse_store_url
from graphs.runtime import JourneyRuntime

FORMS = ("ours", "raw", "dbos")
# Throughput targets (issue 15): ours/dbos at every in-flight level, ours/raw at one in flight.
DBOS_TARGET = 2.0
RAW_TARGET = 1.0


class Form(Protocol):
    name: str

    async def run(self, user: str) -> None: ...


# --- the DBOS form ------------------------------------------------------------------------------


class Dbos:
    """The workflow as a DBOS user writes it: 8 steps, each a no-op, awaited in order."""

    name = "dbos"

    def __init__(self, workflow: Callable[[str], Awaitable[int]]) -> None:
        self.workflow = workflow

    async def run(self, user: str) -> None:
        done = await self.workflow(user)
        if done != len(STEPS):
            raise RuntimeError(f"dbos: workflow for {user} ran {done} steps, not {len(STEPS)}")


def import_dbos() -> Any | None:
    """The ``dbos`` module, or None when the ``bench`` extra is not installed."""
    try:
        return importlib.import_module("dbos")
    except ImportError:
        return None


@asynccontextmanager
async def open_dbos(dbos: Any, url: str) -> AsyncIterator[Dbos]:
    """DBOS launched on ``url`` as its system database, with the benchmark's workflow registered."""
    DBOS = dbos.DBOS
    steps = []
    for step_name in STEPS:

        async def step(_user: str) -> dict[str, Any]:
            return await noop_agent(None)

        steps.append(DBOS.step(name=step_name)(step))

    async def journey(user: str) -> int:
        done = 0
        for step in steps:
            output = await step(user)
            done += bool(output["ok"])
        return done

    workflow = DBOS.workflow(name="peers_bench_journey")(journey)
    config = {"name": "journeys-peers-bench", "system_database_url": url, "log_level": "WARNING"}
    DBOS(config=config)
    DBOS.launch()
    try:
        yield Dbos(workflow)
    finally:
        DBOS.destroy(destroy_registry=True)


# --- ours and raw (the forms of benchmarks/overhead.py) -----------------------------------------


@asynccontextmanager
async def open_ours(url: str) -> AsyncIterator[Ours]:
    registry = AgentRegistry()
    registry.register(INTENT, noop_agent, name="noop", permissions={SCOPE})
    async with JourneyRuntime.open(url, agents=registry) as runtime:  # the runtime's default durability
        ours = Ours(runtime)
        await ours.prepare()
        yield ours


@asynccontextmanager
async def open_raw(url: str) -> AsyncIterator[Raw]:
    async with open_saver(parse_store_url(url)) as saver:
        yield Raw(build_raw_graph().compile(checkpointer=saver), "sync")


async def apply_retention(form: Form) -> bool:
    """Run ours's default checkpoint retention (keep_latest) once, as its periodic job would, past the
    settling time; True when it ran. Only ours has retention (the peers are compacted alone)."""
    if not isinstance(form, Ours):
        return False
    retention = form.runtime.retention
    await retention.run(now=datetime.now(UTC) + timedelta(seconds=retention.policy.settle + 1))
    return True


# --- measuring the server -----------------------------------------------------------------------


class ServerCpu:
    """CPU seconds used so far by a local PostgreSQL server: the postmaster and all its processes."""

    def __init__(self, postmaster: psutil.Process | None) -> None:
        self.postmaster = postmaster

    @classmethod
    def find(cls, url: str) -> ServerCpu:
        """The server behind ``url``, found from a backend's parent; not measured when it is not local."""
        with psycopg.connect(url, autocommit=True) as conn:  # the backend is looked up while it is alive
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            try:
                assert row is not None
                postmaster = psutil.Process(int(row[0])).parent()
                if postmaster is None or "postgres" not in postmaster.name().lower():
                    return cls(None)
                postmaster.cpu_times()
            except (psutil.Error, AssertionError):
                return cls(None)
        return cls(postmaster)

    def seconds(self) -> float | None:
        if self.postmaster is None:
            return None
        # A backend that has exited (and been reaped) is in the postmaster's children times.
        own = self.postmaster.cpu_times()
        total = own.user + own.system + own.children_user + own.children_system
        for child in self.postmaster.children(recursive=True):
            try:
                times = child.cpu_times()
            except psutil.Error:  # exited since the listing: its time moves into children times
                continue
            total += times.user + times.system
        return total


def database_bytes(url: str) -> int:
    """Bytes of every table of the database at ``url``: heap, TOAST and indexes."""
    query = """
        SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'm')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
    """
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def table_bytes(url: str) -> dict[str, int]:
    """Bytes per relation of the database at ``url``, for the breakdown: each table as ``schema.table`` (heap
    and TOAST: ``pg_table_size``) and each of its indexes as ``schema.table/index``; they add up to
    :func:`database_bytes`."""
    query = """
        SELECT n.nspname || '.' || t.relname, pg_table_size(t.oid), NULL
        FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE t.relkind IN ('r', 'p', 'm')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
        UNION ALL
        SELECT n.nspname || '.' || t.relname, pg_relation_size(i.indexrelid), c.relname
        FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE t.relkind IN ('r', 'p', 'm')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
    """
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(query).fetchall()
    return {str(table) if index is None else f"{table}/{index}": int(size) for table, size, index in rows}


def vacuum_full(url: str) -> None:
    """Compact every table, so rows deleted by retention leave the relation sizes."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM FULL")


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Settings:
    journeys: int
    rounds: int
    concurrency: tuple[int, ...]
    warmup: int
    database_url: str | None


@dataclass
class Report:
    settings: Settings
    forms: tuple[str, ...] = ()
    # (concurrency, form) -> per round: journeys/s, client CPU ms per journey, server CPU ms per journey
    rates: dict[tuple[int, str], list[float]] = field(default_factory=dict)
    cpu: dict[tuple[int, str], list[float]] = field(default_factory=dict)
    server_cpu: dict[tuple[int, str], list[float]] = field(default_factory=dict)
    journeys: dict[str, int] = field(default_factory=dict)  # form -> completed journeys, warm-up included
    bytes_before: dict[str, int] = field(default_factory=dict)
    bytes_after: dict[str, int] = field(default_factory=dict)
    # What each form keeps for good: ours after its retention, every form compacted (VACUUM FULL), so that the
    # figures compare live data (as stored, a table written 16 at a time holds half-full index pages).
    bytes_retained: dict[str, int] = field(default_factory=dict)
    tables_before: dict[str, dict[str, int]] = field(default_factory=dict)
    tables_after: dict[str, dict[str, int]] = field(default_factory=dict)
    tables_retained: dict[str, dict[str, int]] = field(default_factory=dict)

    def per_journey(self, form: str, after: dict[str, int]) -> float:
        return (after[form] - self.bytes_before[form]) / self.journeys[form]


async def run_batch(form: Form, users: Sequence[str], concurrency: int, server: ServerCpu) -> tuple[float, ...]:
    """Wall seconds, client CPU seconds and server CPU seconds (-1: not measured) to complete ``users``."""
    pending = iter(users)

    async def worker() -> None:
        for user in pending:  # one shared iterator: each worker takes the next user
            await form.run(user)

    if len(users) > 8:  # a real batch starts on a collected heap; a smoke run's is not timed for figures
        gc.collect()
    server_started = server.seconds()
    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(users))))))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    server_now = server.seconds()
    server_cpu = -1.0 if server_started is None or server_now is None else server_now - server_started
    return elapsed, cpu, server_cpu


async def bench(settings: Settings, server_url: str, report: Report) -> None:
    dbos = import_dbos()
    names = FORMS if dbos is not None else tuple(f for f in FORMS if f != "dbos")
    report.forms = names
    server = ServerCpu.find(server_url)
    with ExitStack() as databases:
        urls = {name: databases.enter_context(fresh_database(server_url, name)) for name in names}
        async with AsyncExitStack() as stack:
            opened: list[Form] = [
                await stack.enter_async_context(open_ours(urls["ours"])),
                await stack.enter_async_context(open_raw(urls["raw"])),
            ]
            if dbos is not None:
                opened.append(await stack.enter_async_context(open_dbos(dbos, urls["dbos"])))
            for form in opened:
                report.bytes_before[form.name] = database_bytes(urls[form.name])
                report.tables_before[form.name] = table_bytes(urls[form.name])
            serial = 0

            def users(form: Form, n: int) -> list[str]:
                nonlocal serial
                serial += 1
                report.journeys[form.name] = report.journeys.get(form.name, 0) + n
                return [f"u{serial}-{i}" for i in range(n)]

            for form in opened:
                await run_batch(form, users(form, settings.warmup), max(settings.concurrency), server)
            for concurrency in settings.concurrency:
                for round_no in range(settings.rounds):
                    for form in opened:
                        elapsed, cpu, server_cpu = await run_batch(
                            form, users(form, settings.journeys), concurrency, server
                        )
                        key = (concurrency, form.name)
                        n = settings.journeys
                        report.rates.setdefault(key, []).append(n / elapsed)
                        report.cpu.setdefault(key, []).append(cpu * 1000 / n)
                        if server_cpu >= 0:
                            report.server_cpu.setdefault(key, []).append(server_cpu * 1000 / n)
                        server_ms = f"{server_cpu * 1000 / n:8.2f}" if server_cpu >= 0 else "     n/a"
                        print(
                            f"  C={concurrency:<3} round {round_no + 1}/{settings.rounds} {form.name:<5}"
                            f"{n / elapsed:9.1f} journeys/s {cpu * 1000 / n:8.2f} client CPU ms/journey"
                            f" {server_ms} server CPU ms/journey",
                            flush=True,
                        )
            for form in opened:
                report.bytes_after[form.name] = database_bytes(urls[form.name])
                report.tables_after[form.name] = table_bytes(urls[form.name])
            for form in opened:
                await apply_retention(form)
                vacuum_full(urls[form.name])
                report.bytes_retained[form.name] = database_bytes(urls[form.name])
                report.tables_retained[form.name] = table_bytes(urls[form.name])


# --- the printed report -------------------------------------------------------------------------


def _median(values: Sequence[float] | None) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, width: int, digits: int = 1) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def _ratio(ours: float | None, other: float | None) -> float | None:
    return None if ours is None or not other else ours / other


def print_report(report: Report) -> list[str]:
    s, forms = report.settings, report.forms
    print()
    print(f"== 8 no-op steps per journey, N={s.journeys} per batch, {s.rounds} interleaved rounds (medians) ==")
    print("   client cpu = CPU ms/journey of this process, all threads (time.process_time)")
    print("   server cpu = CPU ms/journey of the PostgreSQL server: postmaster + all its processes (psutil)")
    if "dbos" not in forms:
        print("   the DBOS form was left out: dbos is not installed (pip install -e '.[bench]')")
    header = f"{'C':>4}  {'form':<6}{'journeys/s':>12}{'client cpu':>12}{'server cpu':>12}"
    print(header)
    print("-" * len(header))
    for concurrency in s.concurrency:
        for form in forms:
            key = (concurrency, form)
            print(
                f"{concurrency:>4}  {form:<6}{_fmt(_median(report.rates.get(key)), 12)}"
                f"{_fmt(_median(report.cpu.get(key)), 12, 2)}{_fmt(_median(report.server_cpu.get(key)), 12, 2)}"
            )
    print()
    print("== bytes per completed journey (growth of all tables of the form's own database / journeys run) ==")
    for form in forms:
        line = f"      {form:<6}{report.per_journey(form, report.bytes_after):>12.0f}   over {report.journeys[form]}"
        if form in report.bytes_retained:
            kept = "after retention and VACUUM FULL" if form == "ours" else "after VACUUM FULL (it has no retention)"
            line += f"; {kept}: {report.per_journey(form, report.bytes_retained):.0f}"
        print(line)
    print("   by relation (a table: heap and TOAST; table/index: one of its indexes), bytes per journey:")
    for form in forms:
        print(f"      {form:<6}as stored: {_breakdown(report, form, report.tables_after[form])}")
        if form in report.tables_retained:
            print(f"      {form:<6}kept: {_breakdown(report, form, report.tables_retained[form])}")
    print()
    print("== ratios (ours / peer): journeys/s, client cpu, server cpu; bytes per journey ==")
    missed: list[str] = []
    for peer in (f for f in forms if f != "ours"):
        for concurrency in s.concurrency:
            ratios = [
                _ratio(_median(figures.get((concurrency, "ours"))), _median(figures.get((concurrency, peer))))
                for figures in (report.rates, report.cpu, report.server_cpu)
            ]
            print(
                f"   ours/{peer:<5} C={concurrency:<3}"
                + "".join(_fmt(r, 8, 2) for r in ratios)
                + f"   per round j/s: {_per_round(report, concurrency, peer)}"
            )
            target = DBOS_TARGET if peer == "dbos" else RAW_TARGET if concurrency == 1 else None
            if target is not None and ratios[0] is not None and ratios[0] < target:
                missed.append(f"TARGET MISSED: C={concurrency}: ours/{peer} journeys/s = {ratios[0]:.2f} < {target}")
        bytes_ratio = report.per_journey("ours", report.bytes_after) / report.per_journey(peer, report.bytes_after)
        line = f"   ours/{peer:<5} bytes per journey {bytes_ratio:.2f} as stored"
        if "ours" in report.bytes_retained and peer in report.bytes_retained:
            kept = report.per_journey("ours", report.bytes_retained) / report.per_journey(peer, report.bytes_retained)
            line += f", {kept:.2f} kept"
            if peer == "dbos" and kept > 1:
                missed.append(f"TARGET MISSED: bytes kept per journey: ours/dbos = {kept:.2f} > 1")
        print(line)
    print()
    for line in missed:
        print(line)
    if not missed:
        print("targets met (ours >= 2x dbos at every C, ours >= 1x raw at C=1, bytes kept ours <= dbos)")
    return missed


def _breakdown(report: Report, form: str, sizes: dict[str, int]) -> str:
    """Each relation's growth per journey, largest first (those that did not grow left out)."""
    grown = {
        name: (size - report.tables_before[form].get(name, 0)) / report.journeys[form] for name, size in sizes.items()
    }
    return ", ".join(f"{name} {b:.0f}" for name, b in sorted(grown.items(), key=lambda kv: -kv[1]) if b > 0)


def _per_round(report: Report, concurrency: int, peer: str) -> str:
    ours, other = report.rates.get((concurrency, "ours"), []), report.rates.get((concurrency, peer), [])
    return " ".join(f"{o / p:.2f}" for o, p in zip(ours, other, strict=True))


# --- entry point --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--journeys", type=int, default=150, help="journeys per timed batch (default 150)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the forms (default 3)")
    parser.add_argument("--concurrency", default="1,16", help="journeys in flight, a comma list (default 1,16)")
    parser.add_argument("--database-url", default=None, help="a Postgres server; default: start a throwaway one")
    parser.add_argument("--warmup", type=int, default=None, help="untimed journeys per form first (default N/10)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny batches, one round")
    args = parser.parse_args(argv)
    journeys, rounds, concurrency, warmup = batch_sizes(parser, args)
    return Settings(journeys, rounds, concurrency, warmup, args.database_url)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    with postgres_server(settings.database_url) as server_url:
        print(
            f"peers benchmark: N={settings.journeys} rounds={settings.rounds} "
            f"concurrency={','.join(map(str, settings.concurrency))} forms={','.join(FORMS)}",
            flush=True,
        )
        report = Report(settings)
        asyncio.run(bench(settings, server_url, report))
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
