"""Session journeys: free navigation between areas, each with its own completion criteria.

The graph is a hub: ``await_action`` (an ``interrupt()``) takes the user's next action and routes it
to the node of the area it concerns, which applies it, re-evaluates that area's criteria, writes the
events, and returns to the hub. Area state is kept while the user is elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import jsonschema
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt
from pydantic import BaseModel, ConfigDict, Field, field_validator
from typing_extensions import TypedDict  # pydantic (Studio's input forms) needs it before 3.12

from agents.policy import Grants
from checkpoints.events import NewEvent
from nodes import schemas
from nodes.criteria import Criteria
from nodes.evaluation import EvaluationSpec
from nodes.ids import SNAKE_ID
from nodes.services import NodeServices, thread_id

AREA_ID = SNAKE_ID
AWAIT_ACTION = "await_action"
CLOSE = "close"


class Area(BaseModel):
    """One area of a session: its title, state schema and when it counts as complete."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    area_id: str = Field(json_schema_extra={"pattern": AREA_ID.pattern})  # checked below, with a fix
    area_name: str = ""
    description: str = ""
    actions: tuple[str, ...] = ()
    completion: Criteria = Field(
        default_factory=Criteria,
        description="when the area counts as complete; empty criteria: complete once visited",
    )
    state_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema the area's state must satisfy after every update"
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("area_id")
    @classmethod
    def _area_id_shape(cls, value: str) -> str:
        if not AREA_ID.match(value):
            raise ValueError(f"area_id {value!r} must be lower_snake_case (letters, digits, underscores)")
        return value

    @field_validator("completion", mode="before")
    @classmethod
    def _completion_shorthand(cls, value: Any) -> Any:
        # {"files_uploaded": True, ...} is shorthand for "every field equals its value".
        if isinstance(value, Mapping) and not ({"all", "any"} & set(value)):
            return Criteria.equals(value)
        if not isinstance(value, Mapping | Criteria):  # e.g. the "field == value" texts an area's info shows
            raise ValueError(
                "write completion as field → value ({'files_uploaded': True}) or as criteria ({'all': [{'field': "
                f"'files_uploaded', 'op': '==', 'value': True}}]}}), not {value!r:.80}"
            )
        return value

    @property
    def title(self) -> str:
        return self.area_name or self.area_id.replace("_", " ").title()

    def info(self) -> dict[str, Any]:
        return {
            "area_id": self.area_id,
            "area_name": self.title,
            "description": self.description,
            "actions": list(self.actions),
            "completion": [c.describe() for c in (*self.completion.all, *self.completion.any)],
            **({"metadata": self.metadata} if self.metadata else {}),
        }


class SessionSpec(Grants):
    """A session design: the areas a user may visit in any order and the one to start in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    journey_type: str = "session"
    areas: tuple[Area, ...] = Field(min_length=1)
    initial_area: str | None = None
    recommended_order: tuple[str, ...] | None = None
    evaluation: EvaluationSpec | None = Field(
        default=None, description="the workflow tier its agent calls (the guide's tools) are judged on at close"
    )

    @property
    def area_ids(self) -> list[str]:
        return [a.area_id for a in self.areas]

    @property
    def start_area(self) -> str:
        return self.initial_area or self.areas[0].area_id

    def area(self, area_id: str) -> Area:
        for area in self.areas:
            if area.area_id == area_id:
                return area
        raise KeyError(area_id)


def validate_session(spec: SessionSpec) -> list[str]:
    ids = spec.area_ids
    problems: list[str] = []
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        problems.append(f"area ids must be unique; rename the repeated {repeated}")
    if spec.initial_area is not None and spec.initial_area not in ids:
        problems.append(
            f"initial_area {spec.initial_area!r} is not one of the areas ({', '.join(ids)}); pick one of them"
        )
    for area_id in spec.recommended_order or ():
        if area_id not in ids:
            problems.append(f"recommended_order names unknown area {area_id!r}; areas: {', '.join(ids)}")
    for area in spec.areas:
        if area.state_schema is not None:
            try:
                schemas.check_schema(area.state_schema)
            except jsonschema.SchemaError as exc:
                problems.append(f"area {area.area_id!r} has an invalid state_schema: {exc.message}")
    return problems


class AreaProgress(TypedDict):
    """How far a session has got in one area."""

    state: dict[str, Any]
    visited: bool
    visits: int
    complete: bool


class SessionState(TypedDict, total=False):
    """The session graph's state: the current area and the progress in each."""

    status: Literal["active", "closed"]
    current_area: str | None
    areas: dict[str, AreaProgress]
    action: dict[str, Any] | None
    actions_applied: int
    all_complete: bool


def fresh_areas(spec: SessionSpec) -> dict[str, AreaProgress]:
    """Every area, not visited yet."""
    return {a.area_id: {"state": {}, "visited": False, "visits": 0, "complete": False} for a in spec.areas}


def initial_session_state(spec: SessionSpec) -> SessionState:
    return {
        "status": "active",
        "current_area": None,
        "areas": fresh_areas(spec),
        "action": {"type": "navigate", "area_id": spec.start_area},
        "actions_applied": 0,
        "all_complete": False,
    }


