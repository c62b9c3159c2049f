"""Adding a pattern is one registration: the runtime builds its orchestrator, the design book checks and
compiles its designs, the server runs it as an assistant, and LangGraph's tooling builds its graph."""

from __future__ import annotations

import asyncio
import contextlib
import operator
from collections.abc import Mapping
from typing import Annotated, Any, TypedDict

import httpx
import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel

import graphs.kernel.patterns as registry
from agents.registry import AgentRegistry
from checkpoints.events import NewEvent
from graphs.entrypoints import graph_factory, langgraph_graphs
from graphs.errors import InvalidInputError, SpecError
from graphs.kernel import Assistant, DesignKind, Pattern, PatternRegistrationError, RunContext, get_pattern, register
from graphs.kernel.designs import DesignBook
from graphs.runtime import JourneyRuntime
from nodes.services import NodeServices
from server.app import create_app
from server.settings import Settings


class GreetingSpec(BaseModel):
    journey_type: str = "greeting"
    greeting: str = "hello"


class GreetingState(TypedDict, total=False):
    name: str
    said: Annotated[list[str], operator.add]


def validate_greeting(spec: GreetingSpec, _agents: AgentRegistry) -> list[str]:
    return [] if spec.greeting.strip() else ["greeting: say something (it is blank)"]


def build_greeting_graph(spec: GreetingSpec, _services: NodeServices) -> StateGraph[Any]:
    def greet(state: GreetingState) -> dict[str, Any]:
        return {"said": [f"{spec.greeting}, {state['name']}"]}

    graph = StateGraph(GreetingState)
    graph.add_node("greet", greet)
    graph.add_edge(START, "greet")
    graph.add_edge("greet", END)
    return graph


class Greeter:
    """The toy pattern's orchestrator: one greeting per instance."""

    def __init__(self, designs: DesignBook) -> None:
        self.designs = designs

    async def greet(self, instance_id: str, name: str, greeting: str = "hello") -> dict[str, Any]:
        spec = GreetingSpec(greeting=greeting)
        design = await self.designs.save("greeting", spec)  # type: ignore[arg-type]
        graph = self.designs.graph("greeting", spec)
        # The kernel's one start: duplicate detection, the first event, the first run.
        await self.designs.instances.start(
            graph, instance_id, design.journey_id, "greeting", name, NewEvent("greeting.started", {}), {"name": name}
        )
        snapshot = await graph.aget_state(self.designs.engine.config(instance_id))
        return {"instance_id": instance_id, "said": snapshot.values["said"]}


async def _start(ctx: RunContext, data: Mapping[str, Any]) -> None:
    await ctx.bind(ctx.thread_id)
    greeter: Greeter = ctx.runtime.orchestrator("greeting")
    await greeter.greet(ctx.thread_id, str(data["name"]), str(data.get("greeting", "hello")))


async def _resume(_ctx: RunContext, _instance_id: str, _value: Any) -> None:
    raise InvalidInputError("a greeting is said once")


def _entrypoint(runtime: JourneyRuntime, _config: RunnableConfig) -> StateGraph[Any]:
    return build_greeting_graph(GreetingSpec(), runtime.engine.services)


GREETING = Pattern(
    "greeting",
    Assistant(
        "greeting",
        "Says hello",
        _start,
        _resume,
        {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}},
    ),
    _entrypoint,
    design=DesignKind(GreetingSpec, validate_greeting, build_greeting_graph),
    attribute="greetings",
    orchestrator=lambda deps: Greeter(deps.designs),
)


@pytest.fixture
def greeting_registered(monkeypatch: pytest.MonkeyPatch) -> Pattern:
    """The toy pattern registered for this test only (the registry is restored after it)."""
    monkeypatch.setattr(registry, "_REGISTERED", dict(registry.registered_patterns()))
    return register(GREETING)


