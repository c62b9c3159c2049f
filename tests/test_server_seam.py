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
