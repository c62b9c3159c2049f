"""Running step journeys (structured and saga): start, advance, retry and report.

Every move is checked against the thread's current state before anything is written: a wrong step,
a finished journey or an invalid result raises a typed error and leaves no trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from langgraph.graph.state import CompiledStateGraph
from langgraph.types import StateSnapshot

from agents.errors import AgentError
from checkpoints.events import NewEvent
from checkpoints.index import DuplicateInstanceError, Instance
from graphs.designs import DesignBook, PatternName
from graphs.engine import failed_task, resume_pending, waiting_for
from graphs.errors import (
    InvalidInputError,
    JourneyFinishedError,
    JourneyNotFoundError,
    JourneyNotStartedError,
    NothingToRetryError,
    StepFailedError,
    StepOrderError,
)
from graphs.structured import StructuredSpec, StructuredState
from nodes.user_task import validate_resume_value

Graph = CompiledStateGraph[Any, Any, Any, Any]
FINISHED = ("completed", "compensated", "failed")


class StepJourneys:
    """The machinery shared by the structured and saga orchestrators."""

    def __init__(self, designs: DesignBook, patterns: tuple[PatternName, ...]) -> None:
        self.designs = designs
        self.engine = designs.engine
        self.index = designs.engine.store.index
        self.events = designs.engine.store.events
        self.patterns = patterns

    async def _load(self, journey_id: str) -> tuple[str, StructuredSpec, Graph]:
        design, spec = await self.designs.load(journey_id, self.patterns)
        return design.pattern, spec, self.designs.graph(design.pattern, spec)

    async def instance(self, instance_id: str) -> Instance:
        found = await self.index.get_instance(instance_id)
        if found is None or found.pattern not in self.patterns:
            raise JourneyNotFoundError(
                f"no {' or '.join(self.patterns)} journey run {instance_id!r}", instance_id=instance_id
            )
        return found

    async def start(
        self, journey_id: str, user_id: str, context: Mapping[str, Any] | None, *, instance_id: str
    ) -> dict[str, Any]:
        if context is not None and not isinstance(context, Mapping):
            raise InvalidInputError(f"context must be a mapping, got {type(context).__name__}")
        pattern, spec, graph = await self._load(journey_id)
        started = NewEvent(
            "journey.started", {"journey_id": journey_id, "user_id": user_id, "context": dict(context or {})}
        )
        async with self.engine.exclusive(instance_id):
            created: Instance | None
            try:
                created = await self.index.create_instance(
                    instance_id, journey_id, pattern, user_id, first_event=started
                )
            except DuplicateInstanceError:
                # Started before; resume the start only if a crash cut it short before the first checkpoint.
                if (await graph.aget_state(self.engine.config(instance_id))).values:
                    raise
                created = None
            initial: StructuredState = {
                "context": dict(context or {}),
                "status": "in_progress",
                "current_step": spec.steps[0].step_id,
                "completed_steps": [],
            }
            # The first run of an instance registered just now has no logged agent call to look up;
            # a resumed start (one a crash cut short) looks each call up before making it.
            snapshot = await self._run(graph, instance_id, initial, replay=created is None)
        return self.view(created or await self.instance(instance_id), spec, snapshot)

    async def advance(
        self, instance_id: str, step_result: Mapping[str, Any], *, step_id: str | None = None
    ) -> dict[str, Any]:
        found = await self.index.get_instance(instance_id)
        if found is None:
            raise JourneyNotStartedError(
                f"journey run {instance_id!r} has not been started; execute the journey first",
                allowed=["execute_journey"],
                instance_id=instance_id,
            )
        _, spec, graph = await self._load(found.journey_id)
        async with self.engine.exclusive(instance_id):
            snapshot = await self.engine.settled_state(graph, instance_id)
            current = self._current_step(instance_id, spec, snapshot)
            requested = step_id or (step_result.get("step_id") if isinstance(step_result, Mapping) else None)
            if requested is not None and requested != current:
                known = "" if requested in spec.step_ids else f" ({requested!r} is not a step of this journey)"
                raise StepOrderError(
                    f"cannot advance step {requested!r}{known}: steps complete in order and the current step "
                    f"is {current!r}",
                    allowed=[current],
                    current_step=current,
                )
            result = validate_resume_value(step_result, spec.step(current).input_schema, task=current)
            explicit = result.get("next_step")
            targets = [b.to for b in spec.branches(current)]
            if explicit is not None and explicit not in targets:
                raise InvalidInputError(
                    f"next_step {explicit!r} is not a branch of step {current!r}; choose one of {targets}",
                    allowed=targets,
                )
            snapshot = await self._run(graph, instance_id, resume_pending(snapshot, result))
        view = self.view(await self.instance(instance_id), spec, snapshot)
        return {**view, "completed_step": current}

    async def retry(self, instance_id: str) -> dict[str, Any]:
        """Run the failed step again (its agent may have recovered)."""
        found = await self.instance(instance_id)
        _, spec, graph = await self._load(found.journey_id)
        async with self.engine.exclusive(instance_id):
            snapshot = await graph.aget_state(self.engine.config(instance_id))
            failed = failed_task(snapshot)
            if failed is None:
                raise NothingToRetryError(
                    f"journey run {instance_id!r} has no failed step to retry", allowed=["advance_journey_step"]
                )
            await self.events.append(instance_id, [NewEvent("step.retried", {}, failed)], status="in_progress")
            snapshot = await self._run(graph, instance_id, None)
        return self.view(await self.instance(instance_id), spec, snapshot)

    async def status(self, instance_id: str) -> dict[str, Any]:
        found = await self.instance(instance_id)
        _, spec, graph = await self._load(found.journey_id)
        async with self.engine.exclusive(instance_id):
            snapshot = await self.engine.settled_state(graph, instance_id)
        return self.view(found, spec, snapshot)

    async def _run(self, graph: Graph, instance_id: str, value: Any, *, replay: bool = True) -> StateSnapshot:
        try:
            return await self.engine.invoke(graph, instance_id, value, replay=replay)
        except AgentError as exc:
            # The step's failure is recorded in the checkpoint; the run can be retried from there.
            await self.events.append(
                instance_id,
                [NewEvent("step.failed", {"error": str(exc), "error_type": exc.code})],
                status="failed",
            )
            raise

    def _current_step(self, instance_id: str, spec: StructuredSpec, snapshot: StateSnapshot) -> str:
        values = cast(StructuredState, snapshot.values)
        failed = failed_task(snapshot)
        if failed is not None:
            raise StepFailedError(
                f"step {failed!r} failed; retry it (retry_journey_step) before advancing",
                allowed=["retry_journey_step"],
                failed_step=failed,
            )
        status = values.get("status")
        if status in FINISHED or not snapshot.next:
            raise JourneyFinishedError(
                f"journey run {instance_id!r} has finished with status {status!r}; nothing is left to advance",
                allowed=[],
                status=status,
            )
        current = values.get("current_step")
        if current is None or waiting_for(snapshot) is None:
            raise JourneyFinishedError(f"journey run {instance_id!r} is not waiting for a step result", allowed=[])
        return current

    @staticmethod
    def view(instance: Instance, spec: StructuredSpec, snapshot: StateSnapshot) -> dict[str, Any]:
        values = cast(StructuredState, snapshot.values)
        failed = failed_task(snapshot)
        status = "failed" if failed else values.get("status", instance.status)
        waiting = waiting_for(snapshot)
        current = values.get("current_step") if status not in FINISHED else None
        completed = list(values.get("completed_steps") or [])
        view: dict[str, Any] = {
            "journey_id": instance.journey_id,
            "user_id": instance.user_id,
            "instance_id": instance.instance_id,
            "journey_type": spec.journey_type,
            "status": status,
            "current_step": current,
            "completed_steps": completed,
            "awaiting_input": waiting is not None,
            "next_steps": [b.to for b in spec.branches(current)] if current else [],
            "progress": {"completed": len(completed), "total": len(spec.steps)},
            "last_output": values.get("last_output"),
        }
        if failed:
            view["failed_step"] = failed
        if instance.pattern == "saga":
            view |= {
                "saga_id": instance.instance_id,
                "compensated_steps": list(values.get("compensated_steps") or []),
                "failure": values.get("failure"),
                "compensation_failure": values.get("compensation_failure"),
            }
        return view
