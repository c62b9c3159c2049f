"""Views shared by all four patterns, derived from the event log and the instance index (SPEC P5):
the milestone tracker and journey analytics."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from checkpoints.insights import InsightQueries
from checkpoints.store import Store

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
        self._queries = InsightQueries(store.engine)

    async def summary(self, *, pattern: str | None = None) -> dict[str, Any]:
        """Counts by status, completion rate, mean time to finish, and per-step completions and failures."""
        by_status = await self._store.index.count_by_status(pattern=pattern)
        total = sum(by_status.values())
        rows = await self._queries.read(pattern=pattern)
        durations = rows.durations
        steps: dict[str, dict[str, int]] = defaultdict(lambda: {"completed": 0, "failed": 0})
        for counted in rows.step_counts:
            if counted.step is not None:
                steps[counted.step]["failed" if counted.event_type == "agent.failed" else "completed"] += counted.count
        return {
            "journeys": total,
            "by_status": by_status,
            "completion_rate": round(by_status.get("completed", 0) / total, 4) if total else 0.0,
            "mean_duration_seconds": round(sum(durations) / len(durations), 3) if durations else None,
            "steps": dict(steps),
        }
