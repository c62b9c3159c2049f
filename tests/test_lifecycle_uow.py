"""L3, the unit-of-work executor: task DAGs checked when defined, agents found by intent, inputs mapped
from earlier outputs, outputs checked against schemas, per-task retries, parallel waves under a
concurrency limit, units depending on units, and compensation of completed tasks when a unit fails or
is stopped by a rollback. On memory, SQLite and Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest
from sqlalchemy import func, select

from agents import AgentRequest, FailingAgent, FlakyAgent, PermanentAgentError
from checkpoints.lifecycle import LifecycleStore
from checkpoints.rebuild import rebuild_views
from checkpoints.schema.lifecycle_tables import lifecycle_units_of_work
from checkpoints.schema.tables import journey_designs
from graphs import JourneyRuntime, SpecError
from graphs.errors import (
    InvalidTransitionError,
    UnitDependencyError,
    UnitOfWorkFailedError,
    UnknownUnitOfWorkError,
)
from graphs.lifecycle.catalog import DEFAULT_AGENT_OUTPUTS
from graphs.lifecycle.machine import LifecycleSpec, StageSpec
from nodes.uow import TaskSpec, UnitOfWorkSpec
from tests.lifecycle_support import fingerprint, journey_at, lifecycle_runtime


class Capture:
    """Answers with a fixed output and remembers every request (and, shared, the order of calls)."""

    def __init__(self, intent: str, output: dict[str, Any], log: list[str] | None = None) -> None:
        self.intent, self.output = intent, output
        self.requests: list[AgentRequest] = []
        self.log = log if log is not None else []
        self.__name__ = f"capture:{intent}"

    def __call__(self, request: AgentRequest) -> dict[str, Any]:
        self.requests.append(request)
        self.log.append(self.intent)
        return dict(self.output)


def task(task_id: str, *depends_on: str, **options: Any) -> TaskSpec:
    return TaskSpec(task_id=task_id, intent=options.pop("intent", task_id), depends_on=depends_on, **options)


def lifecycle(*units: UnitOfWorkSpec, pilot_units: Iterable[UnitOfWorkSpec] = ()) -> LifecycleSpec:
    """A lifecycle with no criteria and only the given units, to look at the executor alone."""
    return LifecycleSpec(
        sandbox=StageSpec(units=units), pilot=StageSpec(units=tuple(pilot_units)), production=StageSpec()
    )


def register(rt: JourneyRuntime, *intents: str, log: list[str] | None = None) -> dict[str, Capture]:
    agents = {i: Capture(i, {"ok": True}, log) for i in intents}
    for intent, agent in agents.items():
        rt.agents.register(intent, agent, replace=True)
    return agents


async def test_default_units_map_inputs_from_earlier_tasks_and_units(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        seen = {
            intent: Capture(intent, output)
            for intent, output in {
                **DEFAULT_AGENT_OUTPUTS,
                "provision_sandbox_environment": {"environment_id": "env-42", "status": "ready"},
                "provision_test_dataset": {"dataset_id": "ds-7", "record_count": 10},
            }.items()
        }
        for intent, agent in seen.items():
            rt.agents.register(intent, agent, replace=True)
        journey_id = await journey_at(rt, clock, "sandbox", client_id="client-42")
        await rt.lifecycle.run_unit_of_work(journey_id, "test_dataset_provisioning")
        result = await rt.lifecycle.run_unit_of_work(journey_id, "search_quality_validation")
        assert result["status"] == "completed"

        def payload(intent: str) -> dict[str, Any]:
            [request] = seen[intent].requests
            return dict(request.payload)

        assert payload("provision_sandbox_environment") == {
            "client_id": "client-42",
            "data_sources": ["confluence", "google_drive", "slack"],
        }
        assert payload("install_connectors") == {
            "environment_id": "env-42",  # from the earlier task
            "connectors": ["confluence", "google_drive", "slack"],
            "auth_method": "oauth2",  # as the design notes' sandbox unit passes it
        }
        assert payload("provision_test_dataset")["environment_id"] == "env-42"  # from the earlier unit
        assert payload("run_security_scan") == {"environment_id": "env-42"}
        assert payload("validate_search_quality") == {"dataset_id": "ds-7", "precision_threshold": 0.8}

        runs = await rt.lifecycle.units_of_work(journey_id)
        assert [(r["uow_id"], r["status"], r["purpose"]) for r in runs] == [
            ("connector_installation", "completed", "entry"),
            ("test_dataset_provisioning", "completed", "on_demand"),
            ("search_quality_validation", "completed", "on_demand"),
        ]
        assert runs[0]["tasks"]["provision-infra"]["output_data"]["environment_id"] == "env-42"
        assert runs[1]["dependencies"] == ["connector_installation"]
        assert all(r["started_at"] and r["completed_at"] for r in runs)
        types = [e.type for e in await rt.history(journey_id) if e.type.startswith(("uow.", "task."))]
        assert types.count("uow.started") == types.count("uow.completed") == 3
        assert types.count("task.completed") == 5


async def test_independent_tasks_run_in_parallel_up_to_the_limit(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, _clock):
        active, peak, order = 0, 0, []

        async def gauge(request: AgentRequest) -> dict[str, Any]:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            # Long enough for the other tasks of the wave to start: overlap, not timing, is measured.
            await asyncio.sleep(0.2)
            active -= 1
            order.append(request.intent)
            return {"ok": True}

        for intent in ("a", "b", "c", "d", "e", "join"):
            rt.agents.register(intent, gauge, replace=True)
        fan = [task(t) for t in "abcde"]
        spec = lifecycle(
            UnitOfWorkSpec(uow_id="narrow", max_parallel=2, tasks=(*fan, task("join", *"abcde"))),
            UnitOfWorkSpec(uow_id="wide", max_parallel=8, tasks=(*fan, task("join", *"abcde"))),
        )
        journey_id = (await rt.lifecycle.start_journey("client-p", spec=spec))["journey_id"]
        narrow = await rt.lifecycle.run_unit_of_work(journey_id, "narrow")
        assert narrow["status"] == "completed"
        assert (peak, order[-1]) == (2, "join")
        peak, order = 0, []
        await rt.lifecycle.run_unit_of_work(journey_id, "wide")
        assert (peak, order[-1]) == (5, "join")


async def test_cycles_and_broken_references_are_refused_when_defined(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, _clock):
        register(rt, "a", "b", "c")
        broken = lifecycle(
            UnitOfWorkSpec(uow_id="loop", tasks=(task("a", "c"), task("b", "a"), task("c", "b"))),
            UnitOfWorkSpec(uow_id="selfish", tasks=(task("a", "a"),)),
            UnitOfWorkSpec(uow_id="dangling", tasks=(task("a", "ghost"),)),
            UnitOfWorkSpec(
                uow_id="mapping",
                dependencies=("loop",),
                tasks=(
                    task("a", input_from={"x": "tasks.b.value", "y": "units.selfish.a.v", "z": "units.loop.zz.v"}),
                    task("b", input_from={"w": "somewhere.else"}),
                ),
            ),
            UnitOfWorkSpec(uow_id="chicken", dependencies=("egg",), tasks=(task("a"),)),
            UnitOfWorkSpec(uow_id="egg", dependencies=("chicken", "nowhere"), tasks=(task("a"),)),
            UnitOfWorkSpec(
                uow_id="unserved",
                tasks=(
                    task("a", intent="not_registered", compensation="undo_missing", output_schema={"type": "nope"}),
                ),
            ),
            UnitOfWorkSpec(uow_id="early", trigger="on_entry", dependencies=("chicken",), tasks=(task("a"),)),
        )
        async with rt.store.engine.connect() as conn:
            designs_before = (await conn.execute(select(func.count()).select_from(journey_designs))).scalar_one()
        with pytest.raises(SpecError) as caught:
            await rt.lifecycle.start_journey("client-x", spec=broken)
        problems = "\n".join(caught.value.problems)
        for expected in (
            "unit 'loop': tasks depend on each other in a cycle (a -> c -> b -> a)",
            "unit 'selfish': task 'a' depends on itself",
            "unit 'dangling': task 'a' depends on unknown task 'ghost'",
            "input 'x' maps from task 'b', which does not run before it; add it to depends_on",
            "input 'y' maps from unit 'selfish'; list it in the unit's dependencies",
            "maps from 'units.loop.zz.v', but unit 'loop' has no such task",
            "input 'w' maps from 'somewhere.else'; paths start with",
            "units of work depend on each other in a cycle (chicken -> egg -> chicken)",
            "unit 'egg' depends on unknown unit 'nowhere'",
            "needs an agent for intent 'not_registered' (its work); register one with "
            "runtime.agents.register('not_registered', agent)",
            "needs an agent for intent 'undo_missing' (its compensation)",
            "has an invalid output_schema",
            "on_entry unit 'early' depends on 'chicken', which does not run before it",
        ):
            assert expected in problems, expected
        async with rt.store.engine.connect() as conn:
            assert (
                await conn.execute(select(func.count()).select_from(journey_designs))
            ).scalar_one() == designs_before


async def test_an_intent_with_no_agent_fails_its_task_clearly_at_run_time(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, _clock):
        agents = register(rt, "first", "vanishing")
        spec = lifecycle(UnitOfWorkSpec(uow_id="u", tasks=(task("first"), task("vanishing", "first"))))
        journey_id = (await rt.lifecycle.start_journey("client-v", spec=spec))["journey_id"]
        del rt.agents._agents["vanishing"]  # the registry offers no removal; an agent gone after design time
        result = await rt.lifecycle.run_unit_of_work(journey_id, "u")
        assert result["status"] == "failed"
        failed = result["tasks"]["vanishing"]
        assert failed["status"] == "failed" and failed["attempts"] == 0
        assert failed["error_type"] == "AgentNotFoundError"
        assert "no agent is registered for intent 'vanishing' in this process;" in failed["error"]
        assert result["tasks"]["first"]["status"] == "rolled_back"
        assert len(agents["first"].requests) == 1


async def test_output_schemas_retries_and_compensation_of_completed_tasks(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, _clock):
        calls: list[str] = []
        register(rt, "prepare", "undo_prepare", "side", "undo_side", "plain", log=calls)
        rt.agents.register("report", lambda _r: {"rows": "many"}, replace=True)
        rt.agents.register("patient", FlakyAgent("patient", failures=2), replace=True)
        rt.agents.register("impatient", FlakyAgent("impatient", failures=2), replace=True)
        spec = lifecycle(
            UnitOfWorkSpec(
                uow_id="report_unit",
                tasks=(
                    task("prepare", compensation="undo_prepare"),
                    task("side", "prepare", compensation="undo_side"),
                    task("plain", "prepare"),
                    task("report", "side", "plain", output_schema={"rows": "integer"}),
                ),
            ),
            UnitOfWorkSpec(uow_id="retries", tasks=(task("patient", max_retries=2),)),
            UnitOfWorkSpec(uow_id="no_retries", tasks=(task("impatient", max_retries=1),)),
        )
        journey_id = (await rt.lifecycle.start_journey("client-s", spec=spec))["journey_id"]

        result = await rt.lifecycle.run_unit_of_work(journey_id, "report_unit")
        assert result["status"] == "failed"
        report = result["tasks"]["report"]
        assert (report["status"], report["attempts"], report["error_type"]) == ("failed", 1, "AgentCallFailedError")
        assert "returned output that breaks its schema: 'many' is not of type 'integer'" in report["error"]
        assert {t: v["status"] for t, v in result["tasks"].items()} == {
            "prepare": "rolled_back",
            "side": "rolled_back",
            "plain": "rolled_back",
            "report": "failed",
        }
        assert result["tasks"]["plain"]["compensation"] is None  # nothing declared to undo it
        assert calls[-2:] == ["undo_side", "undo_prepare"]  # dependents first
        assert result["failure"]["task_id"] == "report"

        patient = await rt.lifecycle.run_unit_of_work(journey_id, "retries")
        assert (patient["status"], patient["tasks"]["patient"]["attempts"]) == ("completed", 3)
        impatient = await rt.lifecycle.run_unit_of_work(journey_id, "no_retries")
        assert (impatient["status"], impatient["tasks"]["impatient"]["attempts"]) == ("failed", 2)

        async with rt.store.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(lifecycle_units_of_work).where(lifecycle_units_of_work.c.journey_id == journey_id)
                )
            ).all()
        by_unit = {r.uow_id: r for r in rows}
        assert (by_unit["report_unit"].tasks_total, by_unit["report_unit"].tasks_failed) == (4, 1)
        assert by_unit["retries"].task_attempts == 3
        assert by_unit["report_unit"].failure["task_id"] == "report"


async def test_units_wait_for_the_units_they_depend_on(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, clock):
        lc = rt.lifecycle
        journey_id = await journey_at(rt, clock, "sandbox")
        before = await fingerprint(rt, journey_id)
        with pytest.raises(UnitDependencyError) as caught:
            await lc.run_unit_of_work(journey_id, "search_quality_validation")
        assert caught.value.details["missing"] == ["test_dataset_provisioning"]
        assert caught.value.allowed == ["connector_installation", "test_dataset_provisioning"]
        for unknown in ("pilot_validation", "nope"):
            with pytest.raises(UnknownUnitOfWorkError) as missing:
                await lc.run_unit_of_work(journey_id, unknown)
            assert missing.value.allowed == [
                "connector_installation",
                "test_dataset_provisioning",
                "search_quality_validation",
            ]
        assert await fingerprint(rt, journey_id) == before
        await lc.initiate_rollback(journey_id, "pause")
        with pytest.raises(InvalidTransitionError):
            await lc.run_unit_of_work(journey_id, "test_dataset_provisioning")


async def test_a_failing_entry_unit_blocks_the_promotion_and_undoes_itself(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, _clock):
        calls: list[str] = []
        register(rt, "open_access", "close_access", log=calls)
        rt.agents.register("announce", FailingAgent("announce", permanent=True), replace=True)
        spec = lifecycle(
            pilot_units=[
                UnitOfWorkSpec(
                    uow_id="pilot_setup",
                    trigger="on_entry",
                    tasks=(task("open_access", compensation="close_access"), task("announce", "open_access")),
                )
            ]
        )
        journey_id = (await rt.lifecycle.start_journey("client-e", spec=spec))["journey_id"]
        with pytest.raises(UnitOfWorkFailedError) as caught:
            await rt.lifecycle.promote(journey_id)
        assert caught.value.unit["uow_id"] == "pilot_setup"
        assert caught.value.unit["tasks"]["open_access"]["status"] == "rolled_back"
        assert calls == ["open_access", "close_access"]
        state = await rt.lifecycle.get_journey_state(journey_id)
        assert (state["current_stage"], state["units"]["pilot_setup"]) == ("sandbox", "failed")
        assert [v.passed for v in await rt.lifecycle.validation_history(journey_id)] == [True, True]
        rt.agents.register("announce", lambda _r: {"ok": True}, replace=True)
        assert (await rt.lifecycle.promote(journey_id)).passed
        state = await rt.lifecycle.get_journey_state(journey_id)
        assert (state["current_stage"], state["units"]["pilot_setup"]) == ("pilot", "completed")


async def test_a_unit_whose_undo_failed_says_which_effect_stayed(store_url: str) -> None:
    """A unit failed and undoing one of its completed tasks failed for good too: the error said only that the unit
    failed ('announce failed'), as when everything was undone, while open_access's effect stayed in place. Its
    message, and the unit's failure, now name the undo that failed."""
    async with lifecycle_runtime(store_url) as (rt, _clock):
        register(rt, "open_access")
        rt.agents.register("close_access", FailingAgent("close_access", permanent=True), replace=True)
        rt.agents.register("announce", FailingAgent("announce", permanent=True), replace=True)
        spec = lifecycle(
            pilot_units=[
                UnitOfWorkSpec(
                    uow_id="pilot_setup",
                    trigger="on_entry",
                    tasks=(task("open_access", compensation="close_access"), task("announce", "open_access")),
                )
            ]
        )
        journey_id = (await rt.lifecycle.start_journey("client-u", spec=spec))["journey_id"]
        with pytest.raises(UnitOfWorkFailedError) as caught:
            await rt.lifecycle.promote(journey_id)
        message = str(caught.value)
        assert "announce" in message and "'close_access'" in message and "'open_access'" in message, message
        assert "not undone" in message, message
        unit = caught.value.unit
        assert unit["tasks"]["open_access"]["status"] == "completed"  # its effect stays
        assert unit["failure"]["compensation_failure"]["handler"] == "close_access"


