"""Lifecycle metrics (SPEC L5, the seed's section 7.1 and success metrics), as queries over the
lifecycle tables, with the seed's targets beside each figure. All figures cover every journey in the
store; durations are in days of the runtime clock."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.lifecycle_tables import (
    lifecycle_journey_states,
    lifecycle_rollback_history,
    lifecycle_transitions,
    lifecycle_units_of_work,
    lifecycle_validation_results,
)

DAY = 86_400.0
# The seed's targets (DES-002 section 7.1 and the design notes' success metrics).
TARGETS = {
    "sandbox_days": 15,
    "pilot_days": 15,
    "time_to_production_days": 30,
    "rollback_rate": 0.10,
    "exit_criteria_first_pass_rate": 0.95,
    "task_failure_rate": 0.02,
    "client_success_rate": 0.90,
}


def _days(seconds: Sequence[float]) -> dict[str, Any]:
    if not seconds:
        return {"count": 0, "mean_days": None, "median_days": None, "min_days": None, "max_days": None}
    days = [s / DAY for s in seconds]
    return {
        "count": len(days),
        "mean_days": round(statistics.fmean(days), 4),
        "median_days": round(statistics.median(days), 4),
        "min_days": round(min(days), 4),
        "max_days": round(max(days), 4),
    }


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


class LifecycleMetrics:
    """Reports over lifecycle journeys: stage durations, rollback and pass rates, active journeys."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def stage_durations(self) -> dict[str, dict[str, Any]]:
        """Time spent in each stage, over every stay that has ended (promotion, rollback, cancel, completion)."""
        t = lifecycle_transitions
        query = select(t.c.from_stage, t.c.from_stage_seconds).where(
            t.c.from_stage.in_(["sandbox", "pilot", "production"]), t.c.from_stage_seconds.is_not(None)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        by_stage: dict[str, list[float]] = {"sandbox": [], "pilot": [], "production": []}
        for stage, seconds in rows:
            by_stage[stage].append(float(seconds))
        return {stage: _days(seconds) for stage, seconds in by_stage.items()}

    async def time_to_production(self) -> dict[str, Any]:
        """From journey start to its first entry into production, over journeys that got there."""
        t, s = lifecycle_transitions, lifecycle_journey_states
        first = (
            select(t.c.journey_id, func.min(t.c.at).label("reached"))
            .where(t.c.to_stage == "production")
            .group_by(t.c.journey_id)
            .subquery()
        )
        query = select(s.c.started_at, first.c.reached).join(first, first.c.journey_id == s.c.journey_id)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return _days([(r.reached - r.started_at).total_seconds() for r in rows])

    async def rollback_rate(self) -> dict[str, Any]:
        """Share of journeys that entered ROLLBACK at least once."""
        async with self._engine.connect() as conn:
            journeys = (await conn.execute(select(func.count()).select_from(lifecycle_journey_states))).scalar_one()
            rolled = (
                await conn.execute(select(func.count(distinct(lifecycle_rollback_history.c.journey_id))))
            ).scalar_one()
        return {"journeys": int(journeys), "rolled_back": int(rolled), "rate": _rate(int(rolled), int(journeys))}

    async def exit_criteria_first_pass_rate(self) -> dict[str, Any]:
        """Share of stage exits (promotions and completion) whose first validation passed."""
        v = lifecycle_validation_results
        first = (
            select(func.min(v.c.id).label("id"))
            .where(v.c.kind.in_(["promotion", "completion"]))
            .group_by(v.c.journey_id, v.c.event)
            .subquery()
        )
        query = select(v.c.passed).join(first, first.c.id == v.c.id)
        async with self._engine.connect() as conn:
            passed = [bool(r.passed) for r in (await conn.execute(query)).all()]
        return {"gates": len(passed), "passed_first_time": sum(passed), "rate": _rate(sum(passed), len(passed))}

    async def active_journeys_by_stage(self) -> dict[str, int]:
        """Journeys not yet completed or cancelled, by their current stage (rollback included)."""
        s = lifecycle_journey_states
        query = (
            select(s.c.current_stage, func.count())
            .where(s.c.status.in_(["active", "rollback"]))
            .group_by(s.c.current_stage)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        counts = {"sandbox": 0, "pilot": 0, "production": 0, "rollback": 0}
        counts.update({stage: int(n) for stage, n in rows})
        return counts

    async def task_failure_rate(self) -> dict[str, Any]:
        """Tasks that ended failed (after their retries) over tasks that ran, across every unit of work."""
        u = lifecycle_units_of_work
        query = select(
            func.coalesce(func.sum(u.c.tasks_total), 0),
            func.coalesce(func.sum(u.c.tasks_failed), 0),
            func.coalesce(func.sum(u.c.task_attempts), 0),
            func.count(),
        )
        async with self._engine.connect() as conn:
            tasks, failed, attempts, runs = (await conn.execute(query)).one()
        return {
            "units_of_work": int(runs),
            "tasks": int(tasks),
            "failed": int(failed),
            "attempts": int(attempts),
            "rate": _rate(int(failed), int(tasks)),
            "tasks_per_unit": round(int(tasks) / int(runs), 3) if runs else None,
        }

    async def client_success_rate(self) -> dict[str, Any]:
        """Journeys that reached production, over journeys that reached production or were cancelled."""
        t, s = lifecycle_transitions, lifecycle_journey_states
        async with self._engine.connect() as conn:
            reached = (
                await conn.execute(select(func.count(distinct(t.c.journey_id))).where(t.c.to_stage == "production"))
            ).scalar_one()
            cancelled = (
                await conn.execute(
                    select(func.count()).where(
                        s.c.status == "cancelled",
                        s.c.journey_id.not_in(select(t.c.journey_id).where(t.c.to_stage == "production")),
                    )
                )
            ).scalar_one()
        return {
            "reached_production": int(reached),
            "cancelled_before_production": int(cancelled),
            "rate": _rate(int(reached), int(reached) + int(cancelled)),
        }

    async def summary(self) -> dict[str, Any]:
        """Every figure at once, with the seed's targets: the dashboard's numbers."""
        return {
            "stage_durations": await self.stage_durations(),
            "time_to_production": await self.time_to_production(),
            "rollback_rate": await self.rollback_rate(),
            "exit_criteria_first_pass_rate": await self.exit_criteria_first_pass_rate(),
            "active_journeys_by_stage": await self.active_journeys_by_stage(),
            "task_failure_rate": await self.task_failure_rate(),
            "client_success_rate": await self.client_success_rate(),
            "targets": dict(TARGETS),
        }
