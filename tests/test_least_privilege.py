"""Least privilege and policies on the one agent-call path: a spec declares the intents it may call and an
agent the scopes it needs; a call outside the grants is refused before it runs, recorded with its reason,
and the journey fails safe (a saga compensates). Policies given to the runtime add to the defaults."""

from __future__ import annotations

from typing import Any

import pytest

from agents import AgentCall, PolicyViolationError, RecordingAgent, RetrySettings, SessionAction, TaskCompletion
from agents.policy import Checked
from checkpoints.ownership import Owner, acting_as
from checkpoints.redaction import REDACTED, redact
from graphs import JourneyRuntime
from graphs.errors import UnitOfWorkFailedError
from graphs.guide import NAVIGATE_INTENT, RECORD_INTENT, MVPGuideBackend
from graphs.lifecycle.machine import LifecycleSpec, StageSpec
from graphs.session.mvp import mvp_spec
from nodes.uow import TaskSpec, UnitOfWorkSpec

FAST = RetrySettings(max_attempts=2, initial_delay=0.001, max_delay=0.01, jitter=0.001)
SPEC: dict[str, Any] = {
    "journey_type": "publishing",
    "permissions": ["content:write"],
    "intents": ["write_content", "review_content"],
    "steps": [
        {"step_id": "write", "agent": "write_content"},
        {"step_id": "enrich", "agent": "read_profiles"},  # an intent the spec does not declare
    ],
}
SESSION: dict[str, Any] = {
    "areas": [
        {"area_id": "content", "completion": {"files_uploaded": True}},
        {"area_id": "insights"},
        {"area_id": "business_outcome", "completion": {"roadmap_generated": True}},
    ],
    "initial_area": "content",
}


def denials(events: list[Any]) -> list[dict[str, Any]]:
    return [dict(e.payload) for e in events if e.type == "policy.denied"]


async def test_an_added_policy_runs_after_least_privilege_not_instead(store_url: str) -> None:
    seen: list[str] = []

    def audit(call: AgentCall | TaskCompletion) -> None:
        if isinstance(call, AgentCall):  # policies see task completions too
            seen.append(call.agent.intent)

    async with JourneyRuntime.open(store_url, policies=[audit], retry=FAST) as rt:
        needy = RecordingAgent("write_content")
        rt.agents.register("write_content", needy, permissions={"content:publish"})  # not granted
        rt.agents.register("read_profiles", RecordingAgent("read_profiles"))
        spec = {**SPEC, "intents": None}
        journey = await rt.structured.design_journey("publishing", {}, spec=spec)
        await rt.structured.execute_journey(journey["journey_id"], "u", {})
        with pytest.raises(PolicyViolationError, match="content:publish"):
            await rt.structured.advance_journey_step(journey["journey_id"], "u", {})
        assert not needy.calls and seen == []  # refused by the default policy, before the added one ran
        [denied] = denials(await rt.history(f"{journey['journey_id']}:u"))
        assert denied["intent"] == "write_content" and denied["missing"] == ["content:publish"]
        assert "does not grant" in denied["reason"]


async def test_an_intent_the_spec_does_not_declare_is_refused_and_recorded(store_url: str) -> None:
    async with JourneyRuntime.open(store_url, retry=FAST) as rt:
        writer, profiles = RecordingAgent("write_content"), RecordingAgent("read_profiles")
        rt.agents.register("write_content", writer, permissions={"content:write"})
        rt.agents.register("read_profiles", profiles)
        journey = await rt.structured.design_journey("publishing", {}, spec=SPEC)
        await rt.structured.execute_journey(journey["journey_id"], "u", {})
        await rt.structured.advance_journey_step(journey["journey_id"], "u", {})
        with pytest.raises(PolicyViolationError, match="may not call intent 'read_profiles'"):
            await rt.structured.advance_journey_step(journey["journey_id"], "u", {})
        assert sum(writer.calls.values()) == 1 and not profiles.calls
        events = await rt.history(f"{journey['journey_id']}:u")
        [denied] = denials(events)
        assert (denied["intent"], denied["allowed"]) == ("read_profiles", ["review_content", "write_content"])
        assert [e.step for e in events if e.type == "policy.denied"] == ["enrich"]
        status = await rt.structured.get_journey_status(journey["journey_id"], "u")
        assert (status["status"], status["failed_step"]) == ("failed", "enrich")


