"""Every code example of seeds/orchestration-layer-design-review.md, with the seed's names.

"Key Patterns Implemented" builds processes from Python objects (``ServiceTask``, ``UserTask``,
gateways, timer events), undoes steps with ``transaction.execute_with_compensation`` and rolls
versions out gradually; "Example Workflows" draws three processes. Each runs here on the three
backends and a virtual clock, written as the seed writes it: agents and callables named by object.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest

from agents import AgentRequest, PermanentAgentError
from agents.registry import RegisteredAgent
from checkpoints.errors import JourneyError
from graphs import SpecError
from graphs.process import (
    EndEvent,
    EventGateway,
    ExclusiveGateway,
    Flow,
    MessageEvent,
    ParallelGateway,
    ProcessSpec,
    ServiceTask,
    StartEvent,
    TimerEvent,
    Transaction,
    UserTask,
)
from tests.process_support import runtime, virtual_clock, waiting_elements

told: list[tuple[str, dict[str, Any]]] = []


class WowVisionPrime:
    """The seed's agent, named by its class: it approves pull requests whose number is even."""

    def __call__(self, request: AgentRequest) -> dict[str, Any]:
        return {"vision_approved": int(request.payload["variables"]["pr_number"]) % 2 == 0}


def rollback_function(request: AgentRequest) -> dict[str, Any]:
    told.append(("rollback_function", dict(request.payload)))
    return {"rolled_back": True}


def escalate_to_cto(request: AgentRequest) -> dict[str, Any]:
    told.append(("escalate_to_cto", dict(request.payload)))
    return {"escalated": "cto"}


def deploy(request: AgentRequest) -> dict[str, Any]:
    return {"deployment_id": f"d-{request.payload['variables']['pr_number']}"}


def create_issue(request: AgentRequest) -> dict[str, Any]:
    told.append(("create_issue", {}))
    return {"issue_number": 7}


def pr_review() -> ProcessSpec:
    """Example 1: Start → WowVision Validate → Gateway(Approved?) → Deploy | Create Issue."""
    return ProcessSpec(
        name="pr_review_objects",
        elements=[
            StartEvent(id="start"),
            ServiceTask(
                id="wowvision_validate",
                agent=WowVisionPrime,
                input_variables=["pr_number"],
                output_variables=["vision_approved"],
                compensation=rollback_function,
            ),
            ExclusiveGateway(id="approved"),
            ServiceTask(id="deploy", agent=deploy, output_variables=["deployment_id"]),
            ServiceTask(id="create_issue", agent=create_issue, output_variables=["issue_number"]),
            EndEvent(id="deployed"),
            EndEvent(id="issue_created"),
        ],
        flows=[
            "start -> wowvision_validate",
            "wowvision_validate -> approved",
            {"source": "approved", "target": "deploy", "when": {"field": "vision_approved", "op": "==", "value": True}},
            {"source": "approved", "target": "create_issue", "default": True},
            "deploy -> deployed",
            "create_issue -> issue_created",
        ],
    )


def test_service_task_takes_the_seeds_arguments() -> None:
    task = ServiceTask(
        id="wowvision_validate",
        agent=WowVisionPrime,
        input_variables=["pr_number"],
        output_variables=["vision_approved"],
        compensation=rollback_function,
    )
    assert (task.agent, task.compensation) == ("wow_vision_prime", "rollback_function")
    assert (task.inputs, task.outputs) == (("pr_number",), {"vision_approved": "vision_approved"})
    # The objects stay with the spec until it is deployed; the spec itself is plain data.
    assert set(ProcessSpec(name="one", elements=[task]).agent_bindings()) == {"wow_vision_prime", "rollback_function"}
    assert ServiceTask(id="named", agent="wowvision.validate").agent == "wowvision.validate"
    registered = RegisteredAgent("wowvision.validate", WowVisionPrime(), "WowVisionPrime")
    by_entry = ServiceTask(id="by_entry", agent=registered)
    assert (by_entry.agent, by_entry._bindings["wowvision.validate"]) == ("wowvision.validate", registered.agent)
    with pytest.raises(SpecError, match="not an agent"):
        ServiceTask(id="broken", agent=42)


def test_user_task_takes_the_seeds_arguments() -> None:
    task = UserTask(
        id="approval",
        title="Review Major Change",
        assignee="engineering-lead",
        sla_hours=4,
        on_timeout=escalate_to_cto,
    )
    assert task.sla_timer is not None and task.sla_timer.duration == "PT14400S"
    assert task.on_timeout is not None and (task.on_timeout.action, task.on_timeout.notify) == (
        "notify",
        "escalate_to_cto",
    )
    assert UserTask(id="by_name", on_timeout="notify.cto").on_timeout.notify == "notify.cto"  # type: ignore[union-attr]


