"""Every code example and data shape of seeds/client-journey-design-notes.md, with the seed's names.

The notes give the stored shapes (UnitOfWork, Task, ValidationResult, CriteriaCheck, the two tables),
an example sandbox unit, the validator's checks, the rollback triggers, STAGE_METRICS, the success
metrics and a 30-day example timeline; each is checked against what ``runtime.lifecycle`` stores and
reports.
"""

from __future__ import annotations

from typing import Any

from agents.protocol import AgentRequest
from graphs import STAGE_METRICS, RollbackTrigger
from graphs.lifecycle.machine import LifecycleSpec, StageSpec
from nodes.criteria_gate import CriteriaCheck, ValidationResult
from nodes.uow import UnitOfWorkSpec
from tests.lifecycle_support import (
    DAY,
    PILOT_ENTRY,
    PILOT_EXIT,
    PRODUCTION_ENTRY,
    PRODUCTION_EXIT,
    SANDBOX_EXIT,
    journey_at,
    lifecycle_runtime,
)

# --- 4. the example sandbox setup unit of work, as the notes' JSON gives it --------------------------
SANDBOX_UOW: dict[str, Any] = {
    "uow_id": "uow-sandbox-medtronic-001",
    "journey_id": "journey-medtronic-2026",
    "stage": "sandbox",
    "tasks": [
        {
            "task_id": "task-001",
            "name": "Install Confluence connector",
            "agent_id": "connector-installation-agent",
            "input_data": {"connector_type": "confluence", "auth_method": "oauth2"},
        },
        {
            "task_id": "task-002",
            "name": "Provision test dataset",
            "agent_id": "dataset-provisioning-agent",
            "input_data": {"scenario": "healthcare_demo", "size": "medium"},
        },
        {
            "task_id": "task-003",
            "name": "Validate search quality",
            "agent_id": "search-quality-agent",
            "input_data": {"precision_threshold": 0.80},
        },
    ],
    "dependencies": [],
    "status": "pending",
}
UNIT_OF_WORK_FIELDS = {
    "uow_id",
    "journey_id",
    "stage",
    "tasks",
    "dependencies",
    "status",
    "created_at",
    "started_at",
    "completed_at",
}
TASK_FIELDS = {"task_id", "name", "agent_id", "input_data", "output_data", "status", "retry_count", "max_retries"}
# --- 6. rollback triggers ------------------------------------------------------------------------------
SEED_TRIGGERS = {
    "SECURITY_VULNERABILITY": "security_vulnerability",
    "DATA_QUALITY_LOW": "data_quality_low",
    "USER_SATISFACTION_LOW": "user_satisfaction_low",
    "CRITICAL_BUG": "critical_bug",
    "PERFORMANCE_DEGRADATION": "performance_degradation",
    "MAJOR_INCIDENT": "major_incident",
    "CLIENT_REQUEST": "client_request",
}
# --- validation metrics ----------------------------------------------------------------------------------
SEED_STAGE_METRICS = {
    "sandbox": {
        "connector_sync_rate": {"threshold": 1.0, "operator": ">="},
        "search_precision": {"threshold": 0.80, "operator": ">="},
        "security_vulnerabilities": {"threshold": 0, "operator": "=="},
    },
    "pilot": {
        "search_precision": {"threshold": 0.85, "operator": ">="},
        "user_satisfaction": {"threshold": 4.0, "operator": ">="},
        "bug_count": {"threshold": 0, "operator": "=="},
        "p95_latency_ms": {"threshold": 500, "operator": "<="},
    },
    "production": {
        "user_adoption": {"threshold": 0.70, "operator": ">="},
        "search_satisfaction": {"threshold": 4.5, "operator": ">="},
        "query_volume_growth": {"threshold": 0.20, "operator": ">="},
    },
}
JOURNEY_STATES_COLUMNS = {
    "client_id",
    "current_stage",
    "previous_stage",
    "started_at",
    "stage_started_at",
    "completed_stages",
    "metadata",
}


def test_stage_metrics_are_the_seeds_table() -> None:
    assert STAGE_METRICS == SEED_STAGE_METRICS


