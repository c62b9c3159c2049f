"""The Session Journey Orchestrator: free navigation between areas (SPEC P2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import jsonschema
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, StateSnapshot

from checkpoints.events import NewEvent
from graphs.designs import DesignBook, PatternName, parse_spec
from graphs.errors import InvalidInputError, JourneyFinishedError, JourneyNotFoundError, UnknownAreaError
from graphs.session import SessionSpec, SessionState, initial_session_state, session_progress
from nodes import schemas

Graph = CompiledStateGraph[Any, Any, Any, Any]


class SessionOrchestrator:
    """The session API: start sessions, navigate between areas, update and close them."""

    def __init__(self, designs: DesignBook, *, pattern: PatternName = "session") -> None:
        self._designs = designs
        self._engine = designs.engine
        self._index = designs.engine.store.index
        self.pattern: PatternName = pattern

    async def start_session(self, user_id: str, session_config: Mapping[str, Any] | SessionSpec) -> dict[str, Any]:
        """Open a session over ``session_config = {"areas": [...], "initial_area": ...}`` and enter the first area."""
        spec = parse_spec(SessionSpec, session_config, spec_name="session")
        design = await self._designs.save(self.pattern, spec, prefix="session")
        session_id = design.journey_id
        graph = self._designs.graph(self.pattern, spec)
        started = NewEvent("session.started", {"user_id": user_id, "initial_area": spec.start_area})
        async with self._engine.exclusive(session_id):
            await self._index.create_instance(session_id, session_id, self.pattern, user_id, first_event=started)
            snapshot = await self._engine.invoke(graph, session_id, dict(initial_session_state(spec)))
        return {
            "session_id": session_id,
            "user_id": user_id,
            "status": "active",
            "current_area": snapshot.values.get("current_area"),
            "areas": [a.info() for a in spec.areas],
            "progress": session_progress(spec, snapshot.values),
        }

    async def navigate_to_area(self, session_id: str, area_id: str) -> dict[str, Any]:
        """Jump to any area at any time; its state is as the user left it."""
        spec, graph = await self._load(session_id)
        self._known_area(spec, area_id)
        async with self._engine.exclusive(session_id):
            before = await self._active(graph, session_id)
            snapshot = await self._engine.invoke(
                graph, session_id, Command(resume={"type": "navigate", "area_id": area_id})
            )
        return {
            "session_id": session_id,
            "previous_area": before.values.get("current_area"),
            "current_area": area_id,
            "area": spec.area(area_id).info(),
            "area_state": dict(snapshot.values["areas"][area_id]["state"]),
            "progress": session_progress(spec, snapshot.values),
        }

    async def update_area_state(self, session_id: str, area_id: str, updates: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``updates`` into an area's state (the user need not be in it) and re-check its completion."""
        spec, graph = await self._load(session_id)
        area = self._known_area(spec, area_id)
        if not isinstance(updates, Mapping) or not updates:
            raise InvalidInputError("updates must be a non-empty mapping of field → value", area_id=area_id)
        async with self._engine.exclusive(session_id):
            before = await self._active(graph, session_id)
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
            snapshot = await self._engine.invoke(
                graph,
                session_id,
                Command(resume={"type": "update", "area_id": area_id, "updates": dict(updates)}),
            )
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
        async with self._engine.exclusive(session_id):
            snapshot = await self._engine.settled_state(graph, session_id)
        return {"session_id": session_id, **session_progress(spec, snapshot.values)}

    async def close_session(self, session_id: str, reason: str | None = None) -> dict[str, Any]:
        spec, graph = await self._load(session_id)
        async with self._engine.exclusive(session_id):
            await self._active(graph, session_id)
            snapshot = await self._engine.invoke(graph, session_id, Command(resume={"type": "close", "reason": reason}))
        return {"session_id": session_id, **session_progress(spec, snapshot.values)}

    async def spec_of(self, session_id: str) -> SessionSpec:
        return (await self._load(session_id))[0]

    async def _load(self, session_id: str) -> tuple[SessionSpec, Graph]:
        instance = await self._index.get_instance(session_id)
        if instance is None or instance.pattern != self.pattern:
            raise JourneyNotFoundError(f"no {self.pattern} session {session_id!r}", session_id=session_id)
        design, spec = await self._designs.load(session_id, (self.pattern,))
        return spec, self._designs.graph(design.pattern, spec)

    async def _active(self, graph: Graph, session_id: str) -> StateSnapshot:
        snapshot = await self._engine.settled_state(graph, session_id)
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
