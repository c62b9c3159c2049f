"""langgraph.json points at module-level factories that build every pattern's graph."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver

import graphs.entrypoints as entrypoints

ROOT = Path(__file__).resolve().parent.parent


async def test_every_graph_in_langgraph_json_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNEYS_DATABASE_URL", f"sqlite:///{tmp_path}/tooling.db")
    config = json.loads((ROOT / "langgraph.json").read_text())
    assert set(config["graphs"]) == {"structured", "saga", "session", "mvp", "lifecycle", "guide"}
    try:
        for name, target in config["graphs"].items():
            path, _, attr = target.partition(":")
            spec = importlib.util.spec_from_file_location("lg_entry", ROOT / path)
            assert spec is not None and path == "./graphs/entrypoints.py"
            factory = getattr(entrypoints, attr)
            compiled = (await factory({"configurable": {}})).compile(checkpointer=InMemorySaver())
            assert len(compiled.get_graph().nodes) > 2, name
    finally:
        await entrypoints._STACK.aclose()
        entrypoints._RUNTIME = None


async def test_langgraph_tooling_gets_the_configured_guide_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNEYS_DATABASE_URL", f"sqlite:///{tmp_path}/tooling.db")
    monkeypatch.setenv("JOURNEYS_GUIDE_MODEL", "tests.test_server_guide_model:recording_model")
    try:
        graph = (await entrypoints.guide({"configurable": {}})).compile(checkpointer=InMemorySaver())
        out = await graph.ainvoke(
            {"messages": [{"role": "user", "content": "what next?"}]}, {"configurable": {"thread_id": "t"}}
        )
    finally:
        await entrypoints._STACK.aclose()
        entrypoints._RUNTIME = None
    assert out["messages"][-1]["content"] == "(llm) you asked 'what next?'"
