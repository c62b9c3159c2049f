"""Helpers shared by the process and timer tests: a runtime on a virtual clock, agents that record their
calls, and a dump of every table a process move could write (to prove a refused move wrote nothing)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import select

from agents import AgentRequest, RetrySettings
from checkpoints.clock import VirtualClock
from checkpoints.events import EventLog
from checkpoints.schema.tables import (
    PROCESS_TABLES,
    journey_designs,
    journey_events,
    journey_instances,
    process_message_starts,
)
from graphs.runtime import JourneyRuntime

FAST = RetrySettings(max_attempts=2, initial_delay=0.001, max_delay=0.002, jitter=0.001)
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def virtual_clock() -> VirtualClock:
    return VirtualClock(T0)


@asynccontextmanager
async def runtime(url: str, clock: VirtualClock | None = None, **options: Any) -> AsyncIterator[JourneyRuntime]:
    async with JourneyRuntime.open(url, clock=clock or virtual_clock(), retry=FAST, **options) as rt:
        yield rt


class Calls:
    """Agents that return a fixed (or computed) output and record every call they get."""

    def __init__(self) -> None:
        self.log: list[tuple[str, dict[str, Any]]] = []

    def agent(
        self, intent: str, output: Mapping[str, Any] | Callable[[AgentRequest], Mapping[str, Any]] | None = None
    ) -> Callable[[AgentRequest], Mapping[str, Any]]:
        def call(request: AgentRequest) -> Mapping[str, Any]:
            self.log.append((intent, dict(request.payload)))
            if callable(output):
                return output(request)
            return dict(output or {})

        call.__name__ = intent
        return call

    def failing(self, intent: str) -> Callable[[AgentRequest], Mapping[str, Any]]:
        from agents import PermanentAgentError

        def call(request: AgentRequest) -> Mapping[str, Any]:
            self.log.append((intent, dict(request.payload)))
            raise PermanentAgentError(f"{intent} failed", intent=intent)

        call.__name__ = intent
        return call

    def intents(self) -> list[str]:
        return [intent for intent, _payload in self.log]

    def register(self, rt: JourneyRuntime, intent: str, output: Any = None) -> None:
        rt.agents.register(intent, self.agent(intent, output), replace=True)

    def flaky(self, rt: JourneyRuntime, intent: str, output: Mapping[str, Any] | None = None) -> dict[str, bool]:
        """Register an agent for ``intent`` that fails at once (a permanent error: no retries) while the
        returned switch's ``"down"`` is true, and answers ``output`` once it is set false."""
        switch = {"down": True}
        failing, working = self.failing(intent), self.agent(intent, output)

        def call(request: AgentRequest) -> Mapping[str, Any]:
            return failing(request) if switch["down"] else working(request)

        call.__name__ = intent
        rt.agents.register(intent, call, replace=True)
        return switch


async def table_dump(rt: JourneyRuntime) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables a process operation can touch, for before/after comparisons."""
    dump: dict[str, list[tuple[Any, ...]]] = {}
    async with rt.store.engine.connect() as conn:
        for table in (*PROCESS_TABLES, process_message_starts, journey_designs, journey_events, journey_instances):
            rows = (await conn.execute(select(table))).all()
            dump[table.name] = sorted((tuple(str(v) for v in row) for row in rows), key=str)
    return dump


def linear(name: str, *middle: dict[str, Any], version: int = 1, **extra: Any) -> dict[str, Any]:
    """start → middle… → end, one flow after another."""
    elements = [{"type": "start", "id": "start"}, *middle, {"type": "end", "id": "end"}]
    ids = [e["id"] for e in elements]
    flows = [f"{a} -> {b}" for a, b in itertools.pairwise(ids)]
    return {"name": name, "version": version, "elements": elements, "flows": flows, **extra}


def payment_spec() -> dict[str, Any]:
    """An invoice that waits for its payment: a message correlated on ``invoice_no``."""
    return linear(
        "invoice",
        {
            "type": "message",
            "id": "paid",
            "message": "payment.received",
            "correlation": "invoice_no",
            "outputs": ["amount"],
        },
    )


def boundary_spec(name: str) -> dict[str, Any]:
    """ana signs, unless an interrupting boundary timer two days on ends it another way (``lapsed``)."""
    return {
        "name": name,
        "elements": [
            {"type": "start", "id": "start"},
            user_task("sign"),
            {"type": "boundary_timer", "id": "too_late", "attached_to": "sign", "timer": {"duration": "P2D"}},
            {"type": "end", "id": "signed"},
            {"type": "end", "id": "lapsed"},
        ],
        "flows": ["start -> sign", "sign -> signed", "too_late -> lapsed"],
    }


def reminder(notify: str, cycle: str = "R/PT1H", attached_to: str = "approve") -> dict[str, Any]:
    """A non-interrupting boundary timer on ``attached_to`` whose every tick calls the agent ``notify``."""
    return {
        "type": "boundary_timer",
        "id": "nudge",
        "attached_to": attached_to,
        "timer": {"cycle": cycle},
        "interrupting": False,
        "notify": notify,
    }


def user_task(id: str, **fields: Any) -> dict[str, Any]:
    return {"type": "user_task", "id": id, "title": id.replace("_", " "), "assignee": "ana", **fields}


def waiting_elements(view: Mapping[str, Any]) -> list[str]:
    return [str(w["element"]) for w in view["waiting"]]


def counted_write_transactions(log: EventLog, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the transactions ``log`` writes grouped events in (``append_together``): one entry per transaction,
    how many events it wrote (a batch's, or 1 for an event written alone after its batch failed)."""
    transactions: list[int] = []
    together, alone = log._write_together, log._write_alone

    async def counted_together(batch: Any) -> dict[str, bool]:
        written = await together(batch)
        transactions.append(len(written))
        return written

    async def counted_alone(*args: Any) -> bool:
        transactions.append(1)
        return await alone(*args)

    monkeypatch.setattr(log, "_write_together", counted_together)
    monkeypatch.setattr(log, "_write_alone", counted_alone)
    return transactions


@contextmanager
def statements_sent(
    monkeypatch: pytest.MonkeyPatch, starting: str
) -> Iterator[list[tuple[psycopg.AsyncCursor[Any], Any]]]:
    """Each statement sent meanwhile through an async psycopg cursor whose SQL starts with ``starting`` (one of the
    saver's, say): its cursor and its parameters, in the order sent (PostgreSQL)."""
    sent: list[tuple[psycopg.AsyncCursor[Any], Any]] = []
    execute = psycopg.AsyncCursor.execute
    starting = starting.strip()

    async def watched(cursor: psycopg.AsyncCursor[Any], query: Any, params: Any = None, **kwargs: Any) -> Any:
        if isinstance(query, str) and query.strip().startswith(starting):
            sent.append((cursor, params))
        return await execute(cursor, query, params, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", watched)
    yield sent
    monkeypatch.undo()


async def napping(rt: JourneyRuntime, clock: VirtualClock, name: str, count: int) -> list[str]:
    """Start ``count`` instances of process ``name``, which naps an hour, then move ``clock`` past their timers'
    due time (not yet fired): their instance ids, in start order (each started with variables ``{"n": n}``)."""
    await rt.processes.deploy(linear(name, {"type": "timer", "id": "nap", "timer": {"duration": "PT1H"}}))
    started = [await rt.processes.start(name, f"cust-{n}", {"n": n}) for n in range(count)]
    clock.advance(timedelta(hours=1))
    return [view["instance_id"] for view in started]
