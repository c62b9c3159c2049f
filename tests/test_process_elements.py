"""The process elements (SPEC B1-B5): service tasks with variables, exclusive and parallel gateways,
event-based races, boundary timers, transactions with compensation, and the process saga. Every test
runs on memory, SQLite and Postgres, on a virtual clock."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from agents import AgentRequest
from checkpoints.schema.tables import process_subscriptions, process_timers
from graphs.errors import TaskClosedError, UnmatchedMessageError
from graphs.kernel import engine as engine_module
from nodes.errors import ResumeValueError
from tests.process_support import (
    Calls,
    boundary_spec,
    linear,
    runtime,
    table_dump,
    user_task,
    virtual_clock,
    waiting_elements,
)


async def rows(rt: Any, table: Any, **where: Any) -> list[Any]:
    from sqlalchemy import select

    query = select(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    async with rt.store.engine.connect() as conn:
        return list((await conn.execute(query)).all())


# --- service tasks and variables -------------------------------------------------------------------


async def test_service_tasks_get_their_inputs_and_set_outputs_with_audited_versions(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        calls.register(rt, "score", {"value": 40, "noise": "ignored"})
        calls.register(rt, "rescore", lambda r: {"value": r.payload["variables"]["score"] + 2})
        spec = linear(
            "scoring",
            {
                "type": "service_task",
                "id": "first",
                "agent": "score",
                "inputs": ["lead"],
                "outputs": {"score": "value"},
            },
            {
                "type": "service_task",
                "id": "second",
                "agent": "rescore",
                "inputs": ["score"],
                "outputs": {"score": "value"},
            },
            variables={"region": "eu"},
        )
        await rt.processes.deploy(spec)
        view = await rt.processes.start("scoring", "lead-1", {"lead": {"name": "Acme"}, "secret": "x"})

        assert view["status"] == "completed" and view["outcome"] == "end"
        assert view["variables"] == {
            "lead": {"name": "Acme"},
            "secret": "x",
            "region": "eu",
            "business_key": "lead-1",
            "score": 42,
        }
        # Each agent saw only the variables it declared.
        assert calls.log[0][1]["variables"] == {"lead": {"name": "Acme"}}
        assert calls.log[1][1]["variables"] == {"score": 40}
        history = await rt.processes.variable_history(view["instance_id"], "score")
        assert [(c["value"], c["version"], c["element"]) for c in history] == [(40, 1, "first"), (42, 2, "second")]
        everything = await rt.processes.variable_history(view["instance_id"])
        assert {c["name"] for c in everything} == {"lead", "secret", "region", "business_key", "score"}
        types = [e.type for e in await rt.processes.history(view["instance_id"])]
        assert types == ["process.started", "task.completed", "task.completed", "process.completed"]


async def test_exclusive_gateway_takes_the_first_holding_flow_else_the_default(store_url: str) -> None:
    async with runtime(store_url) as rt:
        for intent in ("gold_path", "silver_path", "other_path"):
            Calls().register(rt, intent)
        spec = {
            "name": "tiers",
            "elements": [
                {"type": "start", "id": "start"},
                {"type": "exclusive_gateway", "id": "tier"},
                {"type": "service_task", "id": "gold", "agent": "gold_path"},
                {"type": "service_task", "id": "silver", "agent": "silver_path"},
                {"type": "service_task", "id": "other", "agent": "other_path"},
                {"type": "end", "id": "end"},
            ],
            "flows": [
                "start -> tier",
                {"source": "tier", "target": "gold", "when": {"all": [{"field": "spend", "op": ">=", "value": 1000}]}},
                {"source": "tier", "target": "silver", "when": {"field": "spend", "op": ">=", "value": 100}},
                {"source": "tier", "target": "other", "default": True},
                "gold -> end",
                "silver -> end",
                "other -> end",
            ],
        }
        await rt.processes.deploy(spec)
        taken = {}
        for spend in (5000, 150, 3):
            view = await rt.processes.start("tiers", f"c{spend}", {"spend": spend})
            events = await rt.processes.history(view["instance_id"])
            decided = [e for e in events if e.type == "gateway.decided"]
            taken[spend] = (decided[0].payload["target"], [e.step for e in events if e.type == "task.completed"])
        assert taken == {5000: ("gold", ["gold"]), 150: ("silver", ["silver"]), 3: ("other", ["other"])}


def when(field: str, value: Any) -> dict[str, Any]:
    return {"field": field, "op": "==", "value": value}


async def test_an_output_or_answer_outside_a_declared_enum_fails_its_own_task_not_the_gateway_relying_on_it(
    store_url: str,
) -> None:
    """Gateways without a default are accepted when their conditions cover the enum variables_schema declares,
    but only the start variables were checked against it: an agent answering "Converted" left the instance failed
    at the gateway for good (a retry decided on the same variables again), and so did a person's answer."""
    async with runtime(store_url) as rt:
        calls = Calls()
        calls.register(rt, "classify", {"conversion": "Converted"})
        spec = {
            "name": "conversion",
            "variables_schema": {
                "properties": {"conversion": {"enum": ["converted", "engaged"]}, "decision": {"enum": ["yes", "no"]}}
            },
            "elements": [
                {"type": "start", "id": "start"},
                {"type": "service_task", "id": "classify", "agent": "classify", "outputs": ["conversion"]},
                {"type": "exclusive_gateway", "id": "by_conversion"},
                user_task("approve", outputs=["decision"]),
                {"type": "exclusive_gateway", "id": "by_decision"},
                {"type": "end", "id": "won"},
                {"type": "end", "id": "lost"},
                {"type": "end", "id": "nurtured"},
            ],
            "flows": [
                "start -> classify",
                "classify -> by_conversion",
                {"source": "by_conversion", "target": "approve", "when": when("conversion", "converted")},
                {"source": "by_conversion", "target": "nurtured", "when": when("conversion", "engaged")},
                "approve -> by_decision",
                {"source": "by_decision", "target": "won", "when": when("decision", "yes")},
                {"source": "by_decision", "target": "lost", "when": when("decision", "no")},
            ],
        }
        await rt.processes.deploy(spec)
        view = await rt.processes.start("conversion", "lead-1")
        assert (view["status"], view["failed_element"]) == ("failed", "classify")
        [failed] = [e for e in await rt.processes.history(view["instance_id"]) if e.type == "instance.failed"]
        assert "'Converted' is not one of ['converted', 'engaged']" in str(failed.payload)
        assert "conversion" not in view["variables"]

        calls.register(rt, "classify", {"conversion": "converted"})
        view = await rt.processes.retry(view["instance_id"])
        assert waiting_elements(view) == ["approve"]
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        before = await table_dump(rt)
        with pytest.raises(ResumeValueError) as refused:
            await rt.processes.inbox.complete(task["task_id"], user="ana", payload={"decision": "maybe"})
        assert refused.value.category == "invalid"
        assert "variables_schema of process 'conversion' at decision: 'maybe' is not one of ['yes', 'no']" in str(
            refused.value
        )
        assert await table_dump(rt) == before
        done = await rt.processes.inbox.complete(task["task_id"], user="ana", payload={"decision": "yes"})
        assert (done["status"], done["outcome"]) == ("completed", "won")


