"""Startup recovery at scale: how long ``runtime.recover()`` (what every ``journeys serve`` runs as it starts,
``server.queues.run_on_left_journeys``) takes over a database holding N open journeys that are all parked (each
process instance waits at a user task: no work in flight, nothing for recovery to do).

Each instance runs ``start → user task``; once N are parked, a fresh runtime (as a restarted server opens one)
times ``recover()``. Printed per backend: the seconds it took, per open journey, and how many it resumed (0).

    python benchmarks/recovery.py --instances 10000                                  # SQLite and a throwaway Postgres
    python benchmarks/recovery.py --instances 100000 --backends postgres --database-url postgresql://...
    python benchmarks/recovery.py --instances 1000 --clone-to 100000                 # 1,000 parked, copied to 100,000
    python benchmarks/recovery.py --quick                                            # smoke run

``--clone-to N`` copies the parked journeys' index rows and the savers' checkpoint and write rows (not their blobs,
which recovery's query does not read) under new ids until N journeys stand parked: parking 100,000 one by one takes
most of an hour on a loaded box. The copies are for the indexed query only: a recovery that read each journey's
state (before) would fail on them, so time that one on real journeys.

The exit code is 0 whatever the figures: this is a report.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.overhead import fresh_database, postgres_server
from graphs import JourneyRuntime
from graphs.kernel.instances import OPEN_STATUSES

SPEC = {
    "name": "parked",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "user_task", "id": "approve", "title": "Approve", "assignee": "ana"},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> approve", "approve -> end"],
}
AT_ONCE = 32  # starts in flight together while parking


async def park(url: str, instances: int) -> float:
    """Start ``instances`` process instances, each parked at its user task; the seconds it took."""
    began = time.perf_counter()
    async with JourneyRuntime.open(url, durability="exit") as rt:
        await rt.processes.deploy(SPEC)
        gate = asyncio.Semaphore(AT_ONCE)

        async def one(n: int) -> None:
            async with gate:
                await rt.processes.start("parked", f"k{n}")

        for first in range(0, instances, 1000):
            await asyncio.gather(*(one(n) for n in range(first, min(first + 1000, instances))))
    return time.perf_counter() - began


def clone(url: str, total: int) -> int:
    """Copy the parked journeys (their ``journey_instances`` rows and the savers' ``checkpoints`` and writes rows)
    under new ids until ``total`` journeys stand parked; how many there are then."""
    from sqlalchemy import MetaData, Table, create_engine, func, insert, literal, select

    sync_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(sync_url)
    writes_name = "checkpoint_writes" if url.startswith("postgresql") else "writes"
    with engine.begin() as conn:
        meta = MetaData()
        tables = [Table(name, meta, autoload_with=conn) for name in ("journey_instances", "checkpoints", writes_name)]
        have = conn.execute(select(func.count()).select_from(tables[0])).scalar_one()
        copies = max(0, -(-total // have) - 1)  # rounds up: at least ``total`` in all
        for copy in range(1, copies + 1):
            for table in tables:
                key = "instance_id" if table.name == "journey_instances" else "thread_id"
                columns = [
                    (table.c[key] + literal(f"-c{copy}")).label(key) if c.name == key else c for c in table.columns
                ]
                source = select(*columns)
                if table.name == "journey_instances":
                    source = source.where(~table.c.instance_id.contains("-c"))
                else:
                    source = source.where(~table.c.thread_id.contains("-c"))
                conn.execute(insert(table).from_select([c.name for c in table.columns], source))
        return int(conn.execute(select(func.count()).select_from(tables[0])).scalar_one())


async def recover(url: str) -> tuple[float, int, int]:
    """A fresh runtime's ``recover()``: its seconds, how many journeys it resumed, and how many its query found
    that might have work in flight (each then read)."""
    async with JourneyRuntime.open(url, durability="exit") as rt:
        began = time.perf_counter()
        resumed = await rt.recover()
        seconds = time.perf_counter() - began
        return seconds, len(resumed), len(await rt.store.index.unparked(OPEN_STATUSES))


@contextmanager
def store(backend: str, server_url: str | None) -> Iterator[str]:
    if backend == "sqlite":
        scratch = Path(tempfile.mkdtemp(prefix="journeys-recovery-"))
        try:
            yield f"sqlite:///{scratch / 'bench.db'}"
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    with postgres_server(server_url) as server, fresh_database(server, "recovery") as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--database-url", help="a PostgreSQL server to make the benchmark's database on")
    parser.add_argument("--quick", action="store_true", help="200 instances (a smoke run)")
    parser.add_argument("--clone-to", type=int, help="copy the parked journeys until this many stand parked")
    args = parser.parse_args()
    instances = 200 if args.quick else args.instances
    for backend in args.backends.split(","):
        with store(backend, args.database_url) as url:
            parked = asyncio.run(park(url, instances))
            journeys = clone(url, args.clone_to) if args.clone_to else instances
            seconds, resumed, candidates = asyncio.run(recover(url))
        print(
            f"{backend}: {journeys} parked journeys ({instances} parked in {parked:.1f} s); recover() took "
            f"{seconds:.2f} s ({seconds / journeys * 1e6:.0f} µs per open journey), resumed {resumed}, "
            f"{candidates} read"
        )


if __name__ == "__main__":
    main()
