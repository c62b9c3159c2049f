"""The reporting reads behind journey analytics (``graphs/analytics.py``): finished journeys and step counts."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.events import is_first
from checkpoints.schema.tables import journey_events, journey_instances

FINISHED_STATUSES = ("completed", "compensated")
STEP_EVENTS = ("step.completed", "agent.failed", "area.completed")


@dataclass(frozen=True, slots=True)
class StepCount:
    """How often one step ended with one event type (completed or failed)."""

    step: str | None
    event_type: str
    count: int


@dataclass(frozen=True, slots=True)
class InsightRows:
    """The raw figures behind journey analytics: durations of finished journeys and step outcome counts."""

    durations: list[float]  # seconds from start to finish, per finished journey
    step_counts: list[StepCount]  # per (step, event type) of STEP_EVENTS


class InsightQueries:
    """The reporting queries of the milestone tracker and analytics, over the event log and instance index."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def read(self, *, pattern: str | None = None) -> InsightRows:
        """Durations of the finished journeys (of ``pattern``, or all) and how often each step completed or
        failed, read on one connection."""
        instances, events, first = journey_instances.c, journey_events.c, journey_events.alias("first_event").c
        finished = select(instances.created_at, instances.updated_at).where(
            instances.status.in_(list(FINISHED_STATUSES))
        )
        step_counts = (
            select(events.step, events.type, func.count())
            .where(events.type.in_(list(STEP_EVENTS)))
            .group_by(events.step, events.type)
        )
        if pattern is not None:
            finished = finished.where(instances.pattern == pattern)
            step_counts = step_counts.where(
                events.instance_no.in_(
                    select(first.instance_no).where(
                        is_first(first.seq),  # the first event names its instance
                        first.instance_id.in_(select(instances.instance_id).where(instances.pattern == pattern)),
                    )
                )
            )
        async with self._engine.connect() as conn:
            done = (await conn.execute(finished)).all()
            counts = (await conn.execute(step_counts)).all()
        return InsightRows(
            durations=[(r.updated_at - r.created_at).total_seconds() for r in done],
            step_counts=[StepCount(step, kind, int(n)) for step, kind, n in counts],
        )
