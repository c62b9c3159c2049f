"""LangGraph's own tooling (``langgraph dev``, Studio) runs the ``langgraph.json`` entrypoints under
``blockbuster``, which fails any blocking call made on the event loop: ours make none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from blockbuster import blockbuster_ctx
from langgraph.checkpoint.memory import InMemorySaver

import graphs.entrypoints as entrypoints
from graphs.kernel.patterns import registered_patterns

ROOT = Path(__file__).resolve().parent.parent


def test_langgraph_json_lists_every_pattern_and_gitignore_covers_what_langgraph_dev_writes() -> None:
    config = json.loads((ROOT / "langgraph.json").read_text())
    assert config["graphs"] == entrypoints.langgraph_graphs()
    assert "process" in config["graphs"]
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {".langgraph_api/", "*.db-wal", "*.db-shm"} <= set(ignored)


@pytest.mark.parametrize("name", list(registered_patterns()))
async def test_the_entrypoints_make_no_blocking_call(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A directory that does not exist yet: making it is file system work too.
    monkeypatch.setenv("JOURNEYS_DATABASE_URL", f"sqlite:///{tmp_path}/new/journeys.db")
    factory = getattr(entrypoints, name)
    with blockbuster_ctx():
        async with factory({}) as graph:
            compiled = graph.compile()
            assert compiled.get_graph().nodes
    assert (tmp_path / "new" / "journeys.db").exists()


@pytest.mark.parametrize("name", list(registered_patterns()))
async def test_every_graph_declares_input_and_output_schemas_for_studio(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNEYS_DATABASE_URL", f"sqlite:///{tmp_path}/journeys.db")
    async with getattr(entrypoints, name)({}) as graph:
        compiled = graph.compile()
        assert compiled.get_input_jsonschema()["properties"]
        assert compiled.get_output_jsonschema()["properties"]


async def started_empty(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What the ``name`` entrypoint's graph answers to ``{}``, as Studio would start it (thread ``studio-<name>``)."""
    monkeypatch.setenv("JOURNEYS_DATABASE_URL", f"sqlite:///{tmp_path}/journeys.db")
    async with getattr(entrypoints, name)({}) as graph:
        compiled = graph.compile(checkpointer=InMemorySaver())
        out: dict[str, Any] = await compiled.ainvoke({}, {"configurable": {"thread_id": f"studio-{name}"}})
    return out


@pytest.mark.parametrize("name", ["session", "mvp"])
async def test_a_session_started_with_empty_input_begins_on_its_initial_area(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = await started_empty(name, tmp_path, monkeypatch)
    assert out["current_area"] == "content"
    assert out["areas"]["content"]["visited"] and not out["areas"]["insights"]["visited"]
    assert out["__interrupt__"][0].value["kind"] == "session_action"


async def test_a_lifecycle_started_with_empty_input_checks_its_sandbox_entry_criteria(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = await started_empty("lifecycle", tmp_path, monkeypatch)
    # Started for a client named after the thread; no metrics recorded yet, so the sandbox's entry gate refuses.
    assert (out["client_id"], out["status"]) == ("studio-lifecycle", "pending")
    validation = out["outcome"]["validation"]
    assert (validation["to_stage"], validation["passed"]) == ("sandbox", False)
    assert "contract_signed" in {c["name"] for c in validation["checks"]}


async def test_a_process_started_with_empty_input_enters_by_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = await started_empty("process", tmp_path, monkeypatch)
    assert out["status"] == "completed" and out["visits"]["wowvision_validate"] == 1