def test_rollback_triggers_are_the_seeds() -> None:
    assert {t.name: t.value for t in RollbackTrigger} == SEED_TRIGGERS


def test_criteria_check_and_validation_result_have_the_seeds_fields() -> None:
    check = CriteriaCheck(
        name="search_quality", passed=True, actual_value=0.86, expected_value=">= 0.8", message="Precision: 86.00%"
    )
    assert (check.actual_value, check.expected_value) == (0.86, ">= 0.8")
    assert (check.actual, check.expected) == (0.86, ">= 0.8")  # the earlier names, kept as aliases
    assert CriteriaCheck.from_dict({**check.to_dict(), "actual_value": 0.9}).actual_value == 0.9
    old = {"name": "n", "passed": False, "actual": 1, "expected": 2, "message": "m"}  # stored before the rename
    assert CriteriaCheck.from_dict(old).expected_value == 2
    fields = set(ValidationResult.__dataclass_fields__)
    assert {"passed", "checks", "summary"} <= fields


async def test_the_notes_sandbox_unit_runs_with_the_seeds_names_and_stores_the_seeds_task_fields(
    store_url: str,
) -> None:
    unit = UnitOfWorkSpec(uow_id=SANDBOX_UOW["uow_id"], tasks=SANDBOX_UOW["tasks"], dependencies=())
    seen: dict[str, dict[str, Any]] = {}

    def agent(request: AgentRequest) -> dict[str, Any]:
        seen[request.intent] = dict(request.payload)
        return {"done": request.intent}

    spec = LifecycleSpec(sandbox=StageSpec(units=(unit,)), pilot=StageSpec(), production=StageSpec())
    async with lifecycle_runtime(store_url) as (rt, _clock):
        for task in SANDBOX_UOW["tasks"]:  # a task that names only its agent_id is served by that agent
            rt.agents.register(task["agent_id"], agent, replace=True)
        journey_id = (await rt.lifecycle.start_journey("medtronic", spec=spec))["journey_id"]
        result = await rt.lifecycle.run_unit_of_work(journey_id, SANDBOX_UOW["uow_id"])
        assert result["status"] == "completed"
        assert seen["connector-installation-agent"] == {"connector_type": "confluence", "auth_method": "oauth2"}
        [run] = await rt.lifecycle.units_of_work(journey_id)
        assert set(run) >= UNIT_OF_WORK_FIELDS
        assert (run["uow_id"], run["stage"], run["status"], run["dependencies"]) == (
            SANDBOX_UOW["uow_id"],
            "sandbox",
            "completed",
            [],
        )
        task = run["tasks"]["task-001"]
        assert set(task) >= TASK_FIELDS
        assert (task["name"], task["agent_id"], task["status"]) == (
            "Install Confluence connector",
            "connector-installation-agent",
            "completed",
        )
        assert task["input_data"] == {"connector_type": "confluence", "auth_method": "oauth2"}
        assert task["output_data"] == {"done": "connector-installation-agent"}
        assert (task["retry_count"], task["max_retries"]) == (0, 3)


async def test_a_retried_task_counts_its_retries(store_url: str) -> None:
    calls = 0

    def flaky(request: AgentRequest) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("connector API timed out")
        return {"installed": True}

    unit = UnitOfWorkSpec(uow_id="retrying", tasks=[{**SANDBOX_UOW["tasks"][0], "max_retries": 4}])
    spec = LifecycleSpec(sandbox=StageSpec(units=(unit,)), pilot=StageSpec(), production=StageSpec())
    async with lifecycle_runtime(store_url) as (rt, _clock):
        rt.agents.register("connector-installation-agent", flaky, replace=True)
        journey_id = (await rt.lifecycle.start_journey("medtronic", spec=spec))["journey_id"]
        await rt.lifecycle.run_unit_of_work(journey_id, "retrying")
        [run] = await rt.lifecycle.units_of_work(journey_id)
        assert (run["tasks"]["task-001"]["retry_count"], run["tasks"]["task-001"]["max_retries"]) == (2, 4)