def closed_status(values: Mapping[str, Any]) -> str:
    """The instance's status once the session is closed: ``completed`` with every area complete, else ``closed``."""
    return "completed" if values.get("all_complete") else "closed"


def area_node(area_id: str) -> str:
    return f"area.{area_id}"


def _router(spec: SessionSpec) -> Any:
    def route(state: SessionState) -> str:
        # No action: a session started with empty input (LangGraph Studio's `{}`) begins on its initial area.
        action = state.get("action") or {"type": "navigate", "area_id": spec.start_area}
        if action.get("type") == CLOSE:
            return CLOSE
        return area_node(str(action["area_id"]))

    return route


def build_session_graph(spec: SessionSpec, services: NodeServices) -> StateGraph[SessionState]:
    builder: StateGraph[SessionState] = StateGraph(SessionState)
    targets = [area_node(a) for a in spec.area_ids] + [CLOSE]

    def await_action(state: SessionState) -> SessionState:
        action = interrupt({"kind": "session_action", "current_area": state.get("current_area")})
        return {"action": dict(action)}

    async def close(state: SessionState, config: RunnableConfig) -> SessionState:
        instance_id = thread_id(config)
        n = state.get("actions_applied", 0)
        event = NewEvent(
            "session.closed",
            {"reason": (state.get("action") or {}).get("reason")},
            None,
            f"{instance_id}:action:{n}",
        )
        await services.events.append(instance_id, [event], status=closed_status(state))
        return {"status": "closed", "action": None, "actions_applied": n + 1}

    builder.add_node(AWAIT_ACTION, await_action)
    builder.add_node(CLOSE, close)
    builder.add_edge(CLOSE, END)
    for area in spec.areas:
        builder.add_node(area_node(area.area_id), _area_handler(area, spec, services))
        builder.add_edge(area_node(area.area_id), AWAIT_ACTION)
    route = _router(spec)
    builder.add_conditional_edges(START, route, targets)
    builder.add_conditional_edges(AWAIT_ACTION, route, targets)
    return builder


def _area_handler(area: Area, spec: SessionSpec, services: NodeServices) -> Any:
    async def handle(state: SessionState, config: RunnableConfig) -> SessionState:
        instance_id = thread_id(config)
        action = state.get("action") or {"type": "navigate", "area_id": area.area_id}
        n = state.get("actions_applied", 0)
        areas = {**fresh_areas(spec), **(state.get("areas") or {})}
        progress: AreaProgress = dict(areas[area.area_id])  # type: ignore[assignment]
        events: list[NewEvent] = []
        update: SessionState = {}
        if action["type"] == "navigate":
            progress["visited"] = True
            progress["visits"] += 1
            update["current_area"] = area.area_id
            events.append(NewEvent("area.entered", {"from": state.get("current_area")}, area.area_id))
        else:
            updates = dict(action.get("updates") or {})
            progress["state"] = {**progress["state"], **updates}
            events.append(NewEvent("area.updated", {"updates": updates}, area.area_id))
        complete = progress["visited"] if area.completion.empty else area.completion.holds(progress["state"])
        if complete != progress["complete"]:
            events.append(NewEvent("area.completed" if complete else "area.reopened", {}, area.area_id))
        progress["complete"] = complete
        areas[area.area_id] = progress
        all_complete = all(p["complete"] for p in areas.values())
        if all_complete and not state.get("all_complete"):
            # A milestone, not the session's end: the instance stays in progress (an ended status would have
            # retention prune its checkpoints and terminate refuse it) until it is closed.
            events.append(NewEvent("session.completed", {"areas": spec.area_ids}))
        # One transaction, every event keyed by the action: a replayed action writes nothing twice.
        key = f"{instance_id}:action:{n}"
        keyed = [NewEvent(e.type, e.payload, e.step, key if i == 0 else f"{key}:{i}") for i, e in enumerate(events)]
        await services.events.append(instance_id, keyed)
        return {
            **update,
            "areas": areas,
            "action": None,
            "actions_applied": n + 1,
            "all_complete": all_complete,
        }

    handle.__name__ = f"handle_{area.area_id}"
    return handle


def session_progress(spec: SessionSpec, values: Mapping[str, Any]) -> dict[str, Any]:
    areas: Mapping[str, AreaProgress] = values.get("areas") or {}
    total = len(spec.areas)
    completed = sum(1 for p in areas.values() if p["complete"])
    visited = sum(1 for p in areas.values() if p["visited"])
    return {
        "completion_percent": round(100 * completed / total) if total else 100,
        "completed_areas": completed,
        "visited_areas": visited,
        "total_areas": total,
        "current_area": values.get("current_area"),
        "status": values.get("status", "active"),
        "areas": {
            a.area_id: {
                "area_name": a.title,
                "visited": areas[a.area_id]["visited"],
                "complete": areas[a.area_id]["complete"],
                "state": dict(areas[a.area_id]["state"]),
                "missing": [] if areas[a.area_id]["complete"] else _missing(a, areas[a.area_id]),
            }
            for a in spec.areas
            if a.area_id in areas
        },
    }


def _missing(area: Area, progress: AreaProgress) -> list[str]:
    if area.completion.empty:
        return ["visit the area"]
    return area.completion.unmet(progress["state"])
