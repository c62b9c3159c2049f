"""The Session Journey Orchestrator: free navigation between areas (SPEC P2).

Every change to a session (a move, recorded progress, its close) first goes through the runtime's
policies, as every agent call and user-task completion does (``agents.policy.SessionAction``): a refusal
is a ``policy.denied`` event and a :class:`~agents.errors.PolicyViolationError`, and nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, cast

import jsonschema
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, StateSnapshot

from agents.policy import SessionAction, SessionActionKind
from checkpoints.events import Event, NewEvent
from checkpoints.flow import TERMINATED
from checkpoints.index import Instance
from checkpoints.ownership import current_owner
from checkpoints.values import check_value
from graphs.errors import (
    EvaluatorError,
    InvalidInputError,
    JourneyFinishedError,
    JourneyNotFoundError,
    UnknownAreaError,
    WrongPatternError,
)
from graphs.kernel.designs import DesignBook, PatternName, parse_spec
from graphs.kernel.engine import DEFAULT_RUN, Outcome, RunOptions
from graphs.kernel.flow import ExistingStart, StartControls
from graphs.kernel.identifiers import checked_user_id
from graphs.kernel.instances import Recoverable
from graphs.session.builder import (
    SessionSpec,
    SessionState,
    closed_status,
    initial_session_state,
    session_progress,
)
from nodes import schemas
from nodes.agent_call import AGENT_COMPLETED

Graph = CompiledStateGraph[Any, Any, Any, Any]


class SessionOrchestrator:
    """Sessions of one pattern (``session`` or ``mvp``): open one, move between its areas, update them, close it."""

    def __init__(self, designs: DesignBook, *, pattern: PatternName = "session") -> None:
        self._designs = designs
        self._engine = designs.engine
        self._index = designs.engine.store.index
        self._instances = designs.instances
        self.pattern: PatternName = pattern
        designs.instances.register(Recoverable((pattern,), self._instance_graph, self._start_input))

    async def start_session(
        self,
        user_id: str,
        session_config: Mapping[str, Any] | SessionSpec,
        *,
        run_options: RunOptions = DEFAULT_RUN,
        start_key: str | None = None,
        start_key_window: str | float | timedelta | None = None,
        registering: Callable[[str], RunOptions] | None = None,
    ) -> dict[str, Any]:
        """Open a session over ``session_config = {"areas": [...], "initial_area": ...}`` and enter the first area.
        ``start_key``: a start with the same key within ``start_key_window`` (default 24 hours) answers the
        session that start opened. ``registering``: the run's options for the session, given its id, in place of
        ``run_options`` (a server run's bind of its thread, committed with the session's registration)."""
        user_id = checked_user_id(user_id)  # as execute_journey checks it: the session is kept under it
        spec = parse_spec(SessionSpec, session_config, spec_name="session")
        if spec.evaluation is not None and (missing := self._instances.evaluation.missing(spec.evaluation)):
            raise EvaluatorError(f"register the evaluators {missing} in runtime.evaluators first", missing=missing)
        controls = StartControls.of(start_key, start_key_window, None, {})
        if controls is not None and controls.start_key is not None:
            existing = await self._instances.started_with(controls.start_key, self.pattern)
            if existing is not None:
                return await self._opened(existing)
        design = await self._designs.save(self.pattern, spec, prefix="session")
        session_id = design.journey_id
        if registering is not None:
            run_options = registering(session_id)
        graph = self._designs.graph(self.pattern, spec)
        started = NewEvent("session.started", {"user_id": user_id, "initial_area": spec.start_area})
        try:
            async with self._engine.exclusive(session_id):
                _created, outcome = await self._instances.start(
                    graph,
                    session_id,
                    session_id,
                    self.pattern,
                    user_id,
                    started,
                    self._initial(spec),
                    options=run_options,
                    controls=controls,
                )
                snapshot = await self._state(graph, session_id, outcome)
        except ExistingStart as existing_start:  # another start took the key meanwhile
            return await self._opened(existing_start.instance_id)
        return self._started_view(session_id, user_id, spec, snapshot)

    async def _opened(self, session_id: str) -> dict[str, Any]:
        """The start view of a session opened before (a start key named it)."""
        spec, graph = await self._load(session_id)
        instance = await self._index.get_instance(session_id)
        assert instance is not None
        async with self._engine.exclusive(session_id):
            snapshot = await self._engine.settled_state(graph, session_id)
        return self._started_view(session_id, instance.user_id, spec, snapshot)

    @staticmethod
    def _started_view(session_id: str, user_id: str, spec: SessionSpec, snapshot: StateSnapshot) -> dict[str, Any]:
        return {
            "session_id": session_id,
            "user_id": user_id,
            "status": snapshot.values.get("status") or "active",
            "current_area": snapshot.values.get("current_area"),
            "areas": [a.info() for a in spec.areas],
            "progress": session_progress(spec, snapshot.values),
        }

    async def navigate_to_area(
        self, session_id: str, area_id: str, *, run_options: RunOptions = DEFAULT_RUN
    ) -> dict[str, Any]:
        """Jump to any area at any time; its state is as the user left it."""
        spec, graph = await self._load(session_id)
        self._known_area(spec, area_id)
        async with self._engine.acting(session_id):
            before = await self._active(graph, session_id, run_options)
            await self._authorize(session_id, area_id, "navigate", {})
            request = {"type": "navigate", "area_id": area_id}
            snapshot = await self._act(graph, session_id, request, run_options)
        return {
            "session_id": session_id,
            "previous_area": before.values.get("current_area"),
            "current_area": area_id,
            "area": spec.area(area_id).info(),
            "area_state": dict(snapshot.values["areas"][area_id]["state"]),
            "progress": session_progress(spec, snapshot.values),
        }

    async def update_area_state(
        self, session_id: str, area_id: str, updates: Mapping[str, Any], *, run_options: RunOptions = DEFAULT_RUN
    ) -> dict[str, Any]:
        """Merge ``updates`` into an area's state (the user need not be in it) and re-check its completion."""
        spec, graph = await self._load(session_id)
        area = self._known_area(spec, area_id)
        if not isinstance(updates, Mapping) or not updates:
            raise InvalidInputError("updates must be a non-empty mapping of field → value", area_id=area_id)
        check_value(dict(updates), "updates")
        async with self._engine.acting(session_id):
            before = await self._active(graph, session_id, run_options)
            merged = {**before.values["areas"][area_id]["state"], **updates}
            if area.state_schema is not None:
                try:
                    schemas.validate(merged, area.state_schema)
                except jsonschema.ValidationError as exc:
                    where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
                    raise InvalidInputError(
                        f"update to area {area_id!r} breaks its state schema at {where}: {exc.message}",
                        area_id=area_id,
                    ) from exc
            await self._authorize(session_id, area_id, "update", dict(updates))
            request = {"type": "update", "area_id": area_id, "updates": dict(updates)}
            snapshot = await self._act(graph, session_id, request, run_options)
        progress = session_progress(spec, snapshot.values)
        return {
            "session_id": session_id,
            "area_id": area_id,
            "area_state": progress["areas"][area_id]["state"],
            "area_complete": progress["areas"][area_id]["complete"],
            "progress": progress,
        }

    async def get_session_progress(self, session_id: str) -> dict[str, Any]:
        """``completion_percent``, ``completed_areas``, ``visited_areas`` and each area's detail."""
        spec, graph = await self._load(session_id)
        async with self._engine.reading(session_id) as held:
            if held:
                snapshot = await self._engine.settled_state(graph, session_id)
            else:  # another call is moving it (a guide's tool call): as last committed
                snapshot = await graph.aget_state(self._engine.config(session_id))
            instance = await self._index.get_instance(session_id)
        progress = session_progress(spec, snapshot.values)
        if instance is not None and instance.status == TERMINATED:  # it stopped where it stood
            progress["status"] = TERMINATED
        return {"session_id": session_id, **progress}

    async def close_session(
        self, session_id: str, reason: str | None = None, *, run_options: RunOptions = DEFAULT_RUN
    ) -> dict[str, Any]:
        """Close the session; with a workflow tier, its agent calls are judged (a breach fails it, or holds
        it in review)."""
        spec, graph = await self._load(session_id)
        async with self._engine.acting(session_id):
            await self._active(graph, session_id, run_options)
            await self._authorize(session_id, None, "close", {"reason": reason} if reason else {})
            snapshot = await self._act(graph, session_id, {"type": "close", "reason": reason}, run_options)
            if spec.evaluation is None:
                return {"session_id": session_id, **session_progress(spec, snapshot.values)}
            evaluation = self._instances.evaluation
            status = await evaluation.judge(
                session_id, self.pattern, spec.evaluation, [AGENT_COMPLETED], status=closed_status(snapshot.values)
            )
            verdict = await evaluation.verdict(session_id)
        # The status closing gave it (closed, or completed with every area complete), or what its tier's
        # verdict made it (failed, review).
        return {
            "session_id": session_id,
            **session_progress(spec, snapshot.values),
            "status": status,
            "evaluation": verdict,
        }

    async def review_session(self, session_id: str, *, approved: bool, by: str, note: str = "") -> dict[str, Any]:
        """A person's decision on a closed session its tier's evaluation held for review: ``approved`` closes
        it as it was, otherwise it fails."""
        _spec, graph = await self._load(session_id)
        async with self._engine.exclusive(session_id):
            found = await self._index.get_instance(session_id)
            assert found is not None  # _load found it
            closed = closed_status((await graph.aget_state(self._engine.config(session_id))).values)
            status = await self._instances.evaluation.review(found, approved=approved, by=by, note=note, status=closed)
        return {
            "session_id": session_id,
            "status": status,
            "evaluation": await self._instances.evaluation.verdict(session_id),
        }

    async def _authorize(
        self, session_id: str, area_id: str | None, action: SessionActionKind, payload: dict[str, Any]
    ) -> None:
        """The policies on a change to the session (under ``exclusive``, before it is made)."""
        instance = await self._index.get_instance(session_id)
        user = instance.user_id if instance is not None else None
        acting = current_owner()
        checked = SessionAction(session_id, area_id, action, user, payload, acting.principal if acting else None)
        await self._engine.services.caller.authorize_session_action(checked)

    async def _act(self, graph: Graph, session_id: str, request: dict[str, Any], options: RunOptions) -> StateSnapshot:
        """Hand the session the user's action (under ``exclusive``); the session's state after it."""
        outcome = await self._instances.advance(
            graph, session_id, self.pattern, Command(resume=request), options=options
        )
        return await self._state(graph, session_id, outcome)

    async def _state(self, graph: Graph, session_id: str, outcome: Outcome) -> StateSnapshot:
        if isinstance(outcome, StateSnapshot):
            return outcome
        return await graph.aget_state(self._engine.config(session_id))

    @staticmethod
    def _initial(spec: SessionSpec) -> dict[str, Any]:
        return dict(initial_session_state(spec))

    async def _instance_graph(self, instance: Instance) -> Graph:
        return (await self._load(instance.instance_id))[1]

    async def _start_input(self, instance: Instance, _started: Event) -> dict[str, Any]:
        """The first run's input: the session's initial state, from its design."""
        return self._initial((await self._load(instance.instance_id))[0])

    async def spec_of(self, session_id: str) -> SessionSpec:
        return (await self._load(session_id))[0]

    async def _load(self, session_id: str) -> tuple[SessionSpec, Graph]:
        instance = await self._index.get_instance(session_id)
        if instance is None:
            name = "session" if self.pattern == "session" else f"{self.pattern} session"
            raise JourneyNotFoundError(f"no {name} {session_id!r}", session_id=session_id)
        if instance.pattern != self.pattern:  # an MVP session given to runtime.session, or the other way
            raise WrongPatternError(
                f"journey {session_id!r} belongs to the {instance.pattern} pattern, not {self.pattern}; "
                f"use the {instance.pattern} orchestrator",
                journey_id=session_id,
                pattern=instance.pattern,
            )
        design, spec = await self._designs.load(session_id, (self.pattern,))
        return spec, self._designs.graph(design.pattern, spec)

    async def _active(self, graph: Graph, session_id: str, options: RunOptions) -> StateSnapshot:
        """The open session's state under its lock, before an action. An action a run cancelled on purpose
        stopped is applied first, as a run without input would: else the new action's resume would run the
        stopped one and be lost, the session waiting for an action again."""
        snapshot = await self._engine.settled_state(graph, session_id, options=options, resume_halted=True)
        values = cast(SessionState, snapshot.values)
        if values.get("status") == "closed" or not snapshot.next:
            raise JourneyFinishedError(f"session {session_id!r} is closed", allowed=[], session_id=session_id)
        return snapshot

    @staticmethod
    def _known_area(spec: SessionSpec, area_id: str) -> Any:
        if area_id not in spec.area_ids:
            raise UnknownAreaError(
                f"session has no area {area_id!r}; areas: {', '.join(spec.area_ids)}",
                allowed=spec.area_ids,
                area_id=area_id,
            )
        return spec.area(area_id)