async def test_an_agent_output_no_store_can_keep_fails_its_task_alike_on_every_store(store_url: str) -> None:
    """An agent answering NaN completed its task on SQLite (the variable was NaN, which JSON answers cannot carry)
    but raised PostgreSQL's 'Token "NaN" is invalid' out of start() there; a datetime raised a bare TypeError."""
    async with runtime(store_url) as rt:
        calls = Calls()
        for bad in (float("nan"), datetime(2026, 1, 5, tzinfo=UTC)):
            calls.register(rt, "score", {"score": bad})
            await rt.processes.deploy(
                linear("scoring", {"type": "service_task", "id": "rate", "agent": "score", "outputs": ["score"]})
            )
            view = await rt.processes.start("scoring", f"lead-{bad}")
            assert (view["status"], view["failed_element"]) == ("failed", "rate")
            assert "score" not in view["variables"]
            [failed] = [e for e in await rt.processes.history(view["instance_id"]) if e.type == "instance.failed"]
            assert "returned what no store can keep: output.score is" in str(failed.payload)
        calls.register(rt, "score", {"score": 0.5})
        assert (await rt.processes.retry(view["instance_id"]))["variables"]["score"] == 0.5


# --- parallel gateways -------------------------------------------------------------------------------


def fork_join(branch_a: list[dict[str, Any]], branch_b: list[dict[str, Any]]) -> dict[str, Any]:
    elements = [
        {"type": "start", "id": "start"},
        {"type": "parallel_gateway", "id": "fork"},
        *branch_a,
        *branch_b,
        {"type": "parallel_gateway", "id": "join"},
        {"type": "service_task", "id": "after", "agent": "after"},
        {"type": "end", "id": "end"},
    ]
    flows = ["start -> fork", "join -> after", "after -> end"]
    for branch in (branch_a, branch_b):
        ids = ["fork", *(e["id"] for e in branch), "join"]
        flows += [f"{a} -> {b}" for a, b in itertools.pairwise(ids)]
    return {"name": "parallel", "elements": elements, "flows": flows}