class Switch:
    """An agent that fails for good while ``failing`` (so a test can mend it), logging each call, ``!`` marking a
    failed one."""

    def __init__(self, intent: str, log: list[str], *, failing: bool = False) -> None:
        self.intent, self.log, self.failing = intent, log, failing
        self.__name__ = f"switch:{intent}"

    def __call__(self, request: AgentRequest) -> dict[str, Any]:
        self.log.append(f"{self.intent}!" if self.failing else self.intent)
        if self.failing:
            raise PermanentAgentError(f"{self.intent} is down", intent=self.intent)
        return {"ok": True}


async def test_a_unit_run_again_after_its_undo_failed_first_undoes_what_that_run_left(store_url: str) -> None:
    """A unit failed (announce) and undoing its completed open_access failed for good too (close_access): the
    access stayed open. Running the unit again (the promotion asked again) opened access a second time and
    announced, and the first run's access was never closed: nothing called close_access for it again. A unit run
    again now first undoes what an earlier run of it left (the failed undo, and those after it), keyed as that
    run's undo; while that undo still fails, no task of the new run starts and its error names the undo."""
    async with lifecycle_runtime(store_url) as (rt, _clock):
        calls: list[str] = []
        agents = {
            "open_access": Switch("open_access", calls),
            "close_access": Switch("close_access", calls, failing=True),
            "announce": Switch("announce", calls, failing=True),
        }
        for intent, agent in agents.items():
            rt.agents.register(intent, agent, replace=True)
        spec = lifecycle(
            pilot_units=[
                UnitOfWorkSpec(
                    uow_id="pilot_setup",
                    trigger="on_entry",
                    tasks=(task("open_access", compensation="close_access"), task("announce", "open_access")),
                )
            ]
        )
        journey_id = (await rt.lifecycle.start_journey("client-u", spec=spec))["journey_id"]
        with pytest.raises(UnitOfWorkFailedError, match="not undone"):
            await rt.lifecycle.promote(journey_id)
        assert calls == ["open_access", "announce!", "close_access!"]

        agents["announce"].failing = False  # the cause is mended; the undo is still down
        calls.clear()
        with pytest.raises(UnitOfWorkFailedError, match="'close_access'") as caught:
            await rt.lifecycle.promote(journey_id)
        assert calls == ["close_access!"]  # nothing of the new run started
        assert {t["status"] for t in caught.value.unit["tasks"].values()} == {"pending"}
        assert (await rt.lifecycle.get_journey_state(journey_id))["current_stage"] == "sandbox"

        agents["close_access"].failing = False
        calls.clear()
        assert (await rt.lifecycle.promote(journey_id)).passed
        assert calls == ["close_access", "open_access", "announce"]
        runs = await rt.lifecycle.units_of_work(journey_id)
        assert [r["status"] for r in runs] == ["failed", "failed", "completed"]
        assert runs[0]["tasks"]["open_access"]["status"] == "rolled_back"  # the first run's access is closed
        assert (await rt.lifecycle.get_journey_state(journey_id))["current_stage"] == "pilot"
        # The rows are what the event log tells (a rebuild corrects nothing).
        assert (await rebuild_views(rt.store.backend, rt.store.events, rt.engine.exclusive))[1].corrected == []


