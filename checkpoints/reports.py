"""Reporting queries across every journey: the figures behind the lifecycle dashboard (the shaping
into days, rates and targets is ``graphs.lifecycle.metrics``). Given a viewer, every query counts only
the journeys it may see (:mod:`checkpoints.ownership`), filtered in the query."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, distinct, func, select, true
from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.ownership import Viewer, visible_to
from checkpoints.schema.lifecycle_tables import (
    lifecycle_journey_states,
    lifecycle_rollback_history,
    lifecycle_transitions,
    lifecycle_units_of_work,
    lifecycle_validation_results,
)
from checkpoints.schema.tables import journey_instances

ACTIVE = ("sandbox", "pilot", "production")


class LifecycleReports:
    """Counts and durations over the lifecycle tables of every journey (``viewer``: of those it may see)."""

    def __init__(self, engine: AsyncEngine, viewer: Viewer | None = None) -> None:
        self._engine = engine
        self._viewer = viewer

    def _seen(self, journey_id: ColumnElement[Any]) -> ColumnElement[bool]:
        """A WHERE clause: the journey is one the viewer may see (always true without a viewer)."""
        if self._viewer is None or self._viewer.admin:
            return true()
        i = journey_instances.c
        visible = select(i.instance_id).where(visible_to(self._viewer, i.owner, i.tenant, i.shared_group))
        return journey_id.in_(visible)

    async def stage_stays(self) -> list[tuple[str, float]]:
        """(stage, seconds) of every stay in an active stage that has ended."""
        t = lifecycle_transitions
        query = select(t.c.from_stage, t.c.from_stage_seconds).where(
            t.c.from_stage.in_(ACTIVE), t.c.from_stage_seconds.is_not(None), self._seen(t.c.journey_id)
        )
        async with self._engine.connect() as conn:
            return [(str(stage), float(seconds)) for stage, seconds in (await conn.execute(query)).all()]

    async def production_reached(self) -> list[tuple[datetime, datetime]]:
        """(started_at, first entry into production) of every journey that got there."""
        t, s = lifecycle_transitions, lifecycle_journey_states
        first = (
            select(t.c.journey_id, func.min(t.c.at).label("reached"))
            .where(t.c.to_stage == "production", self._seen(t.c.journey_id))
            .group_by(t.c.journey_id)
            .subquery()
        )
        query = select(s.c.started_at, first.c.reached).join(first, first.c.journey_id == s.c.journey_id)
        async with self._engine.connect() as conn:
            return [(r.started_at, r.reached) for r in (await conn.execute(query)).all()]

    async def journeys_rolled_back(self) -> tuple[int, int]:
        """(journeys, journeys that entered ROLLBACK at least once)."""
        async with self._engine.connect() as conn:
            s, r = lifecycle_journey_states.c, lifecycle_rollback_history.c
            journeys = (
                await conn.execute(
                    select(func.count()).select_from(lifecycle_journey_states).where(self._seen(s.journey_id))
                )
            ).scalar_one()
            rolled = (
                await conn.execute(select(func.count(distinct(r.journey_id))).where(self._seen(r.journey_id)))
            ).scalar_one()
        return int(journeys), int(rolled)

    async def first_exit_gates(self) -> list[bool]:
        """Whether each journey's first validation of each stage exit (promotion, completion) passed."""
        v = lifecycle_validation_results
        first = (
            select(func.min(v.c.id).label("id"))
            .where(v.c.kind.in_(["promotion", "completion"]), self._seen(v.c.journey_id))
            .group_by(v.c.journey_id, v.c.event)
            .subquery()
        )
        query = select(v.c.passed).join(first, first.c.id == v.c.id)
        async with self._engine.connect() as conn:
            return [bool(r.passed) for r in (await conn.execute(query)).all()]

    async def open_journeys_by_stage(self) -> dict[str, int]:
        """Journeys active or rolling back, by current stage (stages with none are left out)."""
        s = lifecycle_journey_states
        query = (
            select(s.c.current_stage, func.count())
            .where(s.c.status.in_(["active", "rollback"]), self._seen(s.c.journey_id))
            .group_by(s.c.current_stage)
        )
        async with self._engine.connect() as conn:
            return {str(stage): int(n) for stage, n in (await conn.execute(query)).all()}

    async def task_totals(self) -> tuple[int, int, int, int]:
        """(tasks that ran, tasks failed, task attempts, unit-of-work runs) across every run."""
        u = lifecycle_units_of_work
        query = select(
            func.coalesce(func.sum(u.c.tasks_total), 0),
            func.coalesce(func.sum(u.c.tasks_failed), 0),
            func.coalesce(func.sum(u.c.task_attempts), 0),
            func.count(),
        ).where(self._seen(u.c.journey_id))
        async with self._engine.connect() as conn:
            tasks, failed, attempts, runs = (await conn.execute(query)).one()
        return int(tasks), int(failed), int(attempts), int(runs)

    async def production_outcomes(self) -> tuple[int, int]:
        """(journeys that reached production, journeys cancelled before reaching it)."""
        t, s = lifecycle_transitions, lifecycle_journey_states
        async with self._engine.connect() as conn:
            reached = (
                await conn.execute(
                    select(func.count(distinct(t.c.journey_id))).where(
                        t.c.to_stage == "production", self._seen(t.c.journey_id)
                    )
                )
            ).scalar_one()
            cancelled = (
                await conn.execute(
                    select(func.count()).where(
                        s.c.status == "cancelled",
                        self._seen(s.c.journey_id),
                        s.c.journey_id.not_in(select(t.c.journey_id).where(t.c.to_stage == "production")),
                    )
                )
            ).scalar_one()
        return int(reached), int(cancelled)

    async def gate_evaluation_ms(self, kind: str) -> list[float]:
        """How long each gate of ``kind`` (start, promotion, completion, rollback) took to evaluate."""
        v = lifecycle_validation_results
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(v.c.evaluation_ms).where(v.c.kind == kind, self._seen(v.c.journey_id)))
            return [float(ms) for (ms,) in rows]
