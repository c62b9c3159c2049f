"""Lifecycle metrics (SPEC L5, the seed's section 7.1 and success metrics), from the reporting queries
over the lifecycle tables (``checkpoints.reports``), with the seed's targets beside each figure. All
figures cover every journey in the store (or, :meth:`LifecycleMetrics.seen_by`, those one viewer may see);
durations are in days of the runtime clock."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.ownership import Viewer
from checkpoints.reports import LifecycleReports

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
    """The dashboard's figures: the reporting queries shaped into days and rates beside their targets."""

    def __init__(self, engine: AsyncEngine, viewer: Viewer | None = None) -> None:
        self._engine = engine
        self._reports = LifecycleReports(engine, viewer)

    def seen_by(self, viewer: Viewer | None) -> LifecycleMetrics:
        """The same figures over only the journeys ``viewer`` may see (None: every journey)."""
        return LifecycleMetrics(self._engine, viewer)

    async def stage_durations(self) -> dict[str, dict[str, Any]]:
        """Time spent in each stage, over every stay that has ended (promotion, rollback, cancel, completion)."""
        by_stage: dict[str, list[float]] = {"sandbox": [], "pilot": [], "production": []}
        for stage, seconds in await self._reports.stage_stays():
            by_stage[stage].append(seconds)
        return {stage: _days(seconds) for stage, seconds in by_stage.items()}

    async def time_to_production(self) -> dict[str, Any]:
        """From journey start to its first entry into production, over journeys that got there."""
        reached = await self._reports.production_reached()
        return _days([(at - started).total_seconds() for started, at in reached])

    async def rollback_rate(self) -> dict[str, Any]:
        """Share of journeys that entered ROLLBACK at least once."""
        journeys, rolled = await self._reports.journeys_rolled_back()
        return {"journeys": journeys, "rolled_back": rolled, "rate": _rate(rolled, journeys)}

    async def exit_criteria_first_pass_rate(self) -> dict[str, Any]:
        """Share of stage exits (promotions and completion) whose first validation passed."""
        passed = await self._reports.first_exit_gates()
        return {"gates": len(passed), "passed_first_time": sum(passed), "rate": _rate(sum(passed), len(passed))}

    async def active_journeys_by_stage(self) -> dict[str, int]:
        """Journeys not yet completed or cancelled, by their current stage (rollback included)."""
        counts = {"sandbox": 0, "pilot": 0, "production": 0, "rollback": 0}
        counts.update(await self._reports.open_journeys_by_stage())
        return counts

    async def task_failure_rate(self) -> dict[str, Any]:
        """Tasks that ended failed (after their retries) over tasks that ran, across every unit of work."""
        tasks, failed, attempts, runs = await self._reports.task_totals()
        return {
            "units_of_work": runs,
            "tasks": tasks,
            "failed": failed,
            "attempts": attempts,
            "rate": _rate(failed, tasks),
            "tasks_per_unit": round(tasks / runs, 3) if runs else None,
        }

    async def client_success_rate(self) -> dict[str, Any]:
        """Journeys that reached production, over journeys that reached production or were cancelled."""
        reached, cancelled = await self._reports.production_outcomes()
        return {
            "reached_production": reached,
            "cancelled_before_production": cancelled,
            "rate": _rate(reached, reached + cancelled),
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
