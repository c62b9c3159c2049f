"""The Saga Journey Orchestrator: a structured journey that undoes itself on failure (SPEC P4)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from langgraph.types import StateSnapshot

from checkpoints.values import check_value
from graphs.errors import InvalidInputError, JourneyNotFoundError
from graphs.kernel.designs import DesignBook, new_id
from graphs.kernel.engine import DEFAULT_RUN, RunOptions
from graphs.kernel.identifiers import MAX_REASON
from graphs.structured.builder import StructuredSpec
from graphs.structured.orchestrator import StructuredOrchestrator, design_view
from graphs.structured.saga import SagaSpec
from graphs.structured.steps import StepJourneys


class SagaOrchestrator:
    """The saga API: design, execute, advance, retry and report on saga journeys."""

    def __init__(self, designs: DesignBook, structured: StructuredOrchestrator) -> None:
        # Composes the structured orchestrator: same templates and step machinery, plus compensation.
        self._structured = structured
        self._designs = designs
        self._runs = StepJourneys(designs, ("saga",))

    async def design_saga_journey(
        self,
        journey_type: str,
        requirements: Mapping[str, Any] | None = None,
        compensation_handlers: Mapping[str, str] | None = None,
        *,
        spec: StructuredSpec | Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        saga = self._saga_spec(journey_type, requirements, compensation_handlers, spec)
        design = await self._designs.save("saga", saga)
        handlers = dict(saga.compensation_handlers)
        return {**design_view(design.journey_id, "saga", saga), "compensation_handlers": handlers}

    async def shared_saga_design(
        self,
        journey_type: str,
        requirements: Mapping[str, Any] | None = None,
        compensation_handlers: Mapping[str, str] | None = None,
        *,
        spec: StructuredSpec | Mapping[str, Any] | None = None,
    ) -> str:
        """The id of the design :meth:`design_saga_journey` would make of these arguments, stored once per
        content (see :meth:`StructuredOrchestrator.shared_design`)."""
        saga = self._saga_spec(journey_type, requirements, compensation_handlers, spec)
        design, _spec = await self._designs.save_shared("saga", saga, prefix="saga_design")
        return design.journey_id

    def check_saga_design(
        self,
        journey_type: str,
        requirements: Mapping[str, Any] | None = None,
        compensation_handlers: Mapping[str, str] | None = None,
        *,
        spec: StructuredSpec | Mapping[str, Any] | None = None,
        agents: bool = True,
    ) -> None:
        """Refuses what :meth:`shared_saga_design` would refuse of these arguments, storing nothing (see
        :meth:`StructuredOrchestrator.check_design`)."""
        saga = self._saga_spec(journey_type, requirements, compensation_handlers, spec)
        self._designs.check("saga", saga, agents=agents)

    def _saga_spec(
        self,
        journey_type: str,
        requirements: Mapping[str, Any] | None,
        compensation_handlers: Mapping[str, str] | None,
        spec: StructuredSpec | Mapping[str, Any] | None,
    ) -> SagaSpec:
        base = self._structured.build_spec(journey_type, requirements, spec)
        return SagaSpec(**{**base.model_dump(), "compensation_handlers": dict(compensation_handlers or {})})

    async def execute_saga_journey(
        self,
        journey_id: str,
        user_id: str,
        context: Mapping[str, Any] | None = None,
        *,
        saga_id: str | None = None,
        run_options: RunOptions = DEFAULT_RUN,
        start_key: str | None = None,
        start_key_window: str | float | timedelta | None = None,
    ) -> dict[str, Any]:
        """Start a saga run (``saga_id``: a new one by default). Starting a ``saga_id`` again only goes on
        with a start a crash cut short before its first checkpoint; one that got further is refused.
        ``start_key``: a start with the same key within ``start_key_window`` (default 24 hours) answers
        the saga that start began instead of beginning another."""
        saga_id = saga_id or new_id("saga")
        return await self._runs.start(
            journey_id,
            user_id,
            context,
            instance_id=saga_id,
            options=run_options,
            start_key=start_key,
            start_key_window=start_key_window,
        )

    async def advance_saga_step(
        self,
        saga_id: str,
        journey_id: str,
        user_id: str,
        step_result: Mapping[str, Any],
        *,
        step_id: str | None = None,
        run_options: RunOptions = DEFAULT_RUN,
    ) -> dict[str, Any]:
        instance = await self._runs.instance(saga_id)
        if (instance.journey_id, instance.user_id) != (journey_id, user_id):
            # Not found, not invalid: the request names a saga of (journey, user) that does not exist, and
            # whose saga it is instead is not the caller's business.
            raise JourneyNotFoundError(
                f"saga {saga_id!r} is not a saga of journey {journey_id!r} for user {user_id!r}", saga_id=saga_id
            )
        return await self._runs.advance(saga_id, step_result, step_id=step_id, options=run_options)

    async def retry_saga_step(self, saga_id: str, *, by: str | None = None) -> dict[str, Any]:
        """Run the failed step again, or, when a compensation failed for good, resume the compensation
        at that handler (the steps already undone are not undone again). ``by``: who retried it (the
        retry's event names them, for the audit)."""
        return await self._runs.retry(saga_id, by=by)

    async def cancel_saga(self, saga_id: str, reason: str) -> dict[str, Any]:
        """Abandon a saga that has not ended: its completed steps are compensated in reverse, as when a step
        fails (the step it stands at was never done), and it ends compensated. ``reason`` is kept in its
        ``saga.cancelled`` event and its ``failure``."""
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
            raise InvalidInputError(
                f"a cancellation needs a reason: a non-empty string of at most {MAX_REASON} characters"
            )
        check_value(reason, "reason")
        return await self._runs.cancel(saga_id, reason)

    async def review_saga_run(self, saga_id: str, *, approved: bool, by: str, note: str = "") -> dict[str, Any]:
        """Decide on a saga run its tier's evaluation held for review: ``approved`` completes it, else it fails."""
        return await self._runs.review(saga_id, approved=approved, by=by, note=note)

    async def get_saga_status(self, saga_id: str) -> dict[str, Any]:
        return await self._runs.status(saga_id)

    async def describe(self, instance_id: str, snapshot: StateSnapshot) -> dict[str, Any]:
        """The saga view (status, current and completed steps) of a thread state read elsewhere."""
        return await self._runs.describe(instance_id, snapshot)
