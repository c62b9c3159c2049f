"""The default client lifecycle, taken from the seeds (DES-002 and its design notes):
``STAGE_METRICS`` as given, the entry and exit criteria of each stage, the rollback triggers with
their thresholds, and the units of work of each stage.

Units follow the seed's example timeline: connector installation runs as the journey starts (UOW-001,
day 1); every other unit runs when asked (test data on day 3, the limited pilot rollout the day after
the promotion, the 10% → 50% → 100% production rollout on days 22, 25 and 28), and the units a stage
lists in ``required_units`` must have completed before it can be left.

Every intent it names gets a deterministic default agent (``DEFAULT_AGENT_OUTPUTS``, registered by
``JourneyRuntime.open``) so the whole lifecycle runs offline.
"""

from __future__ import annotations

from typing import Any

from graphs.lifecycle.machine import LifecycleSpec, RollbackThreshold, RollbackTrigger, StageSpec
from nodes.criteria_gate import MetricCriterion
from nodes.uow import TaskSpec, UnitOfWorkSpec

# As in the design notes, verbatim: the exit thresholds of each stage (production: its success metrics).
STAGE_METRICS: dict[str, dict[str, dict[str, Any]]] = {
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

# Check names from the seed's wording, and what the seed says beyond a plain latest value:
# "search quality metrics stable (>85%)" and "no critical bugs in 7-day window".
_NAMES = {
    ("sandbox", "connector_sync_rate"): ("connectors_syncing", "All connectors installed and syncing"),
    ("sandbox", "search_precision"): ("search_quality", "Test queries return relevant results"),
    ("sandbox", "security_vulnerabilities"): ("security_scan", "Security scan: no critical vulnerabilities"),
    ("pilot", "search_precision"): ("search_quality_stable", "Search precision stable for 7 days"),
    ("pilot", "user_satisfaction"): ("user_satisfaction", "User satisfaction score"),
    ("pilot", "bug_count"): ("no_critical_bugs_7d", "No critical bugs in the last 7 days"),
    ("pilot", "p95_latency_ms"): ("performance_sla", "Performance meets SLA (P95 latency)"),
    ("production", "user_adoption"): ("user_adoption", "User adoption"),
    ("production", "search_satisfaction"): ("search_satisfaction", "Search satisfaction"),
    ("production", "query_volume_growth"): ("query_volume_growth", "Query volume growth month over month"),
}
_WINDOWED = {
    ("pilot", "search_precision"): {"aggregate": "all", "window": "P7D"},
    ("pilot", "bug_count"): {"aggregate": "sum", "window": "P7D"},
}


def _exit_criteria(stage: str) -> tuple[MetricCriterion, ...]:
    criteria = []
    for metric, settings in STAGE_METRICS[stage].items():
        name, description = _NAMES[(stage, metric)]
        extra = _WINDOWED.get((stage, metric), {})
        criteria.append(
            MetricCriterion.model_validate(
                {"metric": metric, "name": name, "description": description, **settings, **extra}
            )
        )
    return tuple(criteria)


def _flag(name: str, metric: str, description: str, threshold: float = 1, operator: str = "==") -> MetricCriterion:
    return MetricCriterion.model_validate(
        {"metric": metric, "name": name, "operator": operator, "threshold": threshold, "description": description}
    )


def _trigger(metric: str, operator: str, threshold: float, trigger: RollbackTrigger, name: str) -> RollbackThreshold:
    return RollbackThreshold.model_validate(
        {"metric": metric, "operator": operator, "threshold": threshold, "trigger": trigger, "name": name}
    )


_ENV = {"environment_id": "string"}
_REVERTED = {
    "type": "object",
    "properties": {"reverted": {"const": True}},
    "required": ["reverted"],
}


def _sandbox() -> StageSpec:
    return StageSpec(
        name="Sandbox",
        entry_criteria=(
            _flag("contract_signed", "contract_signed", "Client contract signed"),
            _flag("infrastructure_provisioned", "infrastructure_provisioned", "Infrastructure provisioned"),
            _flag("data_sources_identified", "data_sources_identified", "Initial data sources identified", 1, ">="),
        ),
        exit_criteria=(
            *_exit_criteria("sandbox"),
            _flag("demo_approved", "demo_approved", "Stakeholder demo approved"),
        ),
        required_units=("connector_installation", "test_dataset_provisioning", "search_quality_validation"),
        units=(
            UnitOfWorkSpec(
                uow_id="connector_installation",
                name="Connector installation",
                trigger="on_entry",
                tasks=(
                    TaskSpec(
                        task_id="provision-infra",
                        name="Provision Infrastructure",
                        agent_id="infrastructure-provisioning-agent",
                        intent="provision_sandbox_environment",
                        input={"data_sources": ["confluence", "google_drive", "slack"]},
                        input_from={"client_id": "journey.client_id"},
                        input_schema={"client_id": "string", "data_sources": "array"},
                        output_schema={"environment_id": "string", "status": "string"},
                        compensation="deprovision_sandbox_environment",
                    ),
                    TaskSpec(
                        task_id="install-connectors",
                        name="Install Glean Connectors",
                        agent_id="connector-installation-agent",
                        intent="install_connectors",
                        depends_on=("provision-infra",),
                        input={"connectors": ["confluence", "google_drive", "slack"], "auth_method": "oauth2"},
                        input_from={"environment_id": "tasks.provision-infra.environment_id"},
                        input_schema={"environment_id": "string", "connectors": "array"},
                        output_schema={"installed_connectors": "array"},
                        compensation="uninstall_connectors",
                    ),
                ),
            ),
            UnitOfWorkSpec(
                uow_id="test_dataset_provisioning",
                name="Test dataset provisioning and security audit",
                dependencies=("connector_installation",),
                tasks=(
                    TaskSpec(
                        task_id="provision-test-data",
                        name="Provision Test Dataset",
                        agent_id="dataset-provisioning-agent",
                        intent="provision_test_dataset",
                        input={"scenario": "healthcare_demo", "size": "medium"},
                        input_from={"environment_id": "units.connector_installation.provision-infra.environment_id"},
                        input_schema=_ENV,
                        output_schema={"dataset_id": "string", "record_count": "number"},
                        compensation="delete_test_dataset",
                    ),
                    TaskSpec(
                        task_id="run-security-scan",
                        name="Security Audit",
                        agent_id="security-audit-agent",
                        intent="run_security_scan",
                        depends_on=("provision-test-data",),  # the seed's depends_on: scan the provisioned data
                        input_from={"environment_id": "units.connector_installation.provision-infra.environment_id"},
                        input_schema=_ENV,
                        output_schema={"scan_result": "object", "vulnerabilities": "array"},
                    ),
                ),
            ),
            UnitOfWorkSpec(
                uow_id="search_quality_validation",
                name="Search quality validation",
                dependencies=("test_dataset_provisioning",),
                tasks=(
                    TaskSpec(
                        task_id="validate-search-quality",
                        name="Validate search quality",
                        agent_id="search-quality-agent",
                        intent="validate_search_quality",
                        input={"precision_threshold": 0.80},
                        input_from={"dataset_id": "units.test_dataset_provisioning.provision-test-data.dataset_id"},
                        output_schema={"precision": "number"},
                    ),
                ),
            ),
        ),
        rollback_thresholds=(
            _trigger(
                "security_vulnerabilities", ">", 0, RollbackTrigger.SECURITY_VULNERABILITY, "security_vulnerability"
            ),
            _trigger("data_quality_score", "<", 0.80, RollbackTrigger.DATA_QUALITY_LOW, "data_quality_low"),
        ),
        rollback_unit=UnitOfWorkSpec(
            uow_id="sandbox_rollback",
            name="Reset the sandbox",
            tasks=(
                TaskSpec(
                    task_id="reset-sandbox",
                    intent="reset_sandbox_environment",
                    input_from={"client_id": "journey.client_id"},
                    output_schema=_REVERTED,
                ),
            ),
        ),
    )


def _pilot() -> StageSpec:
    return StageSpec(
        name="Pilot",
        entry_criteria=(
            _flag(
                "pilot_cohort_identified", "pilot_cohort_size", "Pilot user cohort identified (10-50 users)", 10, ">="
            ),
            _flag("production_infrastructure_ready", "production_infra_ready", "Production infrastructure ready"),
        ),
        exit_criteria=_exit_criteria("pilot"),
        required_units=("limited_user_rollout", "pilot_validation"),
        units=(
            UnitOfWorkSpec(
                uow_id="limited_user_rollout",
                name="Limited user rollout",
                dependencies=("search_quality_validation",),
                tasks=(
                    TaskSpec(
                        task_id="configure-pilot-cohort",
                        intent="configure_pilot_cohort",
                        input={"cohort_size": 25},
                        input_from={"client_id": "journey.client_id"},
                        output_schema={"cohort_id": "string", "user_count": "integer"},
                        compensation="disband_pilot_cohort",
                    ),
                    TaskSpec(
                        task_id="enable-pilot-access",
                        intent="enable_pilot_access",
                        depends_on=("configure-pilot-cohort",),
                        input_from={"cohort_id": "tasks.configure-pilot-cohort.cohort_id"},
                        output_schema={"access_granted": "boolean"},
                        compensation="revoke_pilot_access",
                    ),
                ),
            ),
            UnitOfWorkSpec(
                uow_id="pilot_validation",
                name="Pilot feedback and performance testing",
                dependencies=("limited_user_rollout",),
                tasks=(
                    TaskSpec(
                        task_id="collect-user-feedback",
                        intent="collect_user_feedback",
                        input_from={"cohort_id": "units.limited_user_rollout.configure-pilot-cohort.cohort_id"},
                        output_schema={"satisfaction": "number"},
                    ),
                    TaskSpec(
                        task_id="run-performance-test",
                        intent="run_performance_test",
                        input={"target_p95_latency_ms": 500},
                        output_schema={"p95_latency_ms": "number"},
                    ),
                ),
            ),
        ),
        rollback_thresholds=(
            _trigger("user_satisfaction", "<", 3.5, RollbackTrigger.USER_SATISFACTION_LOW, "user_satisfaction_low"),
            _trigger("bug_count", ">", 0, RollbackTrigger.CRITICAL_BUG, "critical_bug"),
            _trigger(
                "performance_degradation", ">", 0.20, RollbackTrigger.PERFORMANCE_DEGRADATION, "performance_degradation"
            ),
            _trigger(
                "security_vulnerabilities", ">", 0, RollbackTrigger.SECURITY_VULNERABILITY, "security_vulnerability"
            ),
        ),
        rollback_unit=UnitOfWorkSpec(
            uow_id="pilot_rollback",
            name="Withdraw the pilot",
            tasks=(
                TaskSpec(task_id="disable-pilot-access", intent="disable_pilot_access", output_schema=_REVERTED),
                TaskSpec(
                    task_id="restore-sandbox-configuration",
                    intent="restore_sandbox_configuration",
                    depends_on=("disable-pilot-access",),
                    output_schema=_REVERTED,
                ),
            ),
        ),
    )


def _rollout(percent: int, dependency: str) -> UnitOfWorkSpec:
    return UnitOfWorkSpec(
        uow_id=f"rollout_{percent}",
        name=f"Roll out to {percent}% of users",
        dependencies=(dependency,),
        tasks=(
            TaskSpec(
                task_id="rollout-users",
                intent="rollout_users",
                input={"percent": percent},
                input_from={"client_id": "journey.client_id"},
                output_schema={"rolled_out": "boolean"},
                compensation="rollback_user_rollout",
            ),
        ),
    )


def _production() -> StageSpec:
    return StageSpec(
        name="Production",
        entry_criteria=(
            _flag("rollout_plan_approved", "rollout_plan_approved", "Full user rollout plan approved"),
            _flag("monitoring_configured", "monitoring_configured", "Monitoring and alerting configured"),
        ),
        exit_criteria=_exit_criteria("production"),
        required_units=("rollout_100",),
        units=(
            _rollout(10, "pilot_validation"),
            _rollout(50, "rollout_10"),
            _rollout(100, "rollout_50"),
        ),
        rollback_thresholds=(
            _trigger("major_incidents", ">", 0, RollbackTrigger.MAJOR_INCIDENT, "major_incident"),
            _trigger("user_satisfaction", "<", 4.0, RollbackTrigger.USER_SATISFACTION_LOW, "user_satisfaction_low"),
            _trigger("service_outage_minutes", ">", 60, RollbackTrigger.MAJOR_INCIDENT, "service_outage"),
            _trigger("data_loss_incidents", ">", 0, RollbackTrigger.MAJOR_INCIDENT, "data_loss"),
            _trigger(
                "performance_degradation", ">", 0.50, RollbackTrigger.PERFORMANCE_DEGRADATION, "performance_degradation"
            ),
            _trigger(
                "security_vulnerabilities", ">", 0, RollbackTrigger.SECURITY_VULNERABILITY, "security_vulnerability"
            ),
        ),
        rollback_unit=UnitOfWorkSpec(
            uow_id="production_rollback",
            name="Halt and revert the production rollout",
            tasks=(
                TaskSpec(task_id="halt-rollout", intent="halt_rollout", output_schema=_REVERTED),
                TaskSpec(
                    task_id="revert-production-deployment",
                    intent="revert_production_deployment",
                    depends_on=("halt-rollout",),
                    output_schema=_REVERTED,
                ),
            ),
        ),
    )


def default_lifecycle_spec() -> LifecycleSpec:
    return LifecycleSpec(sandbox=_sandbox(), pilot=_pilot(), production=_production())


# Deterministic outputs of the default agents: enough to satisfy every task's output schema.
_UNDONE = {"undone": True}
_REVERT = {"reverted": True}
DEFAULT_AGENT_OUTPUTS: dict[str, dict[str, Any]] = {
    "provision_sandbox_environment": {"environment_id": "env-sandbox", "status": "ready"},
    "install_connectors": {"installed_connectors": ["confluence", "google_drive", "slack"]},
    "provision_test_dataset": {"dataset_id": "dataset-healthcare-demo", "record_count": 5000},
    "run_security_scan": {"scan_result": {"critical": 0, "high": 0}, "vulnerabilities": []},
    "validate_search_quality": {"precision": 0.86},
    "configure_pilot_cohort": {"cohort_id": "cohort-pilot", "user_count": 25},
    "enable_pilot_access": {"access_granted": True},
    "collect_user_feedback": {"satisfaction": 4.2},
    "run_performance_test": {"p95_latency_ms": 420},
    "rollout_users": {"rolled_out": True},
    "deprovision_sandbox_environment": _UNDONE,
    "uninstall_connectors": _UNDONE,
    "delete_test_dataset": _UNDONE,
    "disband_pilot_cohort": _UNDONE,
    "revoke_pilot_access": _UNDONE,
    "rollback_user_rollout": _UNDONE,
    "reset_sandbox_environment": _REVERT,
    "disable_pilot_access": _REVERT,
    "restore_sandbox_configuration": _REVERT,
    "halt_rollout": _REVERT,
    "revert_production_deployment": _REVERT,
    "notify_stakeholders": {"delivered": True, "channel": "event_log"},
}

# What a client needs recorded to start: the sandbox entry criteria.
READY_TO_START: dict[str, float] = {"contract_signed": 1, "infrastructure_provisioned": 1, "data_sources_identified": 3}