async def test_a_rollback_undoes_what_a_failed_unit_of_the_stage_left_before_it_validates(store_url: str) -> None:
    """In pilot, a unit's announce failed and undoing its open_access failed for good too: access stayed open.
    Rolling pilot back to sandbox then validated and completed: the journey was back in sandbox, the rollback
    'completed', pilot's access still open, and nothing would close it unless that unit ran again. A rollback now
    first undoes what failed runs of the unwound stages' units left (an 'undo' run of each, keyed as their own
    undos); while one still fails the rollback does not validate, and complete_rollback tries it again."""
    async with lifecycle_runtime(store_url) as (rt, _clock):
        calls: list[str] = []
        agents = {
            "open_access": Switch("open_access", calls),
            "close_access": Switch("close_access", calls, failing=True),
            "announce": Switch("announce", calls, failing=True),
        }
        for intent, agent in agents.items():
            rt.agents.register(intent, agent, replace=True)
        access = UnitOfWorkSpec(
            uow_id="pilot_access",
            tasks=(task("open_access", compensation="close_access"), task("announce", "open_access")),
        )
        spec = lifecycle(pilot_units=[access])
        lc = rt.lifecycle
        journey_id = (await lc.start_journey("client-r", spec=spec))["journey_id"]
        assert (await lc.promote(journey_id)).passed
        failed = await lc.run_unit_of_work(journey_id, "pilot_access")
        assert failed["failure"]["compensation_failure"]["handler"] == "close_access"
        assert calls == ["open_access", "announce!", "close_access!"]

        calls.clear()
        stuck = await lc.initiate_rollback(journey_id, "pilot went wrong", complete=True)
        assert (stuck["status"], stuck["journey"]["current_stage"]) == ("failed", "rollback")
        assert calls == ["close_access!"]
        validation = (await lc.validation_history(journey_id))[-1]
        unit_check = next(c for c in validation.checks if c.name == "unit:pilot_access")
        assert not unit_check.passed and "left done" in unit_check.message, validation

        agents["close_access"].failing = False
        calls.clear()
        done = await lc.complete_rollback(journey_id)
        assert (done["current_stage"], done["rollback"]["status"]) == ("sandbox", "completed")
        assert calls == ["close_access"]
        first_run = (await lc.units_of_work(journey_id))[0]
        assert first_run["tasks"]["open_access"]["status"] == "rolled_back"
        assert (await rebuild_views(rt.store.backend, rt.store.events, rt.engine.exclusive))[1].corrected == []