async def test_the_default_connector_task_passes_oauth2_as_the_notes_example_does(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        journey_id = await journey_at(rt, clock, "sandbox")
        [run] = await rt.lifecycle.units_of_work(journey_id)
        assert run["tasks"]["install-connectors"]["input_data"]["auth_method"] == "oauth2"


async def test_exit_criteria_validator_checks_what_the_notes_list(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        journey_id = await journey_at(rt, clock, "sandbox")
        await lc.run_unit_of_work(journey_id, "test_dataset_provisioning")
        await lc.run_unit_of_work(journey_id, "search_quality_validation")
        # validate_sandbox_exit: connectors installed, search quality 0.80, security scan, stakeholder approval.
        await lc.record_metrics(journey_id, {**SANDBOX_EXIT, **PILOT_ENTRY, "demo_approved": 0})
        sandbox = await lc.promote(journey_id)
        assert not sandbox.passed and [c.name for c in sandbox.failed_checks] == ["demo_approved"]
        assert {"connectors_syncing", "search_quality", "security_scan"} <= {c.name for c in sandbox.checks}
        check = next(c for c in sandbox.checks if c.name == "search_quality")
        assert (check.actual_value, check.expected_value) == (0.86, ">= 0.8")


async def test_the_notes_tables_are_what_a_journey_reports(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        journey_id = await journey_at(rt, clock, "sandbox")
        assert set(await rt.lifecycle.get_journey_state(journey_id)) >= JOURNEY_STATES_COLUMNS
        assert all(set(run) >= UNIT_OF_WORK_FIELDS for run in await rt.lifecycle.units_of_work(journey_id))


async def test_the_medtronic_timeline_reaches_production_and_completes_in_30_days(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        # Day 1: journey initiated, UOW-001 (connector installation) executed as the sandbox is entered.
        journey_id = await journey_at(rt, clock, "sandbox", client_id="medtronic-healthcare")
        clock.advance(2 * DAY)  # Day 3: test dataset provisioning completed
        await lc.run_unit_of_work(journey_id, "test_dataset_provisioning")
        clock.advance(4 * DAY)  # Day 7: search quality validation passed
        await lc.run_unit_of_work(journey_id, "search_quality_validation")
        await lc.record_metrics(journey_id, {**SANDBOX_EXIT, **PILOT_ENTRY})
        clock.advance(3 * DAY)  # Day 10: exit criteria met, promoted to pilot
        assert (await lc.promote(journey_id)).passed
        clock.advance(DAY)  # Day 11: limited user rollout
        await lc.run_unit_of_work(journey_id, "limited_user_rollout")
        clock.advance(3 * DAY)  # Day 14: satisfaction collected (4.2)
        await lc.record_metrics(journey_id, PILOT_EXIT)
        clock.advance(4 * DAY)  # Day 18: performance SLA validated (P95 420 ms)
        await lc.run_unit_of_work(journey_id, "pilot_validation")
        await lc.record_metrics(journey_id, {**PILOT_EXIT, **PRODUCTION_ENTRY})
        clock.advance(3 * DAY)  # Day 21: promoted to production
        await lc.record_metrics(journey_id, PILOT_EXIT)
        assert (await lc.promote(journey_id)).passed
        for days, unit in ((1, "rollout_10"), (3, "rollout_50"), (3, "rollout_100")):  # days 22, 25, 28
            clock.advance(days * DAY)
            await lc.run_unit_of_work(journey_id, unit)
        await lc.record_metrics(journey_id, PRODUCTION_EXIT)
        clock.advance(2 * DAY)  # Day 30: marked COMPLETED
        assert (await lc.mark_complete(journey_id)).passed
        figures = await lc.dashboard()
        assert figures["time_to_production"]["mean_days"] == 20  # day 1 → day 21
        assert figures["client_success_rate"]["rate"] == 1.0
        assert figures["rollback_rate"]["rate"] == 0.0
        assert figures["exit_criteria_first_pass_rate"]["rate"] == 1.0
        state = await lc.get_journey_state(journey_id)
        assert state["current_stage"] == "completed"
        assert state["completed_stages"] == ["sandbox", "pilot", "production"]
