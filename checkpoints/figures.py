"""The live figures ``/metrics`` reports as gauges, read from the database at scrape time.

They describe the state of the world rather than what one process did, so every API process reads them
from the tables all processes share: they are right however many workers there are, on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select

from checkpoints.backends.base import Backend
from checkpoints.schema.lifecycle_tables import lifecycle_journey_states
from checkpoints.schema.tables import journey_instances, process_timers, process_waits, server_runs, user_tasks

# Statuses after which an instance does nothing more by itself.
FINAL_STATUSES = ("completed", "failed", "compensated", "cancelled", "closed", "terminated")
FINAL_STAGES = ("completed", "cancelled")

_instances, _tasks, _timers, _runs = journey_instances.c, user_tasks.c, process_timers.c, server_runs.c
_states = lifecycle_journey_states.c
# A failed instance stands where it failed until an operator retries (or terminates) it: counted with the open
# ones, by the one grouped read, and reported apart (``awaiting_retry``).
FAILED = "failed"
_ACTIVE = (
    select(_instances.pattern, _instances.status, func.count().label("n"))
    .where(_instances.status.not_in(tuple(s for s in FINAL_STATUSES if s != FAILED)))
    .group_by(_instances.pattern, _instances.status)
)
# Incidents: timers whose firing failed after its retries (an SLA's or reminder's agent, a cron's run), by purpose.
_INCIDENTS = (
    select(_timers.purpose, func.count().label("n")).where(_timers.status == "failed").group_by(_timers.purpose)
)
_STAGES = (
    select(_states.current_stage, func.count().label("n"))
    .where(_states.current_stage.not_in(FINAL_STAGES))
    .group_by(_states.current_stage)
)


# Answers (a timer fired, a message, a task completed) resolved but not yet taken by their instance's thread:
# held there by a process lacking the instance's agents, or left by a crash. A failed instance's are its retry's.
_failed = select(journey_instances.c.instance_id).where(
    _instances.instance_id == process_waits.c.instance_id, _instances.status == "failed"
)
_UNDELIVERED = (
    select(func.count().label("n"))
    .select_from(process_waits)
    .where(process_waits.c.status == "resolved", ~_failed.exists())
)


@dataclass(frozen=True, slots=True)
class LiveFigures:
    """Open instances by (pattern, status), lifecycle journeys by stage, open user tasks, those past their
    SLA, work waiting to be picked up (``queue_depth``: pending runs, timers due and not yet fired, answers
    resolved and not yet delivered to their instance), the
    incidents waiting for an operator's retry (failed timers, by purpose), and the failed instances waiting for
    one (``awaiting_retry``, by pattern)."""

    active: dict[tuple[str, str], int] = field(default_factory=dict)
    lifecycle_stages: dict[str, int] = field(default_factory=dict)
    open_user_tasks: int = 0
    sla_breached_user_tasks: int = 0
    queue_depth: dict[str, int] = field(default_factory=dict)
    incidents: dict[str, int] = field(default_factory=dict)
    awaiting_retry: dict[str, int] = field(default_factory=dict)


async def live_figures(backend: Backend, now: datetime) -> LiveFigures:
    """The figures, one grouped query each (on indexed columns)."""
    now = now.astimezone(UTC)
    active: dict[tuple[str, str], int] = {}
    awaiting_retry: dict[str, int] = {}
    for row in await backend.query(_ACTIVE):
        if row["status"] == FAILED:
            awaiting_retry[row["pattern"]] = int(row["n"])
        else:
            active[row["pattern"], row["status"]] = int(row["n"])
    stages = {row["current_stage"]: int(row["n"]) for row in await backend.query(_STAGES)}
    open_tasks = select(func.count().label("n")).select_from(user_tasks).where(_tasks.status == "open")
    breached = open_tasks.where(_tasks.sla_due_at.is_not(None), _tasks.sla_due_at < now)
    pending_runs = select(func.count().label("n")).select_from(server_runs).where(_runs.status == "pending")
    # Claimed ("firing") counts too: a timer held claimed for want of its agent (an SLA's notify) is not fired.
    due_timers = (
        select(func.count().label("n"))
        .select_from(process_timers)
        .where(_timers.status.in_(("scheduled", "firing")), _timers.due_at <= now)
    )
    counts = [
        int((await backend.query(query))[0]["n"])
        for query in (open_tasks, breached, pending_runs, due_timers, _UNDELIVERED)
    ]
    incidents = {row["purpose"]: int(row["n"]) for row in await backend.query(_INCIDENTS)}
    queues = {"runs": counts[2], "timers": counts[3], "deliveries": counts[4]}
    return LiveFigures(active, stages, counts[0], counts[1], queues, incidents, awaiting_retry)