async def test_a_waiting_branch_does_not_hold_up_its_sibling_and_the_join_waits_for_both(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        for intent in ("a1", "a2", "a3", "after"):
            calls.register(rt, intent, {"done": intent})
        spec = fork_join(
            [
                {"type": "service_task", "id": f"step_{i}", "agent": f"a{i}", "outputs": {f"out_{i}": "done"}}
                for i in (1, 2, 3)
            ],
            [user_task("review", outputs={"verdict": "verdict"})],
        )
        await rt.processes.deploy(spec)
        view = await rt.processes.start("parallel", "p1")

        # The three-step branch ran to the join while the other branch waits for a human.
        assert calls.intents() == ["a1", "a2", "a3"]
        assert view["status"] == "in_progress" and waiting_elements(view) == ["review"]
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        done = await rt.processes.inbox.complete(task["task_id"], user="ana", payload={"verdict": "ok"})

        assert calls.intents() == ["a1", "a2", "a3", "after"]
        assert done["status"] == "completed"
        assert {k: done["variables"][k] for k in ("out_1", "out_2", "out_3", "verdict")} == {
            "out_1": "a1",
            "out_2": "a2",
            "out_3": "a3",
            "verdict": "ok",
        }


async def test_two_branches_can_wait_at_once_and_either_may_finish_first(store_url: str) -> None:
    async with runtime(store_url) as rt:
        Calls().register(rt, "after")
        spec = fork_join([user_task("legal", outputs=["legal_ok"])], [user_task("finance", outputs=["finance_ok"])])
        await rt.processes.deploy(spec)
        view = await rt.processes.start("parallel", "p2")
        assert waiting_elements(view) == ["finance", "legal"]
        tasks = {t["element"]: t["task_id"] for t in await rt.processes.inbox.list_tasks(assignee="ana")}

        half = await rt.processes.inbox.complete(tasks["finance"], user="ana", payload={"finance_ok": True})
        assert half["status"] == "in_progress" and waiting_elements(half) == ["legal"]
        done = await rt.processes.inbox.complete(tasks["legal"], user="ana", payload={"legal_ok": True})
        assert done["status"] == "completed"
        assert done["variables"]["finance_ok"] is True and done["variables"]["legal_ok"] is True


# --- event-based gateway: a race between messages and timers ------------------------------------


def race_spec() -> dict[str, Any]:
    return {
        "name": "race",
        "elements": [
            {"type": "start", "id": "start"},
            {"type": "event_gateway", "id": "race"},
            {"type": "message", "id": "approved", "message": "deal.approved", "outputs": {"amount": "amount"}},
            {"type": "message", "id": "rejected", "message": "deal.rejected"},
            {"type": "timer", "id": "expired", "timer": {"duration": "PT1H"}},
            {"type": "end", "id": "won", "outcome": "approved"},
            {"type": "end", "id": "lost", "outcome": "rejected"},
            {"type": "end", "id": "timed_out", "outcome": "expired"},
        ],
        "flows": [
            "start -> race",
            "race -> approved",
            "race -> rejected",
            "race -> expired",
            "approved -> won",
            "rejected -> lost",
            "expired -> timed_out",
        ],
    }


async def test_a_message_wins_the_race_and_the_losing_timer_never_fires(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(race_spec())
        view = await rt.processes.start("race", "deal-7")
        assert waiting_elements(view) == ["race"]

        clock.advance(timedelta(minutes=30))
        sent = await rt.processes.send_message("deal.approved", "deal-7", {"amount": 900})
        assert sent["correlated"] == [view["instance_id"]]
        done = await rt.processes.status(view["instance_id"])
        assert done["status"] == "completed" and done["outcome"] == "approved" and done["variables"]["amount"] == 900

        [timer] = await rows(rt, process_timers, instance_id=view["instance_id"])
        assert timer.status == "cancelled"
        assert {
            s.element: s.status for s in await rows(rt, process_subscriptions, instance_id=view["instance_id"])
        } == {
            "approved": "consumed",
            "rejected": "cancelled",
        }
        clock.advance(timedelta(hours=5))
        report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.resumed) == (0, 0)
        # The losing message has nobody to go to any more.
        with pytest.raises(UnmatchedMessageError):
            await rt.processes.send_message("deal.rejected", "deal-7", {}, ttl=None)
        assert (await rt.processes.status(view["instance_id"]))["outcome"] == "approved"


async def test_the_timer_wins_the_race_and_the_losing_messages_are_cancelled(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(race_spec())
        view = await rt.processes.start("race", "deal-8")
        clock.advance(timedelta(minutes=59, seconds=59))
        assert (await rt.processes.scheduler.run_due()).fired == 0  # never early
        clock.advance(timedelta(seconds=1))
        report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.resumed, report.lateness) == (1, 1, [0.0])

        done = await rt.processes.status(view["instance_id"])
        assert done["outcome"] == "expired"
        statuses = {s.status for s in await rows(rt, process_subscriptions, instance_id=view["instance_id"])}
        assert statuses == {"cancelled"}
        late = await rt.processes.send_message("deal.approved", "deal-8", {"amount": 1})
        assert late["correlated"] == [] and late["buffered"] is not None
        assert (await rt.processes.status(view["instance_id"]))["outcome"] == "expired"


# --- boundary timers on user tasks ---------------------------------------------------------------


async def test_an_interrupting_boundary_timer_cancels_the_task_and_takes_its_own_flow(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(boundary_spec("boundary"))
        view = await rt.processes.start("boundary", "contract-1")
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")

        clock.advance(timedelta(days=2))
        report = await rt.processes.scheduler.run_due()
        assert report.fired == 1
        done = await rt.processes.status(view["instance_id"])
        assert done["status"] == "completed" and done["outcome"] == "lapsed"
        assert (await rt.processes.inbox.get_task(task["task_id"]))["status"] == "cancelled"
        assert await rt.processes.inbox.list_tasks(assignee="ana") == []
        with pytest.raises(TaskClosedError):
            await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})