# Two tasks in the first wave (the slow one is where a test asks for a rollback), two after them.
MIGRATION = UnitOfWorkSpec(
    uow_id="migration",
    max_parallel=2,
    tasks=(
        task("fast", compensation="undo_fast"),
        task("slow", compensation="undo_slow"),
        task("after", "fast", "slow"),
        task("last", "after"),
    ),
)


async def test_a_rollback_mid_unit_leaves_no_task_half_done(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, _clock):
        calls: list[str] = []
        register(rt, "fast", "undo_fast", "undo_slow", "after", "last", log=calls)
        entered, release = asyncio.Event(), asyncio.Event()

        async def slow(_request: AgentRequest) -> dict[str, Any]:
            entered.set()
            await release.wait()
            calls.append("slow")
            return {"ok": True}

        rt.agents.register("slow", slow, replace=True)
        spec = lifecycle(MIGRATION)
        lc = rt.lifecycle
        rows = LifecycleStore(rt.store.engine)
        journey_id = (await lc.start_journey("client-m", spec=spec))["journey_id"]
        running = asyncio.create_task(lc.run_unit_of_work(journey_id, "migration"))
        await entered.wait()
        rollback = asyncio.create_task(lc.initiate_rollback(journey_id, "incident during the migration"))
        # The request reaches the running unit at once; the rollback itself waits for the journey's lock.
        for _ in range(1000):
            if requests := await rows.rollback_requests(journey_id):
                break
            await asyncio.sleep(0.01)
        assert requests == {f"{journey_id}:u1": "incident during the migration"} and not rollback.done()
        release.set()
        stopped = await running
        rolled = await rollback

        assert stopped["status"] == "rolled_back"
        assert stopped["failure"] == {"aborted": "incident during the migration"}
        statuses = {t: v["status"] for t, v in stopped["tasks"].items()}
        assert statuses == {"fast": "rolled_back", "slow": "rolled_back", "after": "pending", "last": "pending"}
        assert "running" not in statuses.values()
        assert calls == ["fast", "slow", "undo_slow", "undo_fast"]
        assert rolled["status"] == "validated" and rolled["journey"]["current_stage"] == "rollback"
        [row] = [r for r in await lc.units_of_work(journey_id) if r["uow_id"] == "migration"]
        assert row["status"] == "rolled_back"
        assert {t: v["status"] for t, v in row["tasks"].items()} == statuses
        assert await rows.rollback_requests(journey_id) == {}


