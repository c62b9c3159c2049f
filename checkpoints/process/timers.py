"""Durable timers: rows with a due time, claimed by workers with an atomic UPDATE.

Claiming is ``UPDATE … SET status = 'firing' WHERE status = 'scheduled' AND due_at <= now`` (with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so two workers never fire the same timer, and a timer is
never claimed before its due time. A claim is a lease: a worker that dies mid-firing leaves the row
``firing``, and once ``lease`` has passed another worker claims it again (firing is idempotent).
A firing whose agent call failed after its retries leaves the timer ``failed``: an incident that no worker
claims until an operator retries it (``rearm_statement``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Executable,
    Integer,
    String,
    and_,
    any_,
    bindparam,
    column,
    func,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from checkpoints.backends.base import Backend
from checkpoints.clock import Clock, SystemClock
from checkpoints.events import EventLog
from checkpoints.process.waits import LIVE_TIMERS, among, cancel_siblings, completed_event
from checkpoints.rows import IgnoredRow, executable, insert_ignore
from checkpoints.schema.tables import process_timers, process_waits
from checkpoints.seq_race import again_if_lost

DEFAULT_LEASE = timedelta(seconds=60)
ARMED = ("scheduled", "firing")  # a timer that may still fire
FAILED = "failed"  # an incident: its firing failed after its agent's retries; an operator's retry re-arms it
# A timer's data about the failed attempts at its current tick (graphs.process.timers' handler retries).
RETRY_KEYS = ("attempts", "last_error")
# The data key of a failed tick kept apart from its repeating timer (TimerStore.incident_statement): that timer's id.
TICK_OF = "tick_of"


def cancel_timers(which: ColumnElement[bool]) -> Executable:
    """The statement that cancels the armed (or failed) timers ``which`` (a condition on ``process_timers``) takes."""
    return (
        update(process_timers)
        .where(which, process_timers.c.status.in_(LIVE_TIMERS))
        .values(status="cancelled", claimed_by=None)
    )


@dataclass(frozen=True, slots=True)
class Timer:
    """A durable timer: what it belongs to, when it is due, and how it repeats."""

    timer_id: str
    instance_id: str | None
    wait_id: str | None
    element: str
    purpose: str
    definition: dict[str, Any]
    due_at: datetime
    origin: datetime
    ticks: int
    status: str
    data: dict[str, Any]
    claimed_by: str | None
    claimed_at: datetime | None
    fired_at: datetime | None
    created_at: datetime


def tick_id(timer: Timer) -> str:
    """The id of the timer that keeps ``timer``'s current tick apart (its incident): the same for every try."""
    return f"{timer.timer_id}@{_utc(timer.due_at).isoformat()}"


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("timer times must be timezone-aware")
    return moment.astimezone(UTC)


# The scheduler's loop reads it after every pass (once a second): built once.
_NEXT_DUE = select(func.min(process_timers.c.due_at).label("due_at")).where(process_timers.c.status == "scheduled")