async def test_pr_review_built_from_objects_runs_both_ways(store_url: str) -> None:
    async with runtime(store_url) as rt:
        await rt.processes.deploy(pr_review())
        approved = await rt.processes.start("pr_review_objects", "pr-42", variables={"pr_number": 42})
        rejected = await rt.processes.start("pr_review_objects", "pr-43", variables={"pr_number": 43})
        assert (approved["outcome"], approved["variables"]["deployment_id"]) == ("deployed", "d-42")
        assert (rejected["outcome"], rejected["variables"]["issue_number"]) == ("issue_created", 7)
        # Deploying the same objects again is a no-op, and the agents it registered stay registered.
        assert (await rt.processes.deploy(pr_review()))["version"] == 1
        assert "wow_vision_prime" in rt.agents


async def test_an_intent_taken_by_another_agent_is_refused_with_a_fix(store_url: str) -> None:
    async with runtime(store_url) as rt:
        rt.agents.register("deploy", lambda request: {"other": True})
        with pytest.raises(Exception, match="intent 'deploy'") as refused:
            await rt.processes.deploy(pr_review())
        assert "intent" in str(refused.value) and "string" in str(refused.value)


async def test_a_user_task_past_its_sla_calls_the_on_timeout_callable(store_url: str) -> None:
    clock = virtual_clock()
    spec = ProcessSpec(
        name="major_change",
        elements=[
            StartEvent(id="start"),
            UserTask(
                id="approval",
                title="Review Major Change",
                assignee="engineering-lead",
                sla_hours=4,
                on_timeout=escalate_to_cto,
            ),
            EndEvent(id="done"),
        ],
        flows=["start -> approval", "approval -> done"],
    )
    async with runtime(store_url, clock) as rt:
        told.clear()
        await rt.processes.deploy(spec)
        view = await rt.processes.start("major_change", "change-1")
        assert waiting_elements(view) == ["approval"]
        clock.advance(timedelta(hours=3, minutes=59))
        await rt.processes.scheduler.run_due()
        assert told == []  # never early
        clock.advance(timedelta(minutes=1))
        await rt.processes.scheduler.run_due()
        assert [name for name, _payload in told] == ["escalate_to_cto"]
        [task] = await rt.processes.inbox.list_tasks(assignee="engineering-lead")
        done = await rt.processes.inbox.complete(task["task_id"], user="engineering-lead", payload={"ok": True})
        assert done["outcome"] == "done"


async def test_parallel_and_event_gateways_and_the_three_timer_kinds(store_url: str) -> None:
    clock = virtual_clock()
    spec = ProcessSpec(
        name="gateways_and_timers",
        elements=[
            StartEvent(id="start"),
            ParallelGateway(id="fork"),
            TimerEvent(id="trial_expiry", duration="P7D"),  # Duration: wait 7 days
            TimerEvent(id="report_at_nine", cron="0 9 * * *"),  # Cycle: daily at 9am (the next one)
            ParallelGateway(id="join"),
            EventGateway(id="race"),
            MessageEvent(id="paid", message="invoice.paid"),
            TimerEvent(id="deadline", date="2026-02-01T00:00:00Z"),  # Date: a specific deadline
            EndEvent(id="paid_in_time"),
            EndEvent(id="expired"),
        ],
        flows=[
            "start -> fork",
            "fork -> trial_expiry",
            "fork -> report_at_nine",
            "trial_expiry -> join",
            "report_at_nine -> join",
            "join -> race",
            "race -> paid",
            "race -> deadline",
            "paid -> paid_in_time",
            "deadline -> expired",
        ],
    )
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(spec)
        first = await rt.processes.start("gateways_and_timers", "acct-1")
        second = await rt.processes.start("gateways_and_timers", "acct-2")
        assert sorted(waiting_elements(first)) == ["report_at_nine", "trial_expiry"]
        clock.advance(timedelta(days=7))
        await rt.processes.scheduler.run_due()
        assert waiting_elements(await rt.processes.status(first["instance_id"])) == ["race"]  # paid or deadline
        await rt.processes.send_message("invoice.paid", "acct-1", {"amount": 10})
        assert (await rt.processes.status(first["instance_id"]))["outcome"] == "paid_in_time"
        clock.advance(timedelta(days=30))
        await rt.processes.scheduler.run_due()
        assert (await rt.processes.status(second["instance_id"]))["outcome"] == "expired"