async def test_a_refused_saga_step_compensates_what_was_done(store_url: str) -> None:
    async with JourneyRuntime.open(store_url, retry=FAST) as rt:
        undo = RecordingAgent("unwrite_content")
        rt.agents.register("write_content", RecordingAgent("write_content"), permissions={"content:write"})
        rt.agents.register("read_profiles", RecordingAgent("read_profiles"))
        rt.agents.register("unwrite_content", undo)
        saga = await rt.saga.design_saga_journey("publishing", {}, {"write": "unwrite_content"}, spec=SPEC)
        execution = await rt.saga.execute_saga_journey(saga["journey_id"], "u", {})
        for _ in range(2):
            status = await rt.saga.advance_saga_step(
                saga_id=execution["saga_id"], journey_id=saga["journey_id"], user_id="u", step_result={}
            )
        assert status["status"] == "compensated" and status["compensated_steps"] == ["write"]
        assert sum(undo.calls.values()) == 1
        assert [d["intent"] for d in denials(await rt.history(execution["saga_id"]))] == ["read_profiles"]


def no_large_approvals(check: AgentCall | TaskCompletion) -> None:
    """A policy on people's answers: nobody approves more than 100 through a user task."""
    if isinstance(check, TaskCompletion) and float(check.payload.get("amount", 0)) > 100:
        raise PolicyViolationError(f"{check.user} may not approve {check.payload['amount']}", limit=100)


async def test_policies_run_before_every_user_task_completion_and_a_denial_is_audited(store_url: str) -> None:
    async with JourneyRuntime.open(store_url, policies=[no_large_approvals]) as rt:
        spec = {"journey_type": "refund", "steps": [{"step_id": "approve"}, {"step_id": "close"}]}
        journey = await rt.structured.design_journey("refund", spec=spec)
        await rt.structured.execute_journey(journey["journey_id"], "ana", {})
        with pytest.raises(PolicyViolationError, match="ana may not approve 500") as refused:
            await rt.structured.advance_journey_step(journey["journey_id"], "ana", {"amount": 500})
        assert refused.value.details["limit"] == 100
        status = await rt.structured.get_journey_status(journey["journey_id"], "ana")
        assert (status["current_step"], status["completed_steps"]) == ("approve", [])  # nothing was applied
        [denied] = denials(await rt.history(status["instance_id"]))
        assert (denied["kind"], denied["user"], denied["limit"]) == ("user_task", "ana", 100)
        assert "may not approve 500" in denied["reason"]
        status = await rt.structured.advance_journey_step(journey["journey_id"], "ana", {"amount": 50})
        assert status["completed_steps"] == ["approve"]

        # A process user task, completed from the inbox: the same policies, the same audit event.
        await rt.processes.deploy(
            {
                "name": "expense",
                "elements": [
                    {"type": "start", "id": "start"},
                    {"type": "user_task", "id": "approve", "candidate_groups": ["finance"]},
                    {"type": "end", "id": "end"},
                ],
                "flows": ["start -> approve", "approve -> end"],
            }
        )
        view = await rt.processes.start("expense", business_key="exp-1")
        [task] = await rt.processes.inbox.list_tasks(group="finance")
        with pytest.raises(PolicyViolationError, match="ben may not approve 900"):
            await rt.processes.inbox.complete(task["task_id"], user="ben", groups=["finance"], payload={"amount": 900})
        assert (await rt.processes.inbox.get_task(task["task_id"]))["status"] == "open"
        [denied] = denials(await rt.history(view["instance_id"]))
        assert (denied["kind"], denied["user"], denied["reason"]) == ("user_task", "ben", "ben may not approve 900")
        done = await rt.processes.inbox.complete(task["task_id"], user="ben", groups=["finance"], payload={"amount": 9})
        assert done["status"] == "completed"


