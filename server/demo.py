"""The demo: every family, offline, on the embedded SQLite default, with readable progress.

Structured; session and MVP with two turns of the guide; a saga that compensates; a client lifecycle
promoted and rolled back on a virtual clock; a process with a user task, its SLA and a timer. It ends
with how to open the dashboard on the demo's database.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from langchain_core.messages import HumanMessage
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from agents import AgentRequest, PermanentAgentError
from checkpoints import VirtualClock
from graphs import READY_TO_START, JourneyRuntime
from graphs.guide import guide_graph


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
    """Run every family on ``url``; returns the analytics summary it prints before the closing hint."""
    clock = VirtualClock(datetime.now(UTC))  # the lifecycle's 10 days and the process's timers pass at once
    async with JourneyRuntime.open(url, clock=clock) as runtime:
        for intent in ("delete_uploaded_content", "revert_analysis", "revert_transformation"):
            runtime.agents.register(intent, UndoAgent(intent, console), replace=True)
        runtime.agents.register("transform_data", TransformAgent(), replace=True)
        console.rule(f"[bold]journeys demo[/] on {runtime.store.url.raw}")
        await _structured(runtime, console)
        await _session(runtime, console)
        await _mvp(runtime, console)
        await _saga(runtime, console)
        await _lifecycle(runtime, clock, console)
        await _process(runtime, clock, console)
        summary = await runtime.analytics.summary()
        _print_summary(summary, console)
    _dashboard_hint(url, console)
    return summary


@contextmanager
def _bar(console: Console, label: str, total: int) -> Iterator[tuple[Progress, TaskID]]:
    """A progress bar for a long part of the demo."""
    columns = (TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console) as progress:
        yield progress, progress.add_task(label, total=total)


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
    console.rule("3 · MVP journey: four pillars, and the guide that chats about them")
    orchestrator = runtime.mvp
    journey = await orchestrator.start_mvp_journey("user_123", initial_pillar="content")
    session_id = journey["session"]["session_id"]
    guide = guide_graph(runtime)
    config = runtime.engine.config(f"guide-{session_id}")
    first: dict[str, Any] = {"session_id": session_id}
    for said in ("What should I do next?", "I uploaded and parsed the files"):
        console.print(f"  [bold]you[/]   {said}")
        result = await guide.ainvoke({"messages": [HumanMessage(said)], **first}, config)
        first = {}
        calls = [c["name"] for m in result["messages"][-3:-1] for c in getattr(m, "tool_calls", [])]
        console.print(f"  [bold cyan]guide[/] [dim]({', '.join(calls)})[/] {result['messages'][-1].content}")
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


async def _lifecycle(runtime: JourneyRuntime, clock: VirtualClock, console: Console) -> None:
    console.rule("5 · Client lifecycle: sandbox → pilot, then a rollback (virtual clock)")
    lifecycle = runtime.lifecycle
    journey = await lifecycle.start_journey("client-acme", metrics=READY_TO_START)
    journey_id = journey["journey_id"]
    units = ("test_dataset_provisioning", "search_quality_validation")
    with _bar(console, "sandbox units of work", len(units)) as (progress, task):
        for unit in units:
            await lifecycle.run_unit_of_work(journey_id, unit)
            progress.advance(task)
    refused = await lifecycle.promote(journey_id)
    console.print(f"  promote too early: [red]refused[/] ({refused.summary})")
    sandbox_done = {"connector_sync_rate": 1.0, "search_precision": 0.86, "security_vulnerabilities": 0}
    await lifecycle.record_metrics(
        journey_id, {**sandbox_done, "demo_approved": True, "pilot_cohort_size": 25, "production_infra_ready": 1}
    )
    clock.advance(timedelta(days=10))
    console.print("  … 10 days of stable metrics later (the virtual clock moved)")
    promoted = await lifecycle.promote(journey_id)
    stage = (await lifecycle.get_journey_state(journey_id))["current_stage"]
    console.print(f"  promote: [green]{'passed' if promoted.passed else 'refused'}[/] → stage [bold]{stage}[/]")
    recorded = await lifecycle.record_metric(journey_id, "user_satisfaction", 3.2)
    stage = (await lifecycle.get_journey_state(journey_id))["current_stage"]
    trigger = recorded["rollback"]["trigger"]
    console.print(f"  user satisfaction 3.2 in the pilot: rollback [yellow]{trigger}[/] → stage [bold]{stage}[/]")
    console.print(f"  rollback rate: {(await lifecycle.metrics.rollback_rate())['rate']:.0%}")


RENEWAL = {
    "name": "contract_renewal",
    "description": "Draft the offer → a manager approves (SLA 24h) → 3-day cooling-off timer → send",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "service_task", "id": "draft_offer", "agent": "renewal.draft_offer", "outputs": {"offer": "offer"}},
        {
            "type": "user_task",
            "id": "approve_offer",
            "title": "Approve the renewal offer",
            "candidate_groups": ["account-managers"],
            "response_schema": {"type": "object", "properties": {"approved": {"type": "boolean"}}},
            "outputs": ["approved"],
            "sla": "PT24H",
            "on_timeout": {"action": "reassign", "candidate_groups": ["sales-directors"]},
        },
        {"type": "timer", "id": "cooling_off", "timer": {"duration": "P3D"}},
        {"type": "service_task", "id": "send_offer", "agent": "renewal.send_offer"},
        {"type": "end", "id": "sent"},
    ],
    "flows": [
        "start -> draft_offer",
        "draft_offer -> approve_offer",
        "approve_offer -> cooling_off",
        "cooling_off -> send_offer",
        "send_offer -> sent",
    ],
}


async def _process(runtime: JourneyRuntime, clock: VirtualClock, console: Console) -> None:
    console.rule("6 · Process: a user task with an SLA, and a timer")
    processes = runtime.processes
    runtime.agents.register("renewal.draft_offer", lambda _request: {"offer": "12 months, 5% off"}, replace=True)
    runtime.agents.register("renewal.send_offer", lambda _request: {"sent": True}, replace=True)
    await processes.deploy(RENEWAL)
    customers = [f"customer-{n}" for n in range(1, 6)]
    views = []
    with _bar(console, "renewals started", len(customers)) as (progress, task):
        for customer in customers:
            views.append(await processes.start("contract_renewal", customer))
            progress.advance(task)
    console.print(f"  {len(views)} renewals wait at [cyan]approve_offer[/] in the account managers' inbox")
    tasks = await processes.inbox.list_tasks(group="account-managers")
    for open_task in tasks[:-1]:
        await processes.inbox.complete(
            open_task["task_id"], user="ana", groups=["account-managers"], payload={"approved": True}
        )
    clock.advance(timedelta(hours=25))
    await processes.scheduler.run_due()
    [late] = await processes.inbox.list_tasks(group="sales-directors")
    console.print(f"  one task sat past its 24h SLA: reassigned to [yellow]sales-directors[/] ({late['instance_id']})")
    await processes.inbox.complete(late["task_id"], user="dan", groups=["sales-directors"], payload={"approved": True})
    clock.advance(timedelta(days=3))
    report = await processes.scheduler.run_due()
    statuses = [(await processes.status(v["instance_id"]))["outcome"] for v in views]
    console.print(f"  3 days later the cooling-off timers fired ({report.fired}): outcomes {statuses}")


def _dashboard_hint(url: str, console: Console) -> None:
    console.rule("See it all in the dashboard")
    console.print(f"  journeys serve --no-auth --database-url {url}")
    console.print("  then open [link]http://127.0.0.1:8123/ui[/link]")


def _print_summary(summary: Mapping[str, Any], console: Console) -> None:
    console.rule("Journey analytics")
    table = Table("status", "journeys")
    for status, count in sorted(summary["by_status"].items()):
        table.add_row(status, str(count))
    console.print(table)


__all__ = ["run_demo"]
