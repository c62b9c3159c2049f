"""langgraph.json points at module-level factories that build every registered pattern's graph."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

import graphs.entrypoints as entrypoints
from graphs.kernel.patterns import registered_patterns
from graphs.runtime import JourneyRuntime

ROOT = Path(__file__).resolve().parent.parent


def _load_as_langgraph_does(path: str) -> ModuleType:
    """``langgraph dev`` execs the file named in langgraph.json as a module of its own."""
    spec = importlib.util.spec_from_file_location("lg_entry", ROOT / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the runtimes the entrypoints open and close (real runtimes, on the real store)."""
    counts = {"opened": 0, "closed": 0}
    real_open = JourneyRuntime.open

    @asynccontextmanager
    async def counting(*args: Any, **options: Any) -> AsyncIterator[JourneyRuntime]:
        counts["opened"] += 1
        try:
            async with real_open(*args, **options) as runtime:
                yield runtime
        finally:
            counts["closed"] += 1

    monkeypatch.setattr(JourneyRuntime, "open", counting)
    return counts


def test_langgraph_json_lists_every_registered_pattern() -> None:
    config = json.loads((ROOT / "langgraph.json").read_text())
    assert config["graphs"] == entrypoints.langgraph_graphs()
    assert set(config["graphs"]) == {"structured", "saga", "session", "mvp", "lifecycle", "process", "guide"}
    assert set(config["graphs"]) == set(registered_patterns())


async def test_every_graph_in_langgraph_json_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: dict[str, int]
) -> None:
    monkeypatch.setenv("JOURNEYS_DATABASE_URL", f"sqlite:///{tmp_path}/tooling.db")
    config = json.loads((ROOT / "langgraph.json").read_text())
    for name, target in config["graphs"].items():
        path, _, attr = target.partition(":")
        assert path == "./graphs/entrypoints.py"
        module = _load_as_langgraph_does(path)
        assert opened["opened"] == 0, "nothing is opened at import time"
        async with getattr(module, attr)({"configurable": {}}) as graph:
            compiled = graph.compile(checkpointer=InMemorySaver())
            assert len(compiled.get_graph().nodes) > 2, name
        assert opened["opened"] == opened["closed"] == 1, f"{name}: the runtime it opened is closed"
        opened["opened"] = opened["closed"] = 0


async def test_a_config_picks_the_template_or_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNEYS_DATABASE_URL", f"sqlite:///{tmp_path}/tooling.db")
    async with (
        entrypoints.process({"configurable": {"process": "support_triage"}}) as triage,
        entrypoints.process({"configurable": {}}) as review,
    ):
        assert set(triage.nodes) != set(review.nodes)


async def test_langgraph_tooling_gets_the_configured_guide_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNEYS_DATABASE_URL", f"sqlite:///{tmp_path}/tooling.db")
    monkeypatch.setenv("JOURNEYS_GUIDE_MODEL", "tests.test_server_guide_model:recording_model")
    async with entrypoints.guide({"configurable": {}}) as built:
        graph = built.compile(checkpointer=InMemorySaver())
        out = await graph.ainvoke(
            {"messages": [{"role": "user", "content": "what next?"}]}, {"configurable": {"thread_id": "t"}}
        )
    assert out["messages"][-1].content == "(llm) you asked 'what next?'"  # a langchain-core message (add_messages)