class TimerStore:
    """Durable timers: scheduled, claimed when due by one worker, fired, dropped or cancelled."""

    def __init__(self, backend: Backend, clock: Clock, events: EventLog | None = None) -> None:
        """``events``: the log in which a fired timer's wait completion is recorded as it fires."""
        self._backend = backend
        self._engine = backend.engine
        self._clock = clock
        self._events = events
        self._postgres = backend.postgres
        # Workers on many machines share PostgreSQL: a worker whose clock runs ahead must not fire a timer early,
        # so a claim also waits for the database's clock. Not on a virtual clock (tests, simulations), whose time
        # is the one that counts; SQLite's processes share one machine, and so its clock.
        self._database_clock = self._postgres and isinstance(clock, SystemClock)
        # Built once: every worker's pass claims once a second, mostly nothing, and building the statement was
        # 45 % of an idle pass's CPU.
        self._claim = self._claim_statement()

    def schedule_row(
        self,
        timer_id: str,
        *,
        element: str,
        purpose: str,
        definition: dict[str, Any],
        due_at: datetime,
        origin: datetime,
        instance_id: str | None = None,
        wait_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> IgnoredRow:
        """The timer's row, scheduled (written once: a replayed arm writes nothing twice): a wait's, written with the
        event that arms it (``EventLog.append``'s ``also``); another's, by :meth:`execute` or in a caller's
        transaction (``IgnoredRow.statement``)."""
        return IgnoredRow(
            process_timers,
            {
                "timer_id": timer_id,
                "instance_id": instance_id,
                "wait_id": wait_id,
                "element": element,
                "purpose": purpose,
                "definition": definition,
                "due_at": _utc(due_at),
                "origin": _utc(origin),
                "ticks": 0,
                "status": "scheduled",
                "data": data or {},
                "claimed_by": None,
                "claimed_at": None,
                "fired_at": None,
                "created_at": self._clock.now().astimezone(UTC),
            },
        )

    async def execute(self, statements: Sequence[Executable | IgnoredRow]) -> None:
        """Run ``statements`` (a timer's row: its insert) in one transaction."""
        async with self._engine.begin() as conn:
            for statement in statements:
                await conn.execute(executable(statement, self._engine))

    async def claim_due(
        self, now: datetime, worker: str, *, limit: int = 500, lease: timedelta = DEFAULT_LEASE
    ) -> list[Timer]:
        """Claim up to ``limit`` timers due at ``now`` (and expired leases), earliest first.

        The earliest ``limit`` of each kind (scheduled and due; firing on an expired lease) are read in due order
        from the ``(status, due_at)`` index, then the earliest ``limit`` of both are claimed: one condition with
        an OR of the two could not be read in due order from the index, so each claim read and sorted every
        timer due (a backlog of 10,000 due together: 20 batches, each scanning and sorting all that were left).
        On PostgreSQL the candidates are locked as they are read, skipping those another worker holds; the
        claim's own transaction ends at once, so a candidate of one kind beyond the ``limit`` taken is let go."""
        now = _utc(now)
        params = {"p_now": now, "p_expired_before": now - lease, "p_worker": worker, "p_limit": limit}
        timers = [Timer(**row) for row in await self._backend.write([self._claim], params)]
        return sorted(timers, key=lambda timer: (timer.due_at, timer.timer_id))

    def _claim_statement(self) -> Executable:
        """:meth:`claim_due`'s statement, bound from ``p_now``, ``p_expired_before`` (a lease taken before it has
        expired), ``p_worker`` and ``p_limit``."""
        t = process_timers.c
        now = bindparam("p_now", type_=t.due_at.type)
        due = func.least(now, func.now()) if self._database_clock else now
        limit = bindparam("p_limit", type_=Integer)
        scheduled = and_(t.status == "scheduled", t.due_at <= due)
        expired_before = bindparam("p_expired_before", type_=t.claimed_at.type)
        expired = and_(t.status == "firing", t.due_at <= due, t.claimed_at <= expired_before)
        kinds = []
        for claimable_kind in (scheduled, expired):
            earliest = select(t.timer_id, t.due_at).where(claimable_kind).order_by(t.due_at).limit(limit)
            if self._postgres:
                earliest = earliest.with_for_update(skip_locked=True)
            kinds.append(earliest.subquery())
        both = union_all(*(select(kind.c.timer_id, kind.c.due_at) for kind in kinds)).subquery()
        candidates = select(both.c.timer_id).order_by(both.c.due_at).limit(limit).scalar_subquery()
        # An array the planner matches on the primary key, as among() does; IN (SELECT ...) hash-joined a scan.
        chosen = t.timer_id == any_(func.ARRAY(candidates, type_=ARRAY(String))) if self._postgres else None
        return (
            update(process_timers)
            .where(chosen if chosen is not None else t.timer_id.in_(candidates), or_(scheduled, expired))
            .values(
                status="firing",
                claimed_by=bindparam("p_worker", type_=t.claimed_by.type),
                claimed_at=bindparam("p_now", type_=t.claimed_at.type),
            )
            .returning(*process_timers.c)
        )

    def fired_statement(
        self, timer: Timer, worker: str, *, next_due: datetime | None, ticks: int, data: dict[str, Any] | None = None
    ) -> Executable:
        """Finish a claimed firing: reschedule a repeating timer at ``next_due``, else mark it fired. ``data``:
        the timer's data from now on (None: unchanged)."""
        t = process_timers.c
        values: dict[str, Any] = {"ticks": ticks, "fired_at": self._clock.now().astimezone(UTC), "claimed_by": None}
        if data is not None:
            values["data"] = data
        if next_due is not None:
            values |= {"status": "scheduled", "due_at": _utc(next_due)}
        else:
            values |= {"status": "fired"}
        return (
            update(process_timers)
            .where(t.timer_id == timer.timer_id, t.status == "firing", t.claimed_by == worker)
            .values(**values)
        )

    def dropped_statement(self, timer: Timer, worker: str) -> Executable:
        """A claimed timer whose wait had already been won elsewhere: it never fires."""
        t = process_timers.c
        return (
            update(process_timers)
            .where(t.timer_id == timer.timer_id, t.status == "firing", t.claimed_by == worker)
            .values(status="cancelled", claimed_by=None)
        )

    def failed_statement(self, timer: Timer, worker: str, incident: dict[str, Any]) -> Executable:
        """A claimed firing that failed after its retries: the timer stands ``failed`` (an incident), with
        ``incident`` (what failed) in its data, and no worker claims it again until :meth:`rearm_statement`."""
        t = process_timers.c
        return (
            update(process_timers)
            .where(t.timer_id == timer.timer_id, t.status == "firing", t.claimed_by == worker)
            .values(status=FAILED, claimed_by=None, data={**timer.data, "incident": incident})
        )

    def retry_statement(
        self, timer: Timer, worker: str, *, at: datetime, lease: timedelta, data: dict[str, Any]
    ) -> Executable:
        """A claimed firing that failed and is to be tried again at ``at``: its claim is given up as if it had
        been taken ``lease`` before ``at``, so :meth:`claim_due` (on that lease) takes it again then and not
        before, at the same due time (its tick is the same tick); ``data`` says how many attempts failed."""
        t = process_timers.c
        return (
            update(process_timers)
            .where(t.timer_id == timer.timer_id, t.status == "firing", t.claimed_by == worker)
            .values(claimed_by=None, claimed_at=_utc(at) - lease, data=data)
        )

    def incident_statement(self, timer: Timer, incident: dict[str, Any]) -> Executable:
        """Keep one tick of a repeating timer that failed for good as a timer of its own, standing ``failed`` (an
        incident, ``incident`` in its data, ``tick_of`` naming ``timer``), while ``timer`` goes on to its next
        tick; :meth:`rearm_statement` fires that tick once more (see :func:`tick_id`)."""
        data = {k: v for k, v in timer.data.items() if k not in RETRY_KEYS}
        return insert_ignore(
            self._engine,
            process_timers,
            timer_id=tick_id(timer),
            instance_id=timer.instance_id,
            wait_id=timer.wait_id,
            element=timer.element,
            purpose=timer.purpose,
            definition=timer.definition,
            due_at=_utc(timer.due_at),
            origin=_utc(timer.origin),
            ticks=0,
            status=FAILED,
            data={**data, TICK_OF: timer.timer_id, "incident": incident},
            claimed_by=None,
            claimed_at=None,
            fired_at=None,
            created_at=self._clock.now().astimezone(UTC),
        )

    def rearm_statement(self, timer: Timer) -> Executable:
        """An operator's retry of a failed timer: scheduled again at its own due time (past, so the next pass
        fires it), its incident and its count of failed attempts cleared."""
        t = process_timers.c
        data = {k: v for k, v in timer.data.items() if k not in ("incident", *RETRY_KEYS)}
        return (
            update(process_timers)
            .where(t.timer_id == timer.timer_id, t.status == FAILED)
            .values(status="scheduled", claimed_by=None, data=data)
        )

    async def fire_waits(self, claimed: Sequence[Timer], worker: str) -> list[tuple[Timer, dict[str, Any]]]:
        """Fire claimed catch and boundary timers as one set: each resolves its wait unless something else
        won it first. One transaction for the whole batch; returns the timers that won their wait.

        A winner's wait gets its resolution and its other timers, subscriptions and inbox task are
        cancelled (``cancel_siblings``); a loser is cancelled: it never fires. With an event log, each
        winner's wait completion is logged in the same transaction (``completed_event``), so the thread
        it resumes has nothing more to record for it.
        """
        if not claimed:
            return []
        # A concurrent append took an event sequence number of one of these instances, or a cancel writing the
        # same rows in the other order deadlocked with it; all of it rolled back, so going again is safe.
        return await again_if_lost(lambda: self._fire_waits(claimed, worker), attempts=5)

    async def _fire_waits(self, claimed: Sequence[Timer], worker: str) -> list[tuple[Timer, dict[str, Any]]]:
        now = self._clock.now().astimezone(UTC)
        w = process_waits.c
        params: list[dict[str, Any]] = [
            {
                "w_id": timer.wait_id,
                "w_resolution": {
                    "option": timer.element,
                    "kind": "timer",
                    "timer_id": timer.timer_id,
                    "due_at": timer.due_at.isoformat(),
                    "fired_at": now.isoformat(),
                    **({"logged": True} if self._events is not None else {}),
                },
            }
            for timer in claimed
        ]
        wait_ids = [str(t.wait_id) for t in claimed]
        t = process_timers.c
        async with self._engine.begin() as conn:
            await conn.execute(*self._resolve_waits(params, now))
            claimed_waits = among(w.wait_id, wait_ids, postgres=self._postgres)
            # The winner's id alone, not the resolution: decoding 500 JSON documents a batch to read one key of each.
            winner = w.resolution["timer_id"].as_string().label("winner")
            rows = (await conn.execute(select(w.wait_id, w.element, winner).where(claimed_waits))).all()
            winner_of = {r.wait_id: r.winner for r in rows}
            element_of = {r.wait_id: r.element for r in rows}
            won = [timer for timer in claimed if winner_of.get(timer.wait_id) == timer.timer_id]
            won_ids = [timer.timer_id for timer in won]
            lost = list({timer.timer_id for timer in claimed} - set(won_ids))
            mine = (t.status == "firing", t.claimed_by == worker)
            if won_ids:
                await conn.execute(
                    update(process_timers)
                    .where(among(t.timer_id, won_ids, postgres=self._postgres), *mine)
                    .values(status="fired", fired_at=now, ticks=t.ticks + 1, claimed_by=None)
                )
                siblings = cancel_siblings([str(x.wait_id) for x in won], postgres=self._postgres, keep_timers=won_ids)
                for statement in siblings:
                    await conn.execute(statement)
            if lost:
                await conn.execute(
                    update(process_timers)
                    .where(among(t.timer_id, lost, postgres=self._postgres), *mine)
                    .values(status="cancelled", claimed_by=None)
                )
            # Each winner's own resolution (the one its wait now holds), not that of another timer of the
            # same wait in this batch, which lost.
            resolution_of = {timer.timer_id: p["w_resolution"] for timer, p in zip(claimed, params, strict=True)}
            if self._events is not None and won:
                completions = [
                    (
                        str(timer.instance_id),
                        completed_event(element_of[timer.wait_id], str(timer.wait_id), resolution_of[timer.timer_id]),
                    )
                    for timer in won
                ]
                await self._events.append_in(conn, completions)
        return [(timer, resolution_of[timer.timer_id]) for timer in won]

    def _resolve_waits(self, params: Sequence[dict[str, Any]], now: datetime) -> tuple[Any, ...]:
        """Resolve each still-waiting wait of ``params`` with its resolution; when a batch holds two timers
        of one wait, the first (claim order) resolves it, as if they had been applied one after another.

        PostgreSQL: one statement for the whole batch (``UPDATE … FROM jsonb_to_recordset(batch)``), not one
        per timer; SQLite: one statement per timer, sent with ``executemany`` in-process.
        """
        w = process_waits.c
        if not self._postgres:
            resolve = (
                update(process_waits)
                .where(w.wait_id == bindparam("w_id"), w.status == "waiting")
                .values(status="resolved", resolution=bindparam("w_resolution"), resolved_at=now)
            )
            return (resolve, list(params))
        first: dict[str, dict[str, Any]] = {}
        for p in params:
            first.setdefault(str(p["w_id"]), p["w_resolution"])
        # One JSON parameter, whatever the batch's size: the statement's text is the same for every batch
        # (SQLAlchemy compiles it once), the server parses one statement, and the driver encodes one document
        # (an array of JSON texts would have every quote in them escaped one by one).
        fired = (
            func.jsonb_to_recordset(bindparam("w_fired", type_=JSONB))
            .table_valued(column("wait_id", String), column("resolution", JSONB))
            .render_derived(name="fired", with_types=True)
        )
        resolve = (
            update(process_waits)
            .where(w.wait_id == fired.c.wait_id, w.status == "waiting")
            .values(status="resolved", resolution=fired.c.resolution, resolved_at=now)
        )
        return (resolve, {"w_fired": [{"wait_id": i, "resolution": r} for i, r in first.items()]})

    async def next_due(self) -> datetime | None:
        [row] = await self._backend.read(_NEXT_DUE)
        value = row["due_at"]
        if isinstance(value, str):  # SQLite's MIN() loses the column type
            value = datetime.fromisoformat(value)
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value  # type: ignore[no-any-return]

    async def get(self, timer_id: str) -> Timer | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(process_timers).where(process_timers.c.timer_id == timer_id))).first()
        return Timer(**row._mapping) if row else None

    async def find(
        self, *, instance_id: str | None = None, wait_id: str | None = None, purpose: str | None = None
    ) -> list[Timer]:
        query = select(process_timers).order_by(process_timers.c.due_at, process_timers.c.timer_id)
        if instance_id is not None:
            query = query.where(process_timers.c.instance_id == instance_id)
        if wait_id is not None:
            query = query.where(process_timers.c.wait_id == wait_id)
        if purpose is not None:
            query = query.where(process_timers.c.purpose == purpose)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Timer(**r._mapping) for r in rows]

    def cancel_statement(self, timer_id: str) -> Executable:
        return cancel_timers(process_timers.c.timer_id == timer_id)
