"""The server ↔ runtime seam: routers call services; they take no journey lock and write no graph state,
and they reach the run queue only through its interface."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROUTERS = sorted((Path(__file__).resolve().parent.parent / "server" / "api").glob("*.py"))
assert ROUTERS, "no routers found: where did server/api go?"
# Calls that lock a journey or write a graph's state: the runtime's and the services' business.
WRITES = {"exclusive", "aupdate_state", "update_state", "ainvoke", "invoke", "astream", "settled_state"}
QUEUE_INTERNALS = {"server.queues.embedded", "server.queues.procrastinate", "procrastinate"}


@pytest.mark.parametrize("router", ROUTERS, ids=[p.name for p in ROUTERS])
def test_a_router_takes_no_lock_and_writes_no_graph_state(router: Path) -> None:
    tree = ast.parse(router.read_text())
    calls = {
        node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert not calls & WRITES, f"{router.name} calls {sorted(calls & WRITES)}: move it behind a service"
    imported = {
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in ([node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names])
    }
    assert not imported & QUEUE_INTERNALS, f"{router.name} imports a queue implementation"


def test_per_run_options_are_arguments_not_context_variables() -> None:
    """Durability, outcome recording and streaming reach a run as its ``RunOptions`` argument. The context
    variables left are none an option of the run, each reaching code no argument reaches: who the server acts
    for (the owner of what a request creates); what a server run does once its graph call took a cancel and when
    it is cancelled inside a journey's lock (``engine.ON_CANCEL``: the cancel may land in any pattern's code under
    the lock); the lease of a journey's lock (``locks.Lease``: its loss must refuse the checkpoint writes LangGraph
    makes from its own tasks); a schema validation's budget (``schemas``: spent in jsonschema's keyword
    callbacks); whether the saver's own write is running (``savers``: its cursor, which LangGraph's saver code
    asks for, then records what ``write_together`` sends); the app serving a request (``routing``: routes
    built once per process read that app's ``dependency_overrides`` through it, as FastAPI calls them); and the
    statuses a server run's work gave journey instances (``executor.GIVEN_STATUSES``: a collector, not an option,
    filled by the event log's status listener wherever a pattern's node commits a status); and the run and node
    the code at work is part of (``telemetry._OBSERVED``: its span, whether spans are recorded, asked of
    OpenTelemetry once as the run starts; read by its nodes and the agent calls they make, which no run argument
    reaches)."""
    import dataclasses
    import inspect

    from graphs.kernel.engine import JourneyEngine, RunOptions

    root = Path(__file__).resolve().parent.parent
    made = sorted(
        f"{path.relative_to(root)}:{node.lineno}"
        for package in ("graphs", "nodes", "agents", "checkpoints", "server")
        for path in (root / package).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "ContextVar"
    )
    expected = [
        "checkpoints/locks.py",
        "checkpoints/ownership.py",
        "checkpoints/savers.py",
        "graphs/kernel/engine.py",
        "nodes/schemas.py",
        "nodes/telemetry.py",
        "server/routing.py",
        "server/runs/executor.py",
    ]
    assert [place.split(":")[0] for place in made] == expected, made
    assert {"durability", "stream", "outcomes"} <= {field.name for field in dataclasses.fields(RunOptions)}
    assert "options" in inspect.signature(JourneyEngine.run).parameters
