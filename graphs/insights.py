"""Views shared by all four patterns, derived from the event log and the instance index (SPEC P5):
the milestone tracker and journey analytics."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import func, select

from checkpoints.store import Store
from checkpoints.tables import journey_events, journey_instances

MILESTONE_EVENTS = ("step.completed", "area.completed", "session.completed", "saga.compensated")


class MilestoneTracker:
    """The milestones each journey run reached, read from its events."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def milestones(self, instance_id: str) -> list[dict[str, Any]]:
        """Milestones reached by one journey run (a structured step, an area, a whole session), in order."""
        events = await self._store.events.list(instance_id, types=MILESTONE_EVENTS)
        return [
            {
                "milestone": e.step or e.type,
                "type": e.type,
                "reached_at": e.created_at.isoformat(),
                "seq": e.seq,
            }
            for e in events
            if e.type != "step.completed" or e.payload.get("milestone", True)
        ]


class JourneyAnalytics:
    """Counts and rates over all journeys: by status, completion and time to finish."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def summary(self, *, pattern: str | None = None) -> dict[str, Any]:
        """Counts by status, completion rate, mean time to finish, and per-step completions and failures."""
        by_status = await self._store.index.count_by_status(pattern=pattern)
        total = sum(by_status.values())
        finished = select(journey_instances).where(journey_instances.c.status.in_(["completed", "compensated"]))
        if pattern is not None:
            finished = finished.where(journey_instances.c.pattern == pattern)
        step_counts = (
            select(journey_events.c.step, journey_events.c.type, func.count())
            .where(journey_events.c.type.in_(["step.completed", "agent.failed", "area.completed"]))
            .group_by(journey_events.c.step, journey_events.c.type)
        )
        if pattern is not None:
            step_counts = step_counts.where(
                journey_events.c.instance_id.in_(
                    select(journey_instances.c.instance_id).where(journey_instances.c.pattern == pattern)
                )
            )
        async with self._store.engine.connect() as conn:
            done = (await conn.execute(finished)).all()
            counts = (await conn.execute(step_counts)).all()
        durations = [(r.updated_at - r.created_at).total_seconds() for r in done]
        steps: dict[str, dict[str, int]] = defaultdict(lambda: {"completed": 0, "failed": 0})
        for step, kind, n in counts:
            if step is not None:
                steps[step]["failed" if kind == "agent.failed" else "completed"] += int(n)
        return {
            "journeys": total,
            "by_status": by_status,
            "completion_rate": round(by_status.get("completed", 0) / total, 4) if total else 0.0,
            "mean_duration_seconds": round(sum(durations) / len(durations), 3) if durations else None,
            "steps": dict(steps),
        }