async def test_every_spec_kind_takes_intents_and_sensitive_fields(store_url: str) -> None:
    grants = {"intents": ["crm.capture"], "sensitive": ["nickname"]}
    async with JourneyRuntime.open(store_url, retry=FAST) as rt:
        # A process: a service task calling an intent its spec does not declare is refused, and audited.
        rt.agents.register("crm.capture", lambda request: {"nickname": "teal-fox", "captured": True})
        rt.agents.register("crm.export", RecordingAgent("crm.export"))
        process = {
            "name": "capture",
            **grants,
            "elements": [
                {"type": "start", "id": "start"},
                {"type": "service_task", "id": "capture", "agent": "crm.capture", "output_variables": ["nickname"]},
                {"type": "service_task", "id": "export", "agent": "crm.export"},
                {"type": "end", "id": "end"},
            ],
            "flows": ["start -> capture", "capture -> export", "export -> end"],
        }
        await rt.processes.deploy(process)
        try:
            view = await rt.processes.start("capture", business_key="c-1")
            instance_id = view["instance_id"]
        except PolicyViolationError:
            [instance] = [i for i in await rt.store.index.list_instances() if i.pattern == "process"]
            instance_id = instance.instance_id
        events = await rt.history(instance_id)
        assert [(d["intent"], d["allowed"]) for d in denials(events)] == [("crm.export", ["crm.capture"])]
        [captured] = [e for e in events if e.type == "task.completed"]
        assert captured.payload["output"]["nickname"] == "teal-fox"  # the log keeps it whole: recovery replays it
        assert redact(captured.payload)["output"]["nickname"] == REDACTED  # the spec marked it: shown redacted

        # A session (the MVP's guide calls agents on it): only the declared intents.
        mvp = rt.mvp.sessions
        session = await mvp.start_session("ana", {**mvp_spec("content").model_dump(), "intents": [RECORD_INTENT]})
        guide = MVPGuideBackend(rt)
        with pytest.raises(PolicyViolationError, match=NAVIGATE_INTENT):
            await guide.navigate(session["session_id"], "insights", key="call-1")
        await guide.record(session["session_id"], "content", {"files_uploaded": True}, key="call-2")
        assert [d["intent"] for d in denials(await rt.history(session["session_id"]))] == [NAVIGATE_INTENT]

        # A client lifecycle: a unit-of-work task outside the spec's intents is refused before it runs.
        export = RecordingAgent("crm.export")
        rt.agents.register("crm.export", export, replace=True)
        unit = UnitOfWorkSpec(uow_id="setup", tasks=(TaskSpec(task_id="export", intent="crm.export"),))
        spec = LifecycleSpec(**grants, sandbox=StageSpec(units=(unit,)), pilot=StageSpec(), production=StageSpec())
        journey_id = (await rt.lifecycle.start_journey("client-g", spec=spec))["journey_id"]
        try:
            failed = await rt.lifecycle.run_unit_of_work(journey_id, "setup")
        except UnitOfWorkFailedError as error:
            failed = error.unit
        assert failed["status"] == "failed" and failed["tasks"]["export"]["error_type"] == "PolicyViolationError"
        assert not export.calls
        assert [d["intent"] for d in denials(await rt.history(journey_id))] == ["crm.export"]


def outcomes_need_content_first(check: Checked) -> None:
    """A policy on sessions: nobody opens the business outcome, or records its roadmap, before the content
    pillar is done; and no session records a ``discount``."""
    if not isinstance(check, SessionAction):
        return
    if check.action == "update" and "discount" in check.payload:
        raise PolicyViolationError(f"{check.user} may not record a discount", field="discount")
    if check.step == "business_outcome" and check.action in ("navigate", "update"):
        raise PolicyViolationError(f"{check.user} may not {check.action} business_outcome yet", area=check.step)


async def test_session_navigation_and_progress_go_through_the_policies_and_a_denial_is_audited(
    store_url: str,
) -> None:
    async with JourneyRuntime.open(store_url, policies=[outcomes_need_content_first]) as rt:
        session_id = (await rt.session.start_session("ana", SESSION))["session_id"]
        before = await rt.session.get_session_progress(session_id)
        with pytest.raises(PolicyViolationError, match="ana may not navigate business_outcome yet"):
            await rt.session.navigate_to_area(session_id, "business_outcome")
        with acting_as(Owner("support-1")), pytest.raises(PolicyViolationError, match="ana may not record a discount"):
            await rt.session.update_area_state(session_id, "content", {"files_uploaded": True, "discount": 30})
        assert await rt.session.get_session_progress(session_id) == before  # nothing changed
        assert [(d["kind"], d["action"], d["user"], d["actor"]) for d in denials(await rt.history(session_id))] == [
            ("session_action", "navigate", "ana", None),
            ("session_action", "update", "ana", "support-1"),  # the principal the server acted for
        ]
        moved = await rt.session.navigate_to_area(session_id, "insights")  # what the policy allows goes on
        assert moved["current_area"] == "insights"

        # The MVP, and the guide's tools that act on it for the user: the same policies, the same audit.
        mvp_id = (await rt.mvp.sessions.start_session("bob", mvp_spec("content")))["session_id"]
        with pytest.raises(PolicyViolationError, match="bob may not update business_outcome yet"):
            await rt.mvp.update_pillar_progress(mvp_id, "business_outcome", {"roadmap_generated": True})
        guide = MVPGuideBackend(rt)
        with pytest.raises(PolicyViolationError, match="bob may not navigate business_outcome yet"):
            await guide.navigate(mvp_id, "business_outcome", key="call-1")
        progress = await rt.mvp.sessions.get_session_progress(mvp_id)
        assert progress["current_area"] == "content" and progress["areas"]["business_outcome"]["visited"] is False
        assert [(d["action"], d["area"]) for d in denials(await rt.history(mvp_id))] == [
            ("update", "business_outcome"),
            ("navigate", "business_outcome"),
        ]
