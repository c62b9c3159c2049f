"""The user-task inbox (SPEC B2): list by assignee or group, claim, complete with a validated payload,
refusals that leave nothing changed, and SLA escalations that happen exactly once. Every test runs
on memory, SQLite and Postgres, on a virtual clock."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from agents import AgentRequest, RetrySettings
from agents.errors import TransientAgentError
from checkpoints import events as events_module
from checkpoints.clock import VirtualClock
from checkpoints.events import NewEvent
from checkpoints.figures import live_figures
from checkpoints.process.timers import Timer
from checkpoints.rebuild import rebuild_inbox
from graphs import ResumeValueError, SpecError
from graphs.errors import ProcessStateError, TaskClosedError, TaskForbiddenError, TaskNotFoundError
from graphs.process.timers import fire_due_timers
from graphs.runtime import JourneyRuntime
from tests.process_support import Calls, linear, reminder, runtime, table_dump, user_task, virtual_clock

SCHEMA = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}, "comment": {"type": "string"}},
    "required": ["approved"],
}


def approval(**task: Any) -> dict[str, Any]:
    fields = {"assignee": None, "candidate_groups": ["reviewers", "leads"], "response_schema": SCHEMA, **task}
    return linear("approval", user_task("approve", **fields))


async def test_the_inbox_lists_by_assignee_and_group_and_completion_resumes_the_instance(store_url: str) -> None:
    async with runtime(store_url) as rt:
        await rt.processes.deploy(approval())
        one = await rt.processes.start("approval", "doc-1")
        two = await rt.processes.start("approval", "doc-2")
        await rt.processes.deploy(linear("personal", user_task("sign", assignee="bob")))
        await rt.processes.start("personal", "doc-3")

        by_group = await rt.processes.inbox.list_tasks(group="reviewers")
        assert {t["instance_id"] for t in by_group} == {one["instance_id"], two["instance_id"]}
        by_group = [t for t in by_group if t["instance_id"] == one["instance_id"]]
        assert by_group[0]["title"] == "approve" and by_group[0]["candidate_groups"] == ["reviewers", "leads"]
        assert [t["element"] for t in await rt.processes.inbox.list_tasks(assignee="bob")] == ["sign"]
        assert len(await rt.processes.inbox.for_user("bob", groups=["leads"])) == 3
        assert await rt.processes.inbox.list_tasks(group="nobody") == []

        task_id = by_group[0]["task_id"]
        claimed = await rt.processes.inbox.claim(task_id, "carol", groups=["reviewers"])
        assert claimed["claimed_by"] == "carol"
        done = await rt.processes.inbox.complete(
            task_id, user="carol", groups=["reviewers"], payload={"approved": True, "comment": "fine"}
        )
        assert done["status"] == "completed"
        assert done["variables"]["approved"] is True and done["variables"]["comment"] == "fine"
        closed = await rt.processes.inbox.get_task(task_id)
        assert (closed["status"], closed["completed_by"], closed["result"]) == (
            "completed",
            "carol",
            {"approved": True, "comment": "fine"},
        )
        assert [t["instance_id"] for t in await rt.processes.inbox.list_tasks(group="reviewers")] == [
            two["instance_id"]
        ]


async def test_completion_by_someone_not_entitled_is_refused_and_changes_nothing(store_url: str) -> None:
    async with runtime(store_url) as rt:
        await rt.processes.deploy(approval())
        view = await rt.processes.start("approval", "doc-1")
        [task] = await rt.processes.inbox.list_tasks(group="leads")
        before = await table_dump(rt)

        with pytest.raises(TaskForbiddenError) as outsider:
            await rt.processes.inbox.complete(
                task["task_id"], user="mallory", groups=["sales"], payload={"approved": True}
            )
        assert outsider.value.category == "forbidden" and "reviewers" in str(outsider.value)
        with pytest.raises(TaskForbiddenError):
            await rt.processes.inbox.claim(task["task_id"], "mallory")
        with pytest.raises(ResumeValueError) as bad:
            await rt.processes.inbox.complete(
                task["task_id"], user="dan", groups=["leads"], payload={"approved": "yes"}
            )
        assert "approved" in str(bad.value)
        with pytest.raises(TaskNotFoundError):
            await rt.processes.inbox.complete("no-such-task", user="dan", groups=["leads"], payload={"approved": True})
        assert await table_dump(rt) == before

        # Once claimed, only the claimant may complete it, even within the group.
        await rt.processes.inbox.claim(task["task_id"], "dan", groups=["leads"])
        with pytest.raises(TaskForbiddenError) as taken:
            await rt.processes.inbox.complete(
                task["task_id"], user="erin", groups=["leads"], payload={"approved": True}
            )
        assert "claimed by 'dan'" in str(taken.value)
        with pytest.raises(TaskForbiddenError):
            await rt.processes.inbox.claim(task["task_id"], "erin", groups=["leads"])
        await rt.processes.inbox.complete(task["task_id"], user="dan", groups=["leads"], payload={"approved": False})
        with pytest.raises(TaskClosedError):
            await rt.processes.inbox.complete(task["task_id"], user="dan", groups=["leads"], payload={"approved": True})
        assert (await rt.processes.status(view["instance_id"]))["variables"]["approved"] is False


async def escalation_events(rt: Any, instance_id: str) -> list[Any]:
    return [e for e in await rt.processes.history(instance_id) if e.type == "task.escalated"]


async def test_an_sla_breach_notifies_exactly_once(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        calls.register(rt, "page_lead")
        await rt.processes.deploy(approval(sla="PT4H", on_timeout={"action": "notify", "notify": "page_lead"}))
        view = await rt.processes.start("approval", "doc-1")
        [task] = await rt.processes.inbox.list_tasks(group="leads")
        assert task["sla_due_at"] == (clock.now() + timedelta(hours=4)).isoformat()

        clock.advance(timedelta(hours=3, minutes=59))
        await rt.processes.scheduler.run_due()
        assert calls.log == []
        clock.advance(timedelta(minutes=1))
        for _ in range(3):
            await rt.processes.scheduler.run_due()
            clock.advance(timedelta(hours=1))
        assert calls.intents() == ["page_lead"]
        assert calls.log[0][1]["task"]["task_id"] == task["task_id"]
        assert len(await escalation_events(rt, view["instance_id"])) == 1
        still = await rt.processes.inbox.get_task(task["task_id"])
        assert (still["status"], still["escalation"]) == ("open", "notify")


@pytest.mark.parametrize("intent", ["page_lead", "notify"])
async def test_an_sla_breach_whose_agent_this_process_lacks_is_left_for_one_that_has_it(
    store_url: str, intent: str
) -> None:
    """Every process serving the database fires timers: one without the escalation's agent (a worker without its
    plugin, a notebook beside the server) stood the SLA timer failed, an incident, for a deployment's mistake. It
    is held as a fired catch timer is: left claimed, a warning naming the agent, fired past its lease by a pass
    that has the agent, once.

    An SLA without on_timeout notifies the default agent, "notify", which the deploy did not check (the process's
    intents left it out): deployed where no agent served it, its breach stood the timer failed, an incident, with
    agent.failed (AgentNotFoundError) in the journey's log. The deploy now names it, and the breach is held as any."""
    clock, calls = virtual_clock(), Calls()
    async with runtime(store_url, clock) as rt:
        on_timeout = {"action": "notify", "notify": intent} if intent != "notify" else None
        with pytest.raises(SpecError, match=f"the SLA escalation of 'approve'.* needs an agent for intent '{intent}'"):
            await rt.processes.deploy(approval(sla="PT4H", on_timeout=on_timeout))
        await rt.processes.deploy(approval(sla="PT4H", on_timeout=on_timeout), agents=False)  # its workers have it
        view = await rt.processes.start("approval", "doc-1")
        clock.advance(timedelta(hours=4))
        with capture_logs() as logs:
            report = await rt.processes.scheduler.run_due()
        assert (report.held, report.fired, report.failed) == (1, 0, 0), report
        [warning] = [entry for entry in logs if entry["event"] == "fired timer left for a process with its agents"]
        assert warning["missing_intents"] == [intent]
        status = await rt.processes.status(view["instance_id"])
        assert status["status"] == "in_progress" and status.get("failure") is None, status
        [timer] = await rt.processes.services.timers.find(instance_id=view["instance_id"], purpose="sla")
        assert (warning["timer_id"], "wait_id" in warning) == (timer.timer_id, False)  # not its task's id
        assert timer.status == "firing", timer  # not failed: held for its lease
        # Due and not fired: /metrics said 0, a held timer being claimed, not scheduled.
        assert (await live_figures(rt.store.backend, clock.now())).queue_depth["timers"] == 1
        calls.register(rt, intent)
        assert (await rt.processes.scheduler.run_due()).fired == 0  # within the lease no pass takes it again
        clock.advance(timedelta(minutes=2))
        assert (await rt.processes.scheduler.run_due()).fired == 1
        assert (await rt.processes.scheduler.run_due()).fired == 0
        assert calls.intents() == [intent]
        assert (await live_figures(rt.store.backend, clock.now())).queue_depth["timers"] == 0
        assert len(await escalation_events(rt, view["instance_id"])) == 1
        [task] = await rt.processes.inbox.list_tasks(group="leads")
        assert (task["status"], task["escalation"]) == ("open", "notify")


