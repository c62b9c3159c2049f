"""Startup recovery at scale: how long ``runtime.recover()`` (what every ``journeys serve`` runs as it starts,
``server.queues.run_on_left_journeys``) takes over a database holding N open journeys that are all parked (each
process instance waits at a user task: no work in flight, nothing for recovery to do).

Each instance runs ``start → user task``; once N are parked, a fresh runtime (as a restarted server opens one)
times ``recover()``. Printed per backend: the seconds it took, per open journey, and how many it resumed (0).

    python benchmarks/recovery.py --instances 10000                                  # SQLite and a throwaway Postgres
    python benchmarks/recovery.py --instances 100000 --backends postgres --database-url postgresql://...
    python benchmarks/recovery.py --quick                                            # smoke run

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


async def recover(url: str) -> tuple[float, int]:
    """A fresh runtime's ``recover()``: its seconds and how many journeys it resumed."""
    async with JourneyRuntime.open(url, durability="exit") as rt:
        began = time.perf_counter()
        resumed = await rt.recover()
        return time.perf_counter() - began, len(resumed)


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
    args = parser.parse_args()
    instances = 200 if args.quick else args.instances
    for backend in args.backends.split(","):
        with store(backend, args.database_url) as url:
            parked = asyncio.run(park(url, instances))
            seconds, resumed = asyncio.run(recover(url))
        print(
            f"{backend}: {instances} parked journeys (parked in {parked:.1f} s); recover() took {seconds:.2f} s "
            f"({seconds / instances * 1e6:.0f} µs per open journey), resumed {resumed}"
        )


if __name__ == "__main__":
    main()
