"""The demo: all four patterns, offline, on the embedded SQLite default, with readable progress."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from agents import AgentRequest, PermanentAgentError
from graphs import JourneyRuntime


class TransformAgent:
    """Deterministic stand-in for a data transformer: refuses batches with corrupt records."""

    __name__ = "demo:transform_data"

    def __call__(self, request: AgentRequest) -> Mapping[str, Any]:
        result = request.payload.get("step_result") or {}
        corrupt = int(result.get("corrupt_records", 0))
        if corrupt:
            raise PermanentAgentError(f"{corrupt} corrupt records; transformation refused")
        return {"status": "complete", "rows_transformed": int(result.get("rows", 0))}


class UndoAgent:
    """A compensation handler that reports what it undid, so the demo can show the reverse order."""

    def __init__(self, intent: str, console: Console) -> None:
        self.intent = intent
        self.console = console
        self.__name__ = f"demo:{intent}"

    def __call__(self, request: AgentRequest) -> Mapping[str, Any]:
        self.console.print(f"    [yellow]↩ compensating[/] {request.step}: {self.intent}")
        return {"undone": request.step}


async def run_demo(url: str, console: Console) -> dict[str, Any]:
    """Run the four patterns on ``url``; returns the analytics summary it prints last."""
    async with JourneyRuntime.open(url) as runtime:
        for intent in ("delete_uploaded_content", "revert_analysis", "revert_transformation"):
            runtime.agents.register(intent, UndoAgent(intent, console), replace=True)
        runtime.agents.register("transform_data", TransformAgent(), replace=True)
        console.rule(f"[bold]journeys demo[/] on {runtime.store.url.raw}")
        await _structured(runtime, console)
        await _session(runtime, console)
        await _mvp(runtime, console)
        await _saga(runtime, console)
        summary = await runtime.analytics.summary()
        _print_summary(summary, console)
        return summary


async def _structured(runtime: JourneyRuntime, console: Console) -> None:
    console.rule("1 · Structured journey: enforced order")
    orchestrator = runtime.structured
    journey = await orchestrator.design_journey(
        "content_migration", {"source": "legacy_system", "target": "new_system"}
    )
    console.print(f"designed [cyan]{journey['journey_id']}[/]: " + " → ".join(s["name"] for s in journey["steps"]))
    status = await orchestrator.execute_journey(journey["journey_id"], "user_123", {"migration_id": "mig_001"})
    results: list[dict[str, Any]] = [{"files_uploaded": 150}, {"entities": 42}, {"rows": 1200}, {"checks_passed": True}]
    for result in results:
        step = status["current_step"]
        status = await orchestrator.advance_journey_step(
            journey["journey_id"], "user_123", {"status": "complete", **result}
        )
        console.print(f"  [green]✓[/] {step:<18} next: {status['current_step'] or '—'}")
    console.print(f"journey status: [bold]{status['status']}[/]")


async def _session(runtime: JourneyRuntime, console: Console) -> None:
    console.rule("2 · Session journey: free navigation")
    areas = [
        {"area_id": "data_exploration", "area_name": "Data Exploration", "completion": {"dataset_loaded": True}},
        {"area_id": "hypothesis_testing", "area_name": "Hypothesis Testing", "completion": {"tests_run": True}},
        {"area_id": "visualization", "area_name": "Visualization"},
        {"area_id": "reporting", "area_name": "Reporting", "completion": {"report_published": True}},
    ]
    orchestrator = runtime.session
    session = await orchestrator.start_session("researcher_7", {"areas": areas, "initial_area": "data_exploration"})
    session_id = session["session_id"]
    for area in ("visualization", "hypothesis_testing", "data_exploration"):
        await orchestrator.navigate_to_area(session_id, area)
        console.print(f"  → jumped to {area}")
    await orchestrator.update_area_state(session_id, "data_exploration", {"dataset_loaded": True})
    progress = await orchestrator.get_session_progress(session_id)
    console.print(
        f"progress: {progress['completion_percent']}% · {progress['completed_areas']} complete · "
        f"{progress['visited_areas']} visited"
    )


async def _mvp(runtime: JourneyRuntime, console: Console) -> None:
    console.rule("3 · MVP journey: four pillars, recommended flow")
    orchestrator = runtime.mvp
    journey = await orchestrator.start_mvp_journey("user_123", initial_pillar="content")
    session_id = journey["session"]["session_id"]
    await orchestrator.navigate_to_pillar(session_id, "insights")
    await orchestrator.update_pillar_progress(session_id, "content", {"files_uploaded": True, "files_parsed": True})
    recommendation = await orchestrator.get_recommended_next_pillar(session_id)
    console.print(f"  content done; guide suggests: Ready to move to {recommendation['pillar_info']['area_name']}?")
    completion = await orchestrator.check_mvp_completion(session_id)
    done = [p for p, s in completion["pillar_status"].items() if s["complete"]]
    console.print(f"  mvp complete: {completion['mvp_complete']} ({', '.join(done)} done)")


async def _saga(runtime: JourneyRuntime, console: Console) -> None:
    console.rule("4 · Saga journey: compensation on failure")
    orchestrator = runtime.saga
    handlers = {
        "upload_content": "delete_uploaded_content",
        "analyze_content": "revert_analysis",
        "transform_data": "revert_transformation",
    }
    design = await orchestrator.design_saga_journey("enterprise_migration", {"source": "legacy"}, handlers)
    journey_id = design["journey_id"]
    for label, rows in (("clean batch", {"rows": 1200}), ("batch with corrupt records", {"corrupt_records": 3})):
        console.print(f"[bold]{label}[/]")
        execution = await orchestrator.execute_saga_journey(journey_id, f"user_{label[:5]}", {})
        saga_id = execution["saga_id"]
        for step_result in ({"files_uploaded": 150}, {"entities": 42}, rows, {"checks_passed": True}):
            step = execution["current_step"]
            execution = await orchestrator.advance_saga_step(saga_id, journey_id, execution["user_id"], step_result)
            mark = "[green]✓[/]" if step in execution["completed_steps"] else "[red]✗[/]"
            console.print(f"  {mark} {step}")
            if execution["status"] != "in_progress":
                break
        status = await orchestrator.get_saga_status(saga_id)
        console.print(f"  saga status: [bold]{status['status']}[/]  compensated: {status['compensated_steps']}")


def _print_summary(summary: Mapping[str, Any], console: Console) -> None:
    console.rule("Journey analytics")
    table = Table("status", "journeys")
    for status, count in sorted(summary["by_status"].items()):
        table.add_row(status, str(count))
    console.print(table)


__all__ = ["run_demo"]