class Crash(BaseException):
    """The process dies: not an error any layer handles, so nothing records it."""


async def test_a_unit_cut_short_by_a_crash_finishes_without_repeating_a_task(store_url: str) -> None:
    async with lifecycle_runtime(store_url) as (rt, _clock):
        agents = register(rt, "first", "second")
        spec = lifecycle(UnitOfWorkSpec(uow_id="u", tasks=(task("first"), task("second", "first"))))
        lc = rt.lifecycle
        journey_id = (await lc.start_journey("client-c", spec=spec))["journey_id"]
        log = rt.store.events
        append = log.append
        crashed: list[str] = []

        async def dying_append(instance_id: str, events: Any, **options: Any) -> list[bool]:
            if events[0].type == "uow.completed" and not crashed:  # both tasks done and logged; then the crash
                crashed.append(instance_id)
                raise Crash
            return await append(instance_id, events, **options)

        log.append = dying_append  # type: ignore[method-assign]  # a fault injected into this runtime's log
        with pytest.raises(Crash):
            await lc.run_unit_of_work(journey_id, "u")
        assert (await rt.lifecycle.units_of_work(journey_id))[-1]["status"] == "running"
        # Recovery finishes the work left in flight; both tasks are replayed from the event log.
        assert await rt.recover() == [journey_id]
        assert await rt.recover() == []
        state = await lc.get_journey_state(journey_id)
        assert state["units"]["u"] == "completed"
        assert [len(agents[i].requests) for i in ("first", "second")] == [1, 1]
        [row] = [r for r in await lc.units_of_work(journey_id) if r["uow_id"] == "u"]
        assert row["status"] == "completed" and row["tasks_total"] == 2
        completions = [e.step for e in await rt.history(journey_id) if e.type == "task.completed"]
        assert completions == ["u.first", "u.second"]