async def test_transaction_execute_with_compensation_as_the_seed_calls_it(store_url: str) -> None:
    done: list[str] = []

    def step(name: str, *, fails: bool = False) -> Any:
        def run(request: AgentRequest) -> dict[str, Any]:
            if fails:
                raise PermanentAgentError(f"{name} failed")
            done.append(name)
            return {name: True}

        run.__name__ = name
        return run

    create_issue, delete_issue = step("create_issue"), step("delete_issue")
    update_db, rollback_db = step("update_db"), step("rollback_db")
    send_email, send_cancellation = step("send_email", fails=True), step("send_cancellation")
    async with runtime(store_url) as rt:
        transaction = rt.transaction
        # If Step 3 fails, undo Step 2, then Step 1
        outcome = await transaction.execute_with_compensation(
            [
                (create_issue, delete_issue),
                (update_db, rollback_db),
                (send_email, send_cancellation),
            ]
        )
        assert outcome["status"] == "compensated"
        assert done == ["create_issue", "update_db", "rollback_db", "delete_issue"]
        assert outcome["undone"] == ["update_db", "create_issue"]
        assert outcome["failure"]["intent"] == "send_email"
        done.clear()
        whole = await transaction.execute_with_compensation([(create_issue, delete_issue), (update_db, rollback_db)])
        assert (whole["status"], done) == ("completed", ["create_issue", "update_db"])
        assert whole["outputs"] == [{"create_issue": True}, {"update_db": True}]
        with pytest.raises(Exception, match="non-empty"):
            await transaction.execute_with_compensation([])


async def test_a_transaction_element_takes_pairs_of_functions(store_url: str) -> None:
    def publish(request: AgentRequest) -> dict[str, Any]:
        return {"published": True}

    def unpublish(request: AgentRequest) -> dict[str, Any]:
        return {"unpublished": True}

    spec = ProcessSpec(
        name="launch",
        elements=[
            StartEvent(id="start"),
            Transaction(id="launch", steps=[(publish, unpublish)], output="launch_status"),
            EndEvent(id="launched"),
        ],
        flows=["start -> launch", "launch -> launched"],
    )
    async with runtime(store_url) as rt:
        await rt.processes.deploy(spec)
        view = await rt.processes.start("launch", "l-1")
        assert view["variables"]["launch_status"] == "completed"


async def test_versions_coexist_and_roll_out_gradually_and_by_ab_test(store_url: str) -> None:
    async with runtime(store_url) as rt:
        await rt.processes.deploy(pr_review())
        v2 = pr_review().model_copy(update={"version": 2, "description": "v2"})
        await rt.processes.deploy(v2, weight=10)  # 10%
        old = await rt.processes.start("pr_review_objects", "pr-2", variables={"pr_number": 2}, version=1)
        for share in (50, 100):  # → 50% → 100%
            await rt.processes.set_rollout("pr_review_objects", {2: share, 1: 100 - share} if share < 100 else {2: 100})
        routed = await rt.processes.route("pr_review_objects", "any-key")
        assert routed["version"] == 2
        assert (await rt.processes.status(old["instance_id"]))["version"] == 1  # zero downtime: v1 keeps its runs
        variants = await rt.processes.ab_test("pr_review_objects", {"A": (1, 50), "B": (2, 50)})
        assert {v["variant"] for v in variants} == {"A", "B"}


async def test_workflows_trigger_on_bus_events(store_url: str) -> None:
    spec = ProcessSpec(
        name="on_pr_opened",
        elements=[
            StartEvent(id="opened", message="github.pull_request.opened", correlation="pr_number"),
            ServiceTask(id="wowvision_validate", agent=WowVisionPrime, output_variables=["vision_approved"]),
            EndEvent(id="validated"),
        ],
        flows=["opened -> wowvision_validate", "wowvision_validate -> validated"],
    )
    async with runtime(store_url) as rt:
        await rt.processes.deploy(spec)
        sent = await rt.processes.send_message("github.pull_request.opened", "12", {"title": "Add docs"})
        [started] = sent["started"]
        assert (await rt.processes.status(started))["variables"]["vision_approved"] is True


def test_a_design_with_a_dangling_flow_is_refused_with_the_seeds_names() -> None:
    with pytest.raises(SpecError):
        ProcessSpec(
            name="broken",
            elements=[StartEvent(id="start"), TimerEvent(id="wait")],
            flows=["start -> wait"],
        )


