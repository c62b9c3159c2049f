"""The Structured Journey Orchestrator: guided flows in an enforced order (SPEC P1)."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, TypeVar

from langgraph.types import StateSnapshot

from checkpoints.ownership import DEFAULT_TENANT, current_owner
from graphs.errors import InvalidInputError, JourneyNotStartedError
from graphs.kernel.designs import DesignBook, parse_spec, saver_tenant
from graphs.kernel.engine import DEFAULT_RUN, RunOptions
from graphs.kernel.identifiers import checked_user_id
from graphs.structured.builder import StructuredSpec
from graphs.structured.steps import StepJourneys
from graphs.structured.templates import TemplateCatalog


def design_view(journey_id: str, pattern: str, spec: StructuredSpec) -> dict[str, Any]:
    return {
        "journey_id": journey_id,
        "pattern": pattern,
        "journey_type": spec.journey_type,
        "name": spec.name,
        "requirements": dict(spec.requirements),
        "steps": [
            {
                "step_id": s.step_id,
                "name": s.title,
                "mode": s.mode,
                "agent": s.agent,
                "milestone": s.milestone,
                "next_steps": [b.to for b in spec.branches(s.step_id)],
            }
            for s in spec.steps
        ],
        "status": "designed",
    }


SHARED_DESIGNS_KEPT = 512  # inline specs whose shared design (or soundness) is remembered (see StructuredOrchestrator)
K = TypeVar("K")
V = TypeVar("V")


def _content(journey_type: str, requirements: Mapping[str, Any] | None, spec: Mapping[str, Any]) -> str | None:
    """What :meth:`StructuredOrchestrator.shared_design` is asked, as canonical JSON (None: not JSON, e.g. a
    mapping that is no dict, or a key that is no string: such a call is not remembered)."""
    try:
        return json.dumps([journey_type, requirements, spec], sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return None


def _remember(memo: OrderedDict[K, V], key: K, value: V) -> None:
    """Keep ``value`` under ``key`` in ``memo``, the least recently used of more than
    :data:`SHARED_DESIGNS_KEPT` keys dropped."""
    memo[key] = value
    if len(memo) > SHARED_DESIGNS_KEPT:
        memo.popitem(last=False)


def structured_instance_id(journey_id: str, user_id: str, tenant: str | None = None, *, qualified: bool = False) -> str:
    """The instance of ``journey_id`` for ``user_id`` (one per user of a tenant); a user id no store keeps is
    refused. People are named per tenant, so another tenant's user of the same name has an instance of its own
    (a digest of its tenant after the design's id: a tenant may be 100 characters long, any of them); the
    default tenant's, and the runtime's used in-process, is ``<journey id>:<user id>``. ``tenant``: by default
    that of the caller the server acts for (:func:`checkpoints.ownership.current_owner`). ``qualified``: the
    digest form for the default tenant too (the server's, where another tenant's journey took the plain id
    before ids carried the tenant)."""
    user = checked_user_id(user_id)
    if tenant is None:
        owner = current_owner()
        tenant = DEFAULT_TENANT if owner is None else owner.tenant
    if tenant == DEFAULT_TENANT and not qualified:
        return f"{journey_id}:{user}"
    return f"{journey_id}@{hashlib.blake2b(tenant.encode(), digest_size=8).hexdigest()}:{user}"


class StructuredOrchestrator:
    """The structured journey API: design, execute, advance, retry and report on journeys."""

    def __init__(self, designs: DesignBook, templates: TemplateCatalog) -> None:
        self.templates = templates
        self._designs = designs
        self._runs = StepJourneys(designs, ("structured",))
        # The shared design made of an inline spec, by the content it was asked with (see :meth:`shared_design`).
        self._shared: OrderedDict[tuple[str | None, str], str] = OrderedDict()
        # The inline specs :meth:`check_design` found sound, by content and whether agents were checked.
        self._sound: OrderedDict[tuple[str, bool], None] = OrderedDict()

    async def design_journey(
        self,
        journey_type: str,
        requirements: Mapping[str, Any] | None = None,
        *,
        spec: StructuredSpec | Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Design a journey from the template for ``journey_type`` (or from an explicit ``spec``)."""
        chosen = self.build_spec(journey_type, requirements, spec)
        design = await self._designs.save("structured", chosen)
        return design_view(design.journey_id, "structured", chosen)

    async def shared_design(
        self,
        journey_type: str,
        requirements: Mapping[str, Any] | None = None,
        *,
        spec: StructuredSpec | Mapping[str, Any] | None = None,
    ) -> str:
        """The id of the design :meth:`design_journey` would make of these arguments, stored once per
        content instead of under a new id: every run that starts the same journey (each thread of the
        server's ``structured`` assistant) shares one design row. Start it with :meth:`start_run`."""
        # An inline spec asked for again (every first run of a client that sends its spec) is not parsed,
        # merged and hashed again: a design's content decides its id, and designs are never changed nor deleted.
        # Remembered per tenant: each tenant's callers have a design of their own (DesignBook.save_shared).
        content = _content(journey_type, requirements, spec) if isinstance(spec, Mapping) else None
        asked = None if content is None else (saver_tenant(), content)
        if asked is not None and (known := self._shared.get(asked)) is not None:
            self._shared.move_to_end(asked)
            return known
        chosen = self.build_spec(journey_type, requirements, spec)
        design, _spec = await self._designs.save_shared("structured", chosen, prefix="structured_design")
        if asked is not None:
            _remember(self._shared, asked, design.journey_id)
        return design.journey_id

    def check_design(
        self,
        journey_type: str,
        requirements: Mapping[str, Any] | None = None,
        *,
        spec: StructuredSpec | Mapping[str, Any] | None = None,
        agents: bool = True,
    ) -> None:
        """Refuses what :meth:`shared_design` would refuse of these arguments (an unknown template, the design's
        errors, an agent no one registered; ``agents=False``: not that one), storing nothing: the server checks
        a run's input so before the run is queued. A template's design is built and checked as an inline
        spec's is: a template naming an agent this runtime lacks is refused here, not in the run."""
        # An inline spec found sound before (every run of a client that sends its spec: the API checks each) is
        # not parsed, merged and hashed again: its errors follow from its content, and agents are only ever added.
        asked = _content(journey_type, requirements, spec) if isinstance(spec, Mapping) else None
        if asked is not None and (asked, agents) in self._sound:
            self._sound.move_to_end((asked, agents))
            return
        self._designs.check("structured", self.build_spec(journey_type, requirements, spec), agents=agents)
        if asked is not None:
            _remember(self._sound, (asked, agents), None)

    def build_spec(
        self,
        journey_type: str,
        requirements: Mapping[str, Any] | None,
        spec: StructuredSpec | Mapping[str, Any] | None,
    ) -> StructuredSpec:
        if requirements is not None and not isinstance(requirements, Mapping):
            raise InvalidInputError(f"requirements must be a mapping, got {type(requirements).__name__}")
        if spec is not None:
            parsed = parse_spec(StructuredSpec, spec, spec_name="structured journey")
            # The journey_type argument names the design, whatever the spec called itself.
            return parsed.model_copy(
                update={"journey_type": journey_type, "requirements": {**parsed.requirements, **(requirements or {})}}
            )
        return self.templates.get(journey_type).build(dict(requirements or {}))

    async def execute_journey(
        self,
        journey_id: str,
        user_id: str,
        context: Mapping[str, Any] | None = None,
        *,
        run_options: RunOptions = DEFAULT_RUN,
        start_key: str | None = None,
        start_key_window: str | float | timedelta | None = None,
        instance_id: str | None = None,
    ) -> dict[str, Any]:
        """Start the journey for ``user_id``; runs until the first step that needs the user. ``run_options``:
        how the run is carried out (the server's run queue passes its own). ``start_key``: a start with the
        same key within ``start_key_window`` (seconds or ISO 8601, default 24 hours) answers the journey
        that start began (see :mod:`graphs.kernel.flow`). ``instance_id``: the user's instance, by default
        :func:`structured_instance_id` in the acting caller's tenant (the server names a tenant's journey
        started before that id carried the tenant)."""
        return await self._runs.start(
            journey_id,
            checked_user_id(user_id),
            context,
            instance_id=instance_id or structured_instance_id(journey_id, user_id),
            options=run_options,
            start_key=start_key,
            start_key_window=start_key_window,
        )

    async def start_run(
        self,
        instance_id: str,
        journey_id: str,
        user_id: str,
        context: Mapping[str, Any] | None = None,
        *,
        run_options: RunOptions = DEFAULT_RUN,
    ) -> dict[str, Any]:
        """:meth:`execute_journey` for a run named by its instance id (a server thread's own), so that one
        user's runs of a shared design are journeys of their own. Starting ``instance_id`` again only goes
        on with a start a crash cut short before its first checkpoint; one that got further is refused."""
        return await self._runs.start(
            journey_id, checked_user_id(user_id), context, instance_id=instance_id, options=run_options
        )

    async def advance_journey_step(
        self,
        journey_id: str,
        user_id: str,
        step_result: Mapping[str, Any],
        *,
        step_id: str | None = None,
        run_options: RunOptions = DEFAULT_RUN,
    ) -> dict[str, Any]:
        """Complete the current step with ``step_result`` and move on. Only the current step can advance."""
        instance_id = structured_instance_id(journey_id, user_id)
        try:
            return await self._runs.advance(instance_id, step_result, step_id=step_id, options=run_options)
        except JourneyNotStartedError:
            # A saga's or a session's id: executing it would be refused too, so say whose it is instead.
            await self._designs.load(journey_id, ("structured",), to_start=True)
            raise

    async def advance_run(
        self,
        instance_id: str,
        step_result: Mapping[str, Any],
        *,
        step_id: str | None = None,
        run_options: RunOptions = DEFAULT_RUN,
    ) -> dict[str, Any]:
        """:meth:`advance_journey_step` for a run named by its instance id (a fork has an id of its own)."""
        return await self._runs.advance(instance_id, step_result, step_id=step_id, options=run_options)

    async def run_status(self, instance_id: str) -> dict[str, Any]:
        """:meth:`get_journey_status` for a run named by its instance id."""
        return await self._runs.status(instance_id)

    async def retry_run(self, instance_id: str, *, by: str | None = None) -> dict[str, Any]:
        """:meth:`retry_journey_step` for a run named by its instance id."""
        return await self._runs.retry(instance_id, by=by)

    async def review_journey_run(
        self, journey_id: str, user_id: str, *, approved: bool, by: str, note: str = ""
    ) -> dict[str, Any]:
        """Decide on a run its tier's evaluation held for review: ``approved`` completes it, else it fails."""
        instance_id = structured_instance_id(journey_id, user_id)
        return await self._runs.review(instance_id, approved=approved, by=by, note=note)

    async def review_run(self, instance_id: str, *, approved: bool, by: str, note: str = "") -> dict[str, Any]:
        """:meth:`review_journey_run` for a run named by its instance id (a fork's, say)."""
        return await self._runs.review(instance_id, approved=approved, by=by, note=note)

    async def retry_journey_step(self, journey_id: str, user_id: str, *, by: str | None = None) -> dict[str, Any]:
        """Run the journey's failed step again; ``by``: who retried it (its ``step.retried`` event names them)."""
        return await self._runs.retry(structured_instance_id(journey_id, user_id), by=by)

    async def get_journey_status(self, journey_id: str, user_id: str) -> dict[str, Any]:
        return await self._runs.status(structured_instance_id(journey_id, user_id))

    async def describe(self, instance_id: str, snapshot: StateSnapshot) -> dict[str, Any]:
        """The journey view (status, current and completed steps) of a thread state read elsewhere."""
        return await self._runs.describe(instance_id, snapshot)