async def test_a_registered_pattern_is_reached_everywhere(store_url: str, greeting_registered: Pattern) -> None:
    assert get_pattern("greeting") is greeting_registered
    assert langgraph_graphs()["greeting"] == "./graphs/entrypoints.py:greeting"
    settings = Settings(database_url=store_url, auth=False, run_timers=False)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        runtime: JourneyRuntime = app.state.services.runtime
        assert isinstance(runtime.greetings, Greeter)  # type: ignore[attr-defined]
        assert runtime.orchestrator("greeting") is runtime.greetings  # type: ignore[attr-defined]
        with pytest.raises(SpecError, match="blank"):
            await runtime.greetings.greet("g-blank", "ana", greeting=" ")  # type: ignore[attr-defined]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://journeys") as http:
            listed = await http.post("/assistants/search", json={"graph_id": "greeting"})
            assert [a["assistant_id"] for a in listed.json()] == ["greeting"]
            refused = await http.post("/runs/wait", json={"assistant_id": "greeting", "input": {}})
            assert refused.status_code == 422, refused.text
            out = await http.post(
                "/threads/g-1/runs/wait",
                json={"assistant_id": "greeting", "input": {"name": "ana"}, "if_not_exists": "create"},
            )
            assert out.status_code == 200, out.text
            assert out.json()["said"] == ["hello, ana"]
            state = await http.get("/threads/g-1/state")
            assert state.json()["values"] == {"name": "ana", "said": ["hello, ana"]}
            history = await http.get("/journeys/g-1/history")
            assert [e["type"] for e in history.json()] == ["greeting.started"]


async def test_its_langgraph_entrypoint_builds(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, greeting_registered: Pattern
) -> None:
    monkeypatch.setenv("JOURNEYS_DATABASE_URL", f"sqlite:///{tmp_path}/tooling.db")
    async with graph_factory("greeting")({"configurable": {}}) as graph:
        assert set(graph.nodes) == {"greet"}


def test_a_name_is_registered_once(greeting_registered: Pattern) -> None:
    with pytest.raises(PatternRegistrationError, match="registered already"):
        register(GREETING)
    with pytest.raises(PatternRegistrationError, match="another id"):
        register(Pattern("hello", GREETING.assistant, _entrypoint))


async def test_an_assistants_schemas_are_compiled_once_not_per_checked_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run request's input (and answer) is checked against its assistant's schema: the validator is the
    assistant's, built with it, not built again per request; what it refuses is refused as before."""
    built: list[object] = []
    validator = registry.Draft202012Validator

    def counted(schema: Any) -> Any:
        built.append(schema)
        return validator(schema)

    monkeypatch.setattr(registry, "Draft202012Validator", counted)
    resume_schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    assistant = registry.replace(GREETING.assistant, resume_schema=resume_schema)
    for _ in range(3):
        await assistant.check_input({"name": "Ada"})
        assistant.check_resume({"ok": True})
    with pytest.raises(InvalidInputError) as refused:
        await assistant.check_input({"name": ""})
    assert refused.value.details["problems"] == ["input.name: '' should be non-empty"]
    with pytest.raises(InvalidInputError, match=r"command.resume: 'ok' is a required property"):
        assistant.check_resume({})
    assert built == [GREETING.assistant.input_schema, resume_schema]  # built with the assistant, once each


async def test_closing_a_runtime_waits_for_a_design_read_its_cancelled_caller_left_running(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A design read is shared by its callers and shielded from their cancels (DesignBook.load), so a caller
    cancelled as the runtime closed (a notebook's cell interrupted, a test's loop ending) left the read running on:
    it finished after the store's connection closed, aiosqlite's thread calling into a closed loop (CI's
    PytestUnhandledThreadExceptionWarning, "Event loop is closed"). The runtime's close now waits for it."""
    gate, reading = asyncio.Event(), asyncio.Event()
    async with JourneyRuntime.open(store_url) as runtime:
        journey = await runtime.structured.design_journey("content_migration", {})
        read = runtime.store.index.get_design

        async def held_read(journey_id: str) -> Any:
            reading.set()
            await gate.wait()
            return await read(journey_id)

        monkeypatch.setattr(runtime.store.index, "get_design", held_read)
        runtime._designs._loaded.clear()  # not held: the next load reads it
        caller = asyncio.create_task(runtime._designs.load(journey["journey_id"], ("structured",)))
        await reading.wait()
        caller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await caller
        [pending] = runtime._designs._reading.values()
        asyncio.get_running_loop().call_soon(gate.set)  # the read ends once the close has begun
    assert pending.done() and not pending.cancelled(), pending  # ended before the store closed