async def test_an_sla_breach_reassigns_exactly_once(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(
            approval(
                sla_hours=2, on_timeout={"action": "reassign", "assignee": "boss", "candidate_groups": ["directors"]}
            )
        )
        view = await rt.processes.start("approval", "doc-1")
        [task] = await rt.processes.inbox.list_tasks(group="leads")
        await rt.processes.inbox.claim(task["task_id"], "dan", groups=["leads"])

        clock.advance(timedelta(hours=2))
        await rt.processes.scheduler.run_due()
        await rt.processes.scheduler.run_due()
        moved = await rt.processes.inbox.get_task(task["task_id"])
        assert (moved["assignee"], moved["candidate_groups"], moved["claimed_by"]) == ("boss", ["directors"], None)
        assert await rt.processes.inbox.list_tasks(group="leads") == []
        assert [t["task_id"] for t in await rt.processes.inbox.list_tasks(group="directors")] == [task["task_id"]]
        [event] = await escalation_events(rt, view["instance_id"])
        assert event.payload["to"] == {"assignee": "boss", "candidate_groups": ["directors"]}
        with pytest.raises(TaskForbiddenError):
            await rt.processes.inbox.complete(task["task_id"], user="dan", groups=["leads"], payload={"approved": True})
        done = await rt.processes.inbox.complete(task["task_id"], user="boss", payload={"approved": True})
        assert done["status"] == "completed"


async def test_an_sla_breach_completes_with_the_default_exactly_once(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(
            approval(
                sla="PT30M", on_timeout={"action": "complete", "default": {"approved": False, "comment": "timed out"}}
            )
        )
        view = await rt.processes.start("approval", "doc-1")
        [task] = await rt.processes.inbox.list_tasks(group="leads")
        clock.advance(timedelta(minutes=45))
        report = await rt.processes.scheduler.run_due()
        assert report.fired == 1 and report.lateness == [900.0]
        await rt.processes.scheduler.run_due()

        done = await rt.processes.status(view["instance_id"])
        assert done["status"] == "completed"
        assert done["variables"]["comment"] == "timed out" and done["variables"]["approved"] is False
        closed = await rt.processes.inbox.get_task(task["task_id"])
        assert (closed["status"], closed["completed_by"], closed["escalation"]) == (
            "completed",
            "sla-escalation",
            "complete",
        )
        completions = [e for e in await rt.processes.history(view["instance_id"]) if e.type == "wait.completed"]
        assert len(completions) == 1 and completions[0].payload["resolution_kind"] == "escalation"


async def test_completing_in_time_cancels_the_sla(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        calls.register(rt, "notify")
        await rt.processes.deploy(approval(sla="PT1H", on_timeout={"action": "notify"}))
        view = await rt.processes.start("approval", "doc-1")
        [task] = await rt.processes.inbox.list_tasks(group="leads")
        await rt.processes.inbox.complete(task["task_id"], user="dan", groups=["leads"], payload={"approved": True})
        clock.advance(timedelta(days=1))
        report = await rt.processes.scheduler.run_due()
        assert report.fired == 0 and calls.log == []
        assert await escalation_events(rt, view["instance_id"]) == []


async def test_an_escalation_whose_worker_died_is_fired_again_but_takes_effect_once(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        calls.register(rt, "notify")
        await rt.processes.deploy(approval(sla="PT1H", on_timeout={"action": "notify"}))
        await rt.processes.start("approval", "doc-1")
        clock.advance(timedelta(hours=1))
        # A worker claims the SLA timer and dies before doing anything: the claim is a lease.
        claimed: list[Timer] = await rt.processes.services.timers.claim_due(clock.now(), "dead-worker")
        assert [t.purpose for t in claimed] == ["sla"]
        assert (await fire_due_timers(rt.processes, worker="w2")).fired == 0  # still leased
        clock.advance(timedelta(minutes=2))
        report = await fire_due_timers(rt.processes, worker="w2")
        assert report.fired == 1 and calls.intents() == ["notify"]
        clock.advance(timedelta(hours=2))
        assert (await fire_due_timers(rt.processes, worker="w3")).fired == 0
        assert calls.intents() == ["notify"]


async def test_a_claim_or_release_commits_with_its_event_or_not_at_all(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every change of the inbox has its event: when logging a claim (or a release) fails, the claim is not
    made either, so the inbox never holds a state its log (and so ``journeys rebuild``) lacks."""
    async with runtime(store_url) as rt:
        await rt.processes.deploy(approval())
        started = await rt.processes.start("approval", "doc-1")
        inbox = rt.processes.inbox
        task_id = (await inbox.list_tasks(instance_id=started["instance_id"]))[0]["task_id"]
        stored = events_module.event_payload

        def failing(event: NewEvent, sealer: Any) -> Any:
            if event.type in ("task.claimed", "task.released"):
                raise OSError("the log's disk is full")
            return stored(event, sealer)

        async def logged() -> list[tuple[str, Any]]:
            history = await rt.store.events.list(started["instance_id"], types=["task.claimed", "task.released"])
            return [(e.type, e.payload["by"]) for e in history]

        monkeypatch.setattr(events_module, "event_payload", failing)
        with pytest.raises(OSError):
            await inbox.claim(task_id, "carol", groups=["reviewers"])
        assert (await inbox.get_task(task_id))["claimed_by"] is None and await logged() == []

        monkeypatch.setattr(events_module, "event_payload", stored)
        await inbox.claim(task_id, "carol", groups=["reviewers"])
        await inbox.claim(task_id, "carol", groups=["reviewers"])  # hers already: no change, no second event
        monkeypatch.setattr(events_module, "event_payload", failing)
        with pytest.raises(OSError):
            await inbox.release(task_id, "carol")
        assert (await inbox.get_task(task_id))["claimed_by"] == "carol"
        assert await logged() == [("task.claimed", "carol")]

        monkeypatch.setattr(events_module, "event_payload", stored)
        await inbox.release(task_id, "carol")
        assert (await inbox.get_task(task_id))["claimed_by"] is None
        assert await logged() == [("task.claimed", "carol"), ("task.released", "carol")]
        assert (await rebuild_inbox(rt.store.backend, rt.store.events)).corrected == []


async def test_timer_notifications_are_held_to_the_specs_granted_intents(store_url: str) -> None:
    """An SLA notification and a boundary reminder call agents too: an intent the spec does not grant is
    refused before it runs, audited as ``policy.denied``, reported as a typed error, and fails safe (the
    timer ends, the task stays open for a person); a granted one is called as before."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        for intent in ("page_lead", "remind"):
            calls.register(rt, intent)
        nudge = reminder("remind", "R3/PT1H")
        spec = approval(sla="PT90M", on_timeout={"action": "notify", "notify": "page_lead"})
        spec["elements"].insert(2, nudge)
        await rt.processes.deploy({**spec, "intents": ["archive"]})
        await rt.processes.deploy({**spec, "name": "granted", "intents": ["page_lead", "remind"]})
        refused = await rt.processes.start("approval", "doc-1")
        allowed = await rt.processes.start("granted", "doc-2")

        errors: list[str] = []
        for _ in range(4):
            clock.advance(timedelta(hours=1))
            errors += (await rt.processes.scheduler.run_due()).errors
        assert sorted(intent for intent, _payload in calls.log) == ["page_lead", "remind", "remind", "remind"]
        assert all(p["task"]["instance_id"] == allowed["instance_id"] for _i, p in calls.log)
        denied = [e.payload for e in await rt.history(refused["instance_id"]) if e.type == "policy.denied"]
        assert sorted((d["intent"], d["kind"], tuple(d["allowed"])) for d in denied) == [
            ("page_lead", "agent_call", ("archive",)),
            ("remind", "agent_call", ("archive",)),
        ]
        # Once each (the refused timers ended, and are not fired again), as a typed error.
        assert len(errors) == 2 and all("PolicyViolationError" in e for e in errors)
        [task] = await rt.processes.inbox.list_tasks(instance_id=refused["instance_id"])
        assert (task["status"], task["escalation"]) == ("open", None)  # it waits for a person
        assert await escalation_events(rt, refused["instance_id"]) == []


async def test_a_timer_notification_whose_agent_fails_for_good_is_one_incident_not_a_call_every_lease(
    store_url: str,
) -> None:
    """An SLA's notify agent (and a reminder's) that fails with a permanent error was called again at every lease,
    every minute for ever, each time logging its failure; now the timer stands failed (an incident), the task stays
    open for a person and the failure is reported once."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        rt.agents.register("page_lead", calls.failing("page_lead"))
        rt.agents.register("remind", calls.failing("remind"))
        nudge = reminder("remind")
        spec = approval(sla="PT90M", on_timeout={"action": "notify", "notify": "page_lead"})
        spec["elements"].insert(2, nudge)
        await rt.processes.deploy(spec)
        view = await rt.processes.start("approval", "doc-1")
        errors: list[str] = []
        for _ in range(6):
            clock.advance(timedelta(hours=1))
            errors += (await rt.processes.scheduler.run_due()).errors
        assert sorted(calls.intents()) == ["page_lead", "remind"]
        assert len(errors) == 2 and all("AgentCallFailedError" in e for e in errors)
        timers = await rt.processes.services.timers.find(instance_id=view["instance_id"])
        assert sorted((t.purpose, t.status) for t in timers) == [("reminder", "failed"), ("sla", "failed")]
        [task] = await rt.processes.inbox.list_tasks(instance_id=view["instance_id"])
        assert (task["status"], task["escalation"]) == ("open", None)


async def test_a_timer_notification_that_outlasts_its_agents_retry_policy_is_an_incident_the_operator_retries(
    store_url: str,
) -> None:
    """A notify agent that failed for a passing reason and never recovered was called again at every lease (each
    time with a fresh count of attempts), every minute for ever, and nobody was told. Now the agent's retry policy
    applies once (its attempts, with its backoff); then the timer stands failed, ``timer.failed`` says why, the
    instance's status lists the incident, nothing calls the agent again, and an operator's retry re-arms the timer:
    the SLA escalates once, the reminder goes on ticking. An incident whose task is completed meanwhile ends with
    it."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        down = {"page_lead": True, "remind": True}

        def agent(intent: str) -> Any:
            def call(request: AgentRequest) -> dict[str, Any]:
                calls.log.append((intent, dict(request.payload)))
                if down[intent]:
                    raise TransientAgentError(f"{intent}: pager unreachable")
                return {}

            return call

        policy = RetrySettings(max_attempts=3, initial_delay=0.001, max_delay=0.002, jitter=0)
        rt.agents.register("page_lead", agent("page_lead"), retry=policy)
        rt.agents.register("remind", agent("remind"), retry=policy)
        spec = approval(sla="PT90M", on_timeout={"action": "notify", "notify": "page_lead"})
        spec["elements"].insert(2, reminder("remind", "R3/PT1H"))
        await rt.processes.deploy(spec)
        view = await rt.processes.start("approval", "doc-1")
        instance_id = view["instance_id"]

        clock.advance(timedelta(minutes=90))
        assert len((await rt.processes.scheduler.run_due()).errors) == 2
        for _ in range(10):  # ten leases later: not one more call
            clock.advance(timedelta(minutes=2))
            await rt.processes.scheduler.run_due()
        assert sorted(calls.intents()) == ["page_lead"] * 3 + ["remind"] * 3
        status = await rt.processes.status(instance_id)
        incidents = sorted(status["incidents"], key=lambda i: i["purpose"])
        assert [(i["purpose"], i["intent"], i["error_type"], i["attempts"]) for i in incidents] == [
            ("reminder", "remind", "TransientAgentError", 3),
            ("sla", "page_lead", "TransientAgentError", 3),
        ]
        assert all("retry the instance" in i["error"] and "pager unreachable" in i["error"] for i in incidents)
        assert status["status"] == "in_progress" and [w["element"] for w in status["waiting"]] == ["approve"]
        logged = [e for e in await rt.processes.history(instance_id) if e.type == "timer.failed"]
        assert sorted(e.payload["purpose"] for e in logged) == ["reminder", "sla"]

        down.update(page_lead=False, remind=False)
        retried = await rt.processes.retry(instance_id, by="ops")
        assert "incidents" not in retried and "incidents" not in await rt.processes.status(instance_id)
        report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.errors) == (2, [])
        [task] = await rt.processes.inbox.list_tasks(instance_id=instance_id)
        assert (task["status"], task["escalation"]) == ("open", "notify")
        assert len(await escalation_events(rt, instance_id)) == 1
        clock.advance(timedelta(hours=1))
        assert (await rt.processes.scheduler.run_due()).fired == 1  # the reminder ticks on
        history = await rt.processes.history(instance_id)
        assert [e.payload["by"] for e in history if e.type == "timer.retried"] == ["ops", "ops"]
        assert len([e for e in history if e.type == "task.reminded"]) == 2
        with pytest.raises(ProcessStateError, match="no failed node nor failed timer"):
            await rt.processes.retry(instance_id)

        down["page_lead"] = True
        other = await rt.processes.start("approval", "doc-2")
        clock.advance(timedelta(minutes=90))
        await rt.processes.scheduler.run_due()
        assert [i["purpose"] for i in (await rt.processes.status(other["instance_id"]))["incidents"]] == ["sla"]
        [task] = await rt.processes.inbox.list_tasks(instance_id=other["instance_id"])
        await rt.processes.inbox.complete(task["task_id"], user="dan", groups=["leads"], payload={"approved": True})
        assert "incidents" not in await rt.processes.status(other["instance_id"])
        timers = await rt.processes.services.timers.find(instance_id=other["instance_id"], purpose="sla")
        assert [t.status for t in timers] == ["cancelled"]


async def test_an_instances_status_names_whom_its_task_was_reassigned_to_by_its_sla(store_url: str) -> None:
    """The instance's ``waiting`` list said the task was still the first assignee's after its SLA reassigned it
    (it showed the spec's description, not the inbox): whoever read the status took it for theirs."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(
            approval(assignee="dan", sla="PT1H", on_timeout={"action": "reassign", "candidate_groups": ["directors"]})
        )
        view = await rt.processes.start("approval", "doc-1")
        [waiting] = view["waiting"]
        assert (waiting["assignee"], waiting["candidate_groups"]) == ("dan", ["reviewers", "leads"])
        clock.advance(timedelta(hours=1))
        await rt.processes.scheduler.run_due()
        [waiting] = (await rt.processes.status(view["instance_id"]))["waiting"]
        [task] = await rt.processes.inbox.list_tasks(instance_id=view["instance_id"])
        assert (task["assignee"], task["candidate_groups"]) == (None, ["directors"])
        assert (waiting["wait_id"], waiting["assignee"], waiting["candidate_groups"]) == (
            task["task_id"],
            None,
            ["directors"],
        )


async def dans_task_past_its_sla(rt: JourneyRuntime, clock: VirtualClock) -> tuple[dict[str, Any], dict[str, Any]]:
    """An approval assigned to dan whose SLA (reassign to the directors) is due now: the instance and dan's task."""
    await rt.processes.deploy(
        approval(assignee="dan", sla="PT1H", on_timeout={"action": "reassign", "candidate_groups": ["directors"]})
    )
    view = await rt.processes.start("approval", "doc-1")
    [task] = await rt.processes.inbox.list_tasks(assignee="dan")
    clock.advance(timedelta(hours=1))
    return view, task


async def test_a_completion_checked_before_its_sla_reassigned_the_task_is_refused_after_it(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dan's completion was checked while the task was his; its SLA reassigned it to the directors before his answer
    was written, and the answer was written anyway: the log said the task went to the directors, then that dan
    completed it. As if one came after the other, he is refused now, and a director completes it."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        view, task = await dans_task_past_its_sla(rt, clock)
        caller = rt.processes.inbox._caller
        checked = caller.authorize_completion

        async def breached_meanwhile(*args: Any, **kwargs: Any) -> None:
            await checked(*args, **kwargs)
            await rt.processes.scheduler.run_due()  # the SLA fires between dan's checks and his write

        monkeypatch.setattr(caller, "authorize_completion", breached_meanwhile)
        with pytest.raises(TaskForbiddenError):
            await rt.processes.inbox.complete(task["task_id"], user="dan", payload={"approved": True})
        monkeypatch.undo()
        [moved] = await rt.processes.inbox.list_tasks(group="directors")
        assert (moved["status"], moved["completed_by"]) == ("open", None)
        done = await rt.processes.inbox.complete(
            task["task_id"], user="eve", groups=["directors"], payload={"approved": False}
        )
        assert done["status"] == "completed" and done["variables"]["approved"] is False
        types = [
            e.type for e in await rt.processes.history(view["instance_id"]) if e.type.startswith(("task.", "wait."))
        ]
        assert types == ["task.created", "task.escalated", "wait.completed"]


async def test_an_sla_reassign_that_read_the_task_before_its_completion_reassigns_nothing_after_it(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SLA read the task open, dan's completion was written, then the reassign was: the log said dan completed
    the task, then that it went to the directors, and the completed task was listed under the directors' group.
    The reassign now holds only while the task is open: it did not happen, and nothing says it did."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        view, task = await dans_task_past_its_sla(rt, clock)
        store = rt.processes.services.inbox
        read = store.get
        completed: list[dict[str, Any]] = []
        sla_read = asyncio.Event()

        async def completed_after_read(task_id: str) -> Any:
            row = await read(task_id)
            if not sla_read.is_set():  # the SLA's read: dan's completion lands right after it
                sla_read.set()
                completed.append(await rt.processes.inbox.complete(task_id, user="dan", payload={"approved": True}))
            return row

        monkeypatch.setattr(store, "get", completed_after_read)
        await rt.processes.scheduler.run_due()
        monkeypatch.undo()
        assert completed[0]["status"] == "completed"
        types = [
            e.type for e in await rt.processes.history(view["instance_id"]) if e.type.startswith(("task.", "wait."))
        ]
        assert types == ["task.created", "wait.completed"]
        closed = await rt.processes.inbox.get_task(task["task_id"])
        assert (closed["status"], closed["assignee"], closed["escalation"]) == ("completed", "dan", None)
        assert await rt.processes.inbox.list_tasks(group="directors", status=None) == []


async def test_an_sla_notify_that_read_the_task_before_its_completion_does_not_mark_the_completed_task_escalated(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SLA read the task open, dan's completion was written, then the lead was paged: the completed task was
    then stamped escalated ("escalation": "notify", an escalated_at after its completion), and listed as such. The
    page went out (it was decided while the task was open, and the log says so), but only an open task is marked."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        calls.register(rt, "page_lead")
        await rt.processes.deploy(
            approval(assignee="dan", sla="PT1H", on_timeout={"action": "notify", "notify": "page_lead"})
        )
        view = await rt.processes.start("approval", "doc-1")
        [task] = await rt.processes.inbox.list_tasks(assignee="dan")
        clock.advance(timedelta(hours=1))
        store = rt.processes.services.inbox
        read = store.get
        sla_read = asyncio.Event()

        async def completed_after_read(task_id: str) -> Any:
            row = await read(task_id)
            if not sla_read.is_set():  # the SLA's read: dan's completion lands right after it
                sla_read.set()
                await rt.processes.inbox.complete(task_id, user="dan", payload={"approved": True})
            return row

        monkeypatch.setattr(store, "get", completed_after_read)
        await rt.processes.scheduler.run_due()
        monkeypatch.undo()
        assert calls.intents() == ["page_lead"]
        closed = await rt.processes.inbox.get_task(task["task_id"])
        assert (closed["status"], closed["escalation"], closed["escalated_at"]) == ("completed", None, None)
        timers = await rt.processes.services.timers.find(instance_id=view["instance_id"])
        assert [t.status for t in timers if t.purpose == "sla"] == ["cancelled"]  # by the completion
        assert (await rebuild_inbox(rt.store.backend, rt.store.events)).corrected == []  # the log agrees