async def test_a_non_interrupting_boundary_cycle_reminds_while_the_task_stays_open(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        calls.register(rt, "remind")
        spec = {
            "name": "reminders",
            "elements": [
                {"type": "start", "id": "start"},
                user_task("fill_form"),
                {
                    "type": "boundary_timer",
                    "id": "nudge",
                    "attached_to": "fill_form",
                    "timer": {"cycle": "R3/PT1H"},
                    "interrupting": False,
                    "notify": "remind",
                },
                {"type": "end", "id": "end"},
            ],
            "flows": ["start -> fill_form", "fill_form -> end"],
        }
        await rt.processes.deploy(spec)
        view = await rt.processes.start("reminders", "form-1")
        for hour in range(1, 6):
            clock.advance(timedelta(hours=1))
            await rt.processes.scheduler.run_due()
            assert len(calls.log) == min(hour, 3)  # three repetitions, then the cycle is spent
        assert [p["reminder"]["tick"] for _i, p in calls.log] == [1, 2, 3]
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        done = await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
        assert done["status"] == "completed"
        assert len([e for e in await rt.processes.history(view["instance_id"]) if e.type == "task.reminded"]) == 3


# --- transactions and compensation -----------------------------------------------------------------


def launch_spec() -> dict[str, Any]:
    return linear(
        "launch",
        {
            "type": "transaction",
            "id": "launch",
            "steps": [["publish", "unpublish"], ["post", "delete_post"], ["mail", None], ["bill", "refund"]],
        },
    )


async def test_a_transaction_runs_its_steps_in_order(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        for intent in ("publish", "unpublish", "post", "delete_post", "mail", "bill", "refund"):
            calls.register(rt, intent, {"ok": intent})
        await rt.processes.deploy(launch_spec())
        view = await rt.processes.start("launch", "campaign-1")
        assert calls.intents() == ["publish", "post", "mail", "bill"]
        assert view["variables"]["launch_status"] == "completed"


async def test_a_failing_transaction_step_undoes_the_done_ones_in_reverse(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        for intent in ("publish", "unpublish", "post", "delete_post", "mail", "refund"):
            calls.register(rt, intent, {"ok": intent})
        rt.agents.register("bill", calls.failing("bill"), replace=True)
        await rt.processes.deploy(launch_spec())
        view = await rt.processes.start("launch", "campaign-2")

        assert calls.intents() == ["publish", "post", "mail", "bill", "delete_post", "unpublish"]
        assert view["status"] == "completed" and view["variables"]["launch_status"] == "compensated"
        undone = [e for e in await rt.processes.history(view["instance_id"]) if e.type == "transaction.step_undone"]
        assert [e.payload["undoes"] for e in undone] == ["post", "publish"]
        # The undo saw what the step had done.
        assert calls.log[4][1]["original_output"] == {"ok": "post"}


async def test_an_undo_that_fails_for_good_fails_the_instance_and_its_retry_resumes_the_rollback(
    store_url: str,
) -> None:
    """An undo that failed for good set the transaction's output to ``failed`` and the process went on (to an end
    the flow took for a rollback). Now the instance fails at the transaction, naming the undo; its retry calls
    that undo again, neither the forward steps (the one that failed included) nor the undos done."""
    async with runtime(store_url) as rt:
        calls = Calls()
        for intent in ("publish", "unpublish", "post", "mail"):
            calls.register(rt, intent)
        broken = calls.flaky(rt, "delete_post", {"deleted": True})
        rt.agents.register("bill", calls.failing("bill"), replace=True)
        rt.agents.register("refund", calls.agent("refund"), replace=True)
        await rt.processes.deploy(launch_spec())
        view = await rt.processes.start("launch", "campaign-3")

        assert view["status"] == "failed" and view["failed_element"] == "launch"
        assert view["failure"]["error_type"] == "CompensationFailedError"
        assert "'delete_post'" in view["failure"]["error"]
        assert "launch_status" not in view["variables"] and view["outcome"] is None
        assert calls.intents() == ["publish", "post", "mail", "bill", "delete_post"]
        history = await rt.processes.history(view["instance_id"])
        [stopped] = [e for e in history if e.type == "transaction.undo_failed"]
        assert stopped.payload["undo_failure"]["intent"] == "delete_post"
        assert stopped.payload["failure"]["intent"] == "bill" and stopped.payload["undone"] == []
        assert not [e for e in history if e.type == "transaction.finished"]
        instance = await rt.store.index.get_instance(view["instance_id"])
        assert instance is not None and instance.status == "failed"

        # Still broken: the retry tries that undo again, and the instance stays failed there.
        again = await rt.processes.retry(view["instance_id"])
        assert again["status"] == "failed" and again["failed_element"] == "launch"
        assert calls.intents()[5:] == ["delete_post"]

        broken["down"] = False
        retried = await rt.processes.retry(view["instance_id"])
        assert retried["status"] == "completed" and retried["variables"]["launch_status"] == "compensated"
        assert calls.intents()[6:] == ["delete_post", "unpublish"]  # nothing done again but the rollback's rest
        [finished] = [e for e in await rt.processes.history(view["instance_id"]) if e.type == "transaction.finished"]
        assert finished.payload["undone"] == ["post", "publish"] and finished.payload["failure"]["intent"] == "bill"


async def test_a_plain_transaction_whose_undo_fails_says_so_and_its_instance_resumes_the_rollback(
    store_url: str,
) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        for intent in ("create_issue", "update_db", "rollback_db"):
            calls.register(rt, intent)
        broken = calls.flaky(rt, "delete_issue")
        rt.agents.register("send_email", calls.failing("send_email"), replace=True)
        steps = [("create_issue", "delete_issue"), ("update_db", "rollback_db"), ("send_email", None)]
        outcome = await rt.transaction.execute_with_compensation(steps)
        assert outcome["status"] == "failed" and outcome["undone"] == ["update_db"]
        assert outcome["undo_failure"]["intent"] == "delete_issue" and outcome["failure"]["intent"] == "send_email"

        broken["down"] = False
        retried = await rt.processes.retry(outcome["instance_id"])
        assert retried["status"] == "completed" and retried["variables"]["status"] == "compensated"
        # delete_issue twice: failing, then on the retry (nothing else called again).
        done = ["create_issue", "update_db", "send_email", "rollback_db", "delete_issue", "delete_issue"]
        assert calls.intents() == done


def saga_spec() -> dict[str, Any]:
    return linear(
        "saga",
        {"type": "service_task", "id": "reserve", "agent": "reserve", "compensation": "release"},
        {"type": "service_task", "id": "notify", "agent": "notify_customer"},
        {"type": "service_task", "id": "charge", "agent": "charge", "compensation": "refund"},
        {"type": "service_task", "id": "ship", "agent": "ship"},
    )


async def test_a_failing_service_task_compensates_the_completed_ones_in_reverse(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        for intent in ("reserve", "release", "notify_customer", "charge", "refund"):
            calls.register(rt, intent, {"done": intent})
        rt.agents.register("ship", calls.failing("ship"), replace=True)
        await rt.processes.deploy(saga_spec())
        view = await rt.processes.start("saga", "order-1")

        assert view["status"] == "compensated"
        assert view["compensated"] == ["charge", "reserve"]
        assert view["failure"]["element"] == "ship"
        assert calls.intents()[-2:] == ["refund", "release"]
        history = await rt.processes.history(view["instance_id"])
        types = [e.type for e in history]
        assert (
            types.index("instance.failed") < types.index("compensation.completed") < types.index("process.compensated")
        )
        [failed] = [e for e in history if e.type == "instance.failed"]
        assert (failed.payload["pattern"], failed.payload["cause"], failed.step) == ("process", "task", "ship")
        instance = await rt.store.index.get_instance(view["instance_id"])
        assert instance is not None and instance.status == "compensated"


async def test_a_compensation_that_fails_for_good_fails_the_instance_and_its_retry_resumes_the_undo(
    store_url: str,
) -> None:
    """A compensation handler that failed for good left the instance 'failed' with nothing to retry: retry() was
    refused (no failed node) and its view did not say which undo failed. Now it stands failed at the compensation,
    its failure names the handler and the element, and its retry calls that handler again, neither the undos done
    nor a forward task."""
    async with runtime(store_url) as rt:
        calls = Calls()
        for intent in ("reserve", "release", "notify_customer", "charge"):
            calls.register(rt, intent, {"done": intent})
        refund = calls.flaky(rt, "refund", {"refunded": True})
        rt.agents.register("ship", calls.failing("ship"), replace=True)
        await rt.processes.deploy(saga_spec())
        view = await rt.processes.start("saga", "order-2")

        assert (view["status"], view["failed_element"]) == ("failed", "compensate")
        assert view["failure"]["element"] == "ship"  # what the compensation undoes
        stopped = view["compensation_failure"]
        assert (stopped["element"], stopped["handler"], stopped["error_type"]) == (
            "charge",
            "refund",
            "AgentCallFailedError",
        )
        assert view["compensated"] == []
        assert calls.intents() == ["reserve", "notify_customer", "charge", "ship", "refund"]

        refund["down"] = False
        retried = await rt.processes.retry(view["instance_id"])
        assert (retried["status"], retried["compensated"]) == ("compensated", ["charge", "reserve"])
        assert "compensation_failure" not in retried
        assert calls.intents()[5:] == ["refund", "release"]
        instance = await rt.store.index.get_instance(view["instance_id"])
        assert instance is not None and instance.status == "compensated"


async def test_a_later_failure_also_undoes_a_transaction_that_completed(store_url: str) -> None:
    """reserve (undone by release), then the transaction pay (charge/refund, invoice/void) completed, then ship
    failed for good: the process compensated only reserve and ended 'compensated', the customer charged and
    invoiced, refund and void never called. The compensation now undoes the completed transaction's steps too, at
    its place in the order (last first: void, refund, then release), keyed as the transaction's own undos, and
    resumes there after an undo that failed for good; a transaction that had rolled itself back (extras) is not
    undone again."""
    async with runtime(store_url) as rt:
        calls = Calls()
        for intent in ("reserve", "release", "charge", "invoice", "void", "gift", "ungift"):
            calls.register(rt, intent, {"done": intent})
        refund = calls.flaky(rt, "refund", {"done": "refund"})
        rt.agents.register("ship", calls.failing("ship"), replace=True)
        rt.agents.register("wrap", calls.failing("wrap"), replace=True)
        spec = linear(
            "paid_order",
            {"type": "service_task", "id": "reserve", "agent": "reserve", "compensation": "release"},
            {"type": "transaction", "id": "pay", "steps": [["charge", "refund"], ["invoice", "void"]]},
            {"type": "transaction", "id": "extras", "steps": [["gift", "ungift"], ["wrap", None]]},
            {"type": "service_task", "id": "ship", "agent": "ship"},
        )
        await rt.processes.deploy(spec)
        view = await rt.processes.start("paid_order", "order-9")
        assert calls.intents() == ["reserve", "charge", "invoice", "gift", "wrap", "ungift", "ship", "void", "refund"]
        assert (view["status"], view["failed_element"]) == ("failed", "compensate")
        assert (view["compensation_failure"]["element"], view["compensation_failure"]["handler"]) == ("pay", "refund")

        refund["down"] = False
        retried = await rt.processes.retry(view["instance_id"])
        assert (retried["status"], retried["compensated"]) == ("compensated", ["pay", "reserve"])
        assert calls.intents()[9:] == ["refund", "release"]  # void is not called again
        undone = [e for e in await rt.processes.history(view["instance_id"]) if e.type == "transaction.step_undone"]
        assert [(e.step, str(e.key).rsplit(":", 2)[1:]) for e in undone] == [
            ("extras", ["undo", "0"]),
            ("pay", ["undo", "1"]),
            ("pay", ["undo", "0"]),
        ]


async def test_a_failure_without_compensation_leaves_the_instance_failed_and_retryable(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        calls.register(rt, "prepare", {"ready": True})
        flaky = {"fail": True}

        def deliver(request: AgentRequest) -> dict[str, Any]:
            if flaky["fail"]:
                raise RuntimeError("carrier down")
            return {"tracking": "T-1"}

        rt.agents.register("deliver", deliver)
        spec = linear(
            "fragile",
            {"type": "service_task", "id": "prepare", "agent": "prepare"},
            {"type": "service_task", "id": "deliver", "agent": "deliver", "outputs": ["tracking"]},
        )
        await rt.processes.deploy(spec)
        view = await rt.processes.start("fragile", "parcel-1")
        assert view["status"] == "failed"
        status = await rt.processes.status(view["instance_id"])
        assert status["status"] == "failed" and status["failed_element"] == "deliver"

        flaky["fail"] = False
        retried = await rt.processes.retry(view["instance_id"])
        assert retried["status"] == "completed" and retried["variables"]["tracking"] == "T-1"
        assert calls.intents() == ["prepare"]  # the completed task was not repeated


async def test_a_failed_branch_compensates_at_once_abandoning_the_siblings_that_wait(store_url: str) -> None:
    """A branch failed in a process that compensates while a sibling branch waited for ana: the instance said
    in_progress and stayed so, compensating nothing, until ana completed a task that no longer mattered, and then
    the rest of her branch ran (its agent called after the failure) before the compensation. Now the waiting
    branches end at once, their task leaves the inbox, and the completed tasks are undone."""
    async with runtime(store_url) as rt:
        calls = Calls()
        for intent in ("reserve", "release", "file"):
            calls.register(rt, intent)
        rt.agents.register("ship", calls.failing("ship"), replace=True)
        spec = fork_join(
            [user_task("approve"), {"type": "service_task", "id": "file", "agent": "file"}],
            [{"type": "service_task", "id": "ship", "agent": "ship"}],
        )
        spec["elements"].insert(
            1, {"type": "service_task", "id": "reserve", "agent": "reserve", "compensation": "release"}
        )
        spec["flows"] = ["start -> reserve", "reserve -> fork", *spec["flows"][1:]]
        calls.register(rt, "after")
        await rt.processes.deploy(spec)
        view = await rt.processes.start("parallel", "order-1")
        assert (view["status"], view["compensated"], view["waiting"]) == ("compensated", ["reserve"], [])
        assert calls.intents() == ["reserve", "ship", "release"]
        assert await rt.processes.inbox.list_tasks(assignee="ana") == []
        [task] = await rt.processes.inbox.list_tasks(assignee="ana", status=None)
        assert task["status"] == "cancelled"
        with pytest.raises(TaskClosedError):
            await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
        status = await rt.processes.status(view["instance_id"])
        assert (status["status"], status["compensated"]) == ("compensated", ["reserve"])


async def test_a_wait_abandoned_in_a_nested_fork_does_not_let_the_nested_join_go_on(store_url: str) -> None:
    """A branch failed while a sibling branch waited for ana inside a fork of its own: the abandoned wait ended
    its inner branch, the inner join (which sees only its own branch's state) went on, and the element after it
    called its agent after the failure. Now the inner join ends its branch too, and only the compensation runs."""
    async with runtime(store_url) as rt:
        calls = Calls()
        for intent in ("reserve", "release", "prepare", "file", "after"):
            calls.register(rt, intent)
        rt.agents.register("ship", calls.failing("ship"), replace=True)
        spec = {
            "name": "nested",
            "elements": [
                {"type": "start", "id": "start"},
                {"type": "service_task", "id": "reserve", "agent": "reserve", "compensation": "release"},
                {"type": "parallel_gateway", "id": "fork"},
                {"type": "parallel_gateway", "id": "inner_fork"},
                user_task("approve"),
                {"type": "service_task", "id": "prepare", "agent": "prepare"},
                {"type": "parallel_gateway", "id": "inner_join"},
                {"type": "service_task", "id": "file", "agent": "file"},
                {"type": "service_task", "id": "ship", "agent": "ship"},
                {"type": "parallel_gateway", "id": "join"},
                {"type": "service_task", "id": "after", "agent": "after"},
                {"type": "end", "id": "end"},
            ],
            "flows": [
                "start -> reserve",
                "reserve -> fork",
                "fork -> inner_fork",
                "inner_fork -> approve",
                "inner_fork -> prepare",
                "approve -> inner_join",
                "prepare -> inner_join",
                "inner_join -> file",
                "file -> join",
                "fork -> ship",
                "ship -> join",
                "join -> after",
                "after -> end",
            ],
        }
        await rt.processes.deploy(spec)
        view = await rt.processes.start("nested", "order-1")
        assert (view["status"], view["compensated"], view["waiting"]) == ("compensated", ["reserve"], [])
        assert "file" not in calls.intents() and "after" not in calls.intents()
        assert calls.intents()[-1] == "release"
        assert await rt.processes.inbox.list_tasks(assignee="ana") == []
        status = await rt.processes.status(view["instance_id"])
        assert (status["status"], status["compensated"]) == ("compensated", ["reserve"])


async def test_a_failure_inside_a_parallel_branch_compensates_once_the_branches_meet(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        for intent in ("reserve", "release", "charge", "refund"):
            calls.register(rt, intent, {"done": intent})
        rt.agents.register("ship", calls.failing("ship"), replace=True)
        spec = {
            "name": "parallel_saga",
            "elements": [
                {"type": "start", "id": "start"},
                {"type": "service_task", "id": "reserve", "agent": "reserve", "compensation": "release"},
                {"type": "parallel_gateway", "id": "fork"},
                {"type": "service_task", "id": "charge", "agent": "charge", "compensation": "refund"},
                {"type": "service_task", "id": "ship", "agent": "ship"},
                {"type": "parallel_gateway", "id": "join"},
                {"type": "end", "id": "end"},
            ],
            "flows": [
                "start -> reserve",
                "reserve -> fork",
                "fork -> charge",
                "fork -> ship",
                "charge -> join",
                "ship -> join",
                "join -> end",
            ],
        }
        await rt.processes.deploy(spec)
        view = await rt.processes.start("parallel_saga", "order-9")
        assert view["status"] == "compensated" and view["failure"]["element"] == "ship"
        assert view["compensated"] == ["charge", "reserve"]
        assert calls.intents()[-2:] == ["refund", "release"]


async def test_a_step_whose_database_write_keeps_conflicting_fails_the_instance_on_record_and_is_retried(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step whose write the database kept rolling back for a conflict with other work (a deadlock every time)
    stood failed in its thread once its retries were through, but the start raised the driver's
    ``DeadlockDetected`` and the instance's row stayed ``in_progress`` with no ``instance.failed`` event: lists,
    filters and metrics showed it running. Now it is recorded failed as any step's failure is (its error type names
    the conflict), and its retry completes it once the conflict has passed."""
    monkeypatch.setattr(  # the step's retries of a conflict, without their half-second waits
        engine_module,
        "LOST_DATABASE_RETRY",
        engine_module.LOST_DATABASE_RETRY._replace(initial_interval=0.001, max_attempts=2),
    )
    async with runtime(store_url) as rt:
        calls = Calls()
        calls.register(rt, "charge", {"charged": True})
        await rt.processes.deploy(
            linear("billing", {"type": "service_task", "id": "charge", "agent": "charge", "outputs": ["charged"]})
        )
        log = type(rt.store.events)
        append, append_together = log.append, log.append_together
        conflicting = {"on": True}

        def deadlocks(events: Any) -> None:
            if conflicting["on"] and any(e.type == "task.completed" for e in events):
                raise psycopg.errors.DeadlockDetected("deadlock detected: process 1 waits for ShareLock on process 2")

        async def deadlocked(self: Any, instance_id: str, events: Any, **options: Any) -> list[bool]:
            deadlocks(events)
            return await append(self, instance_id, events, **options)

        async def deadlocked_together(self: Any, instance_id: str, event: Any, status: str | None = None) -> bool:
            deadlocks([event])  # a step's completion goes with the others' at about the same time
            return await append_together(self, instance_id, event, status)

        monkeypatch.setattr(log, "append", deadlocked)
        monkeypatch.setattr(log, "append_together", deadlocked_together)
        view = await rt.processes.start("billing", "invoice-1")
        assert (view["status"], view["failed_element"]) == ("failed", "charge")
        row = await rt.store.index.get_instance(view["instance_id"])
        assert row is not None and row.status == "failed"
        [failed] = [e for e in await rt.processes.history(view["instance_id"]) if e.type == "instance.failed"]
        assert failed.payload["error_type"] == "DeadlockDetected" and "retry it" in failed.payload["error"]

        conflicting["on"] = False
        retried = await rt.processes.retry(view["instance_id"])
        assert (retried["status"], retried["variables"]["charged"]) == ("completed", True)