def test_a_mistake_in_a_process_built_from_objects_is_a_spec_error_that_says_how_to_fix_it() -> None:
    """Built as the seed builds it, a process with a mistake raised pydantic's ``ValidationError`` (a dozen
    lines of pydantic's own, outside the runtime's one error root), where the same spec given as a dict to
    ``processes.deploy`` raises :class:`SpecError`. It raises SpecError too, each problem on a line."""
    with pytest.raises(SpecError) as caught:
        ServiceTask(id="Validate PR", agent=WowVisionPrime, input_variables="pr_number")
    assert isinstance(caught.value, JourneyError) and caught.value.code == "SpecError"
    assert str(caught.value).startswith("invalid ServiceTask 'Validate PR' design:\n  - id: ")
    assert "must be lower_snake_case" in caught.value.problems[0] and len(caught.value.problems) == 2
    with pytest.raises(SpecError, match=r"(?s)invalid ProcessSpec design:.*elements: "):
        ProcessSpec(name="pr_review", elements=[])
    with pytest.raises(SpecError, match="a reassign escalation needs an assignee"):
        UserTask(id="approval", assignee="engineering-lead", sla_hours=4, on_timeout={"action": "reassign"})
    with pytest.raises(SpecError, match="target: Field required"):
        Flow(source="start")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("written", "spelled"),
    [
        ("startEvent", "start"),
        ("serviceTask", "service_task"),
        ("userTask", "user_task"),
        ("exclusiveGateway", "exclusive_gateway"),
        ("eventBasedGateway", "event_gateway"),
        ("EndEvent", "end"),
        ("boundary-timer", "boundary_timer"),
    ],
)
def test_bpmn_element_names_are_refused_naming_this_spelling(written: str, spelled: str) -> None:
    """A jBPM or Camunda user writes BPMN's names (``serviceTask``); pydantic answered that the tag matches none
    of twelve. The refusal names the one to write, as the specs' other errors say how to fix them."""
    element = {"type": written, "id": "x", "agent": "a", "title": "t", "timer": {"duration": "P1D"}}
    with pytest.raises(SpecError, match=rf"element 1 has type '{written}': write '{spelled}', its name here"):
        ProcessSpec(name="p", elements=[{"type": "start", "id": "s"}, element])


def test_bpmn_names_standing_for_two_types_here_say_which_to_choose() -> None:
    for written, choice in (("intermediateCatchEvent", "'timer' or 'message'"), ("boundaryEvent", "'boundary_timer'")):
        with pytest.raises(SpecError, match=f"element 0 has type '{written}': write {choice}"):
            ProcessSpec(name="p", elements=[{"type": written, "id": "wait"}])


async def test_execute_with_compensation_given_a_bad_pair_raises_a_spec_error(store_url: str) -> None:
    """The seed's ``transaction.execute_with_compensation([(do, undo), ...])`` given a step that is not a pair
    ran a triple's first two and dropped the third without a word, failed with IndexError on a 1-tuple, and
    raised pydantic's ValidationError on a step that is no agent. Each is a SpecError now, and nothing runs."""
    told.clear()
    async with runtime(store_url) as rt:
        for steps, problem in (
            ([(create_issue, rollback_function, deploy)], "step 0 has 3 items: a step is a pair (do, undo)"),
            ([(deploy, rollback_function), (create_issue,)], "step 1 has 1 items: a step is a pair (do, undo)"),
            ([42], "steps.0: Input should be a valid dictionary"),
        ):
            with pytest.raises(SpecError, match=re.escape(problem)):
                await rt.transaction.execute_with_compensation(steps)  # type: ignore[arg-type]  # a bad pair, on purpose
        assert told == [] and await rt.store.index.list_instances() == []


def test_the_typed_constructors_name_every_field_and_the_seeds_names() -> None:
    """Type checkers read a model's fields, not their aliases nor its shorthand, so ``ServiceTask(input_variables=
    ...)`` and ``TimerEvent(duration="P7D")``, as the seed writes them, were errors under mypy and in an IDE (the
    suite's mypy over these examples found 12). The elements that take the seed's names declare a typed
    ``__init__`` for checkers; it must keep naming every field, alias and shorthand key, and require what the model
    requires, or a field added later would be refused by checkers while it works."""
    import ast
    import inspect

    from graphs.process import spec as module
    from graphs.process.spec import TIMER_KEYS

    shorthand = TIMER_KEYS | {"timezone", "missed"}
    declared: dict[str, ast.arguments] = {}
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.ClassDef):
            for branch in node.body:
                if isinstance(branch, ast.If) and ast.unparse(branch.test) == "TYPE_CHECKING":
                    [init] = [f for f in branch.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"]
                    declared[node.name] = init.args
    assert set(declared) == {"ServiceTask", "TimerEvent", "BoundaryTimer"}
    for name, args in declared.items():
        model = getattr(module, name)
        params = {a.arg for a in args.kwonlyargs}
        required = {a.arg for a, default in zip(args.kwonlyargs, args.kw_defaults, strict=True) if default is None}
        aliases = {
            choice
            for field in model.model_fields.values()
            if field.validation_alias is not None
            for choice in getattr(field.validation_alias, "choices", [field.validation_alias])
        }
        assert set(model.model_fields) | aliases <= params, name
        assert params - set(model.model_fields) - aliases <= shorthand, name
        assert required == {f for f, info in model.model_fields.items() if info.is_required()} - {"timer"}, name
