"""Process versioning (SPEC B6): (name, version) deployments, instances pinned to their version, rollout
weights with sticky bucketing, A/B variants, and migration plans. Every test runs on memory, SQLite
and Postgres, on a virtual clock."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from langgraph.types import Durability
from sqlalchemy import delete, event, select, update

from agents.deterministic import FailingAgent
from checkpoints.ownership import Owner, acting_as
from checkpoints.process import deployments as deployments_module
from checkpoints.rebuild import rebuild_inbox
from checkpoints.schema.tables import journey_designs, process_deployments, user_tasks
from graphs.errors import (
    MigrationRefusedError,
    ProcessNameTakenError,
    ProcessStateError,
    ProcessVersionConflictError,
    RolloutError,
    UnknownProcessError,
)
from graphs.kernel import designs as designs_module
from graphs.process.context import DeployedVersions
from graphs.process.versions import choose
from nodes.errors import ResumeValueError
from tests.process_support import (
    Calls,
    linear,
    reminder,
    runtime,
    table_dump,
    user_task,
    virtual_clock,
    waiting_elements,
)


def onboarding(version: int, *, extra_step: bool = False, task_id: str = "approve") -> dict[str, Any]:
    """v1: approve → trial timer → done. v2 adds a welcome call after the trial."""
    elements: list[dict[str, Any]] = [
        {"type": "start", "id": "start"},
        user_task(task_id),
        {"type": "timer", "id": "trial", "timer": {"duration": "P7D"}},
        {"type": "service_task", "id": "activate", "agent": "activate"},
    ]
    flows = ["start -> " + task_id, f"{task_id} -> trial", "trial -> activate"]
    if extra_step:
        elements.append({"type": "service_task", "id": "welcome_call", "agent": "welcome_call"})
        flows += ["activate -> welcome_call", "welcome_call -> end"]
    else:
        flows.append("activate -> end")
    elements.append({"type": "end", "id": "end"})
    return {"name": "onboarding", "version": version, "elements": elements, "flows": flows}


def onboarding_agents(rt: Any) -> Calls:
    """The agents of both versions' service tasks, recording their calls."""
    calls = Calls()
    calls.register(rt, "activate")
    calls.register(rt, "welcome_call")
    return calls


async def waiting_at_the_trial_on_v1(rt: Any) -> dict[str, Any]:
    """An instance of v1 whose task is done: it waits at the trial timer."""
    await rt.processes.deploy(onboarding(1))
    view = await rt.processes.start("onboarding", "cust-1")
    [task] = await rt.processes.inbox.list_tasks(assignee="ana")
    await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
    return dict(view)


async def test_versions_are_deployed_once_and_a_changed_definition_needs_a_new_version(store_url: str) -> None:
    async with runtime(store_url) as rt:
        Calls().register(rt, "activate")
        first = await rt.processes.deploy(onboarding(1))
        assert (first["name"], first["version"], first["weight"]) == ("onboarding", 1, 100.0)
        assert (await rt.processes.deploy(onboarding(1)))["design_id"] == first["design_id"]  # same definition: no-op
        before = await table_dump(rt)
        with pytest.raises(ProcessVersionConflictError) as caught:
            await rt.processes.deploy(onboarding(1, task_id="sign"))
        assert "deploy it as version 2" in str(caught.value)
        assert await table_dump(rt) == before
        with pytest.raises(UnknownProcessError):
            await rt.processes.start("no_such_process", "k")


async def test_a_version_an_older_release_deployed_is_the_same_definition_when_deployed_again_after_an_upgrade(
    durable_url: str,
) -> None:
    """An application deploys its processes each time it starts (as the scaffold's run() does). After an upgrade
    that added spec fields with defaults (here those added since 3 December: ``sensitive``, ``intents``,
    ``evaluation``, a service task's ``on_circuit_open``), the same definition's digest differs from the one the
    older release stored, and its deploy was refused: "version 1 of process 'onboarding' is already deployed with
    a different definition; deploy it as version 2". The stored definition, read as today's spec (as its
    instances run it), is compared too; a definition that really differs is still refused."""
    clock = virtual_clock()
    async with runtime(durable_url, clock) as rt:
        onboarding_agents(rt)
        deployed = await rt.processes.deploy(onboarding(1))
        waiting = await rt.processes.start("onboarding", "cust-1")
        # What the release of 3 December stored: the definition without the fields added since, and its digest.
        [row] = await rt.store.backend.read(
            select(journey_designs.c.spec).where(journey_designs.c.journey_id == deployed["design_id"]), {}
        )
        older = {k: v for k, v in dict(row["spec"]).items() if k not in ("sensitive", "intents", "evaluation")}
        older["elements"] = [
            {k: v for k, v in element.items() if k != "on_circuit_open"} for element in older["elements"]
        ]
        older_digest = hashlib.sha256(json.dumps(older, sort_keys=True).encode()).hexdigest()
        async with rt.store.engine.begin() as conn:
            await conn.execute(
                update(journey_designs).where(journey_designs.c.journey_id == deployed["design_id"]).values(spec=older)
            )
            await conn.execute(update(process_deployments).values(digest=older_digest))

    async with runtime(durable_url, clock) as rt:  # the upgraded application starts, and deploys as it always did
        onboarding_agents(rt)
        again = await rt.processes.deploy(onboarding(1))
        assert (again["version"], again["design_id"]) == (1, deployed["design_id"])
        with pytest.raises(ProcessVersionConflictError):
            await rt.processes.deploy(onboarding(1, task_id="sign"))
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
        assert waiting_elements(await rt.processes.status(waiting["instance_id"])) == ["trial"]


async def test_v1_instances_waiting_at_a_user_task_and_a_timer_finish_on_v1_after_v2_is_deployed(
    store_url: str,
) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        onboarding_agents(rt)
        await rt.processes.deploy(onboarding(1))
        at_task = await rt.processes.start("onboarding", "cust-1")
        at_timer = await rt.processes.start("onboarding", "cust-2")
        tasks = {t["instance_id"]: t["task_id"] for t in await rt.processes.inbox.list_tasks(assignee="ana")}
        await rt.processes.inbox.complete(tasks[at_timer["instance_id"]], user="ana", payload={})
        assert waiting_elements(await rt.processes.status(at_timer["instance_id"])) == ["trial"]

        v2 = await rt.processes.deploy(onboarding(2, extra_step=True))
        assert v2["weight"] == 100.0
        fresh = await rt.processes.start("onboarding", "cust-3")
        assert (fresh["version"], at_task["version"]) == (2, 1)

        await rt.processes.inbox.complete(tasks[at_task["instance_id"]], user="ana", payload={})
        [fresh_task] = [
            t for t in await rt.processes.inbox.list_tasks(assignee="ana") if t["instance_id"] == fresh["instance_id"]
        ]
        await rt.processes.inbox.complete(fresh_task["task_id"], user="ana", payload={})
        clock.advance(timedelta(days=7))
        report = await rt.processes.scheduler.run_due()
        assert report.resumed == 3

        for view, version, path in (
            (at_task, 1, ["activate"]),
            (at_timer, 1, ["activate"]),
            (fresh, 2, ["activate", "welcome_call"]),
        ):
            done = await rt.processes.status(view["instance_id"])
            assert (done["status"], done["version"]) == ("completed", version)
            steps = [e.step for e in await rt.processes.history(view["instance_id"]) if e.type == "task.completed"]
            assert steps == path


async def test_rollout_weights_route_new_instances_sticky_by_business_key(store_url: str) -> None:
    async with runtime(store_url) as rt:
        Calls().register(rt, "activate")
        Calls().register(rt, "welcome_call")
        await rt.processes.deploy(onboarding(1))
        await rt.processes.deploy(onboarding(2, extra_step=True), weight=10)
        assert await rt.processes.rollout("onboarding") == [
            {"version": 2, "weight": 10.0, "variant": None},
            {"version": 1, "weight": 90.0, "variant": None},
        ]
        keys = [f"customer-{i}" for i in range(2000)]

        async def on_v2() -> set[str]:
            rollout = await rt.processes.rollout("onboarding")
            chosen = {k for k in keys if choose("onboarding", k, rollout)["version"] == 2}
            for key in keys[:20]:  # the runtime's own routing agrees
                assert ((await rt.processes.route("onboarding", key))["version"] == 2) == (key in chosen)
            return chosen

        at_10 = await on_v2()
        assert 150 < len(at_10) < 250
        assert await on_v2() == at_10  # the same key, the same version
        await rt.processes.set_rollout("onboarding", {1: 50, 2: 50})
        at_50 = await on_v2()
        assert 900 < len(at_50) < 1100 and at_10 <= at_50  # nobody moves back to v1 as v2 grows
        await rt.processes.set_rollout("onboarding", {2: 100})
        assert await on_v2() == set(keys)

        await rt.processes.set_rollout("onboarding", {1: 50, 2: 50})
        for key in keys[:6]:
            view = await rt.processes.start("onboarding", key)
            assert view["version"] == (2 if key in at_50 else 1)

        before = await table_dump(rt)
        with pytest.raises(RolloutError) as caught:
            await rt.processes.set_rollout("onboarding", {1: 50, 2: 40})
        assert "sum to 90" in str(caught.value)
        with pytest.raises(RolloutError):
            await rt.processes.set_rollout("onboarding", {1: 50, 3: 50})
        assert await table_dump(rt) == before


async def test_a_start_reads_its_rollout_in_one_statement_off_sqlalchemy_on_postgres(store_url: str) -> None:
    # Every start reads its process's rollout: on PostgreSQL one prepared statement on the pool, not a SQLAlchemy
    # connection's BEGIN, SELECT and ROLLBACK (three round trips per start).
    async with runtime(store_url) as rt:
        await rt.processes.deploy(linear("plain", {"type": "timer", "id": "wait", "timer": {"duration": "PT1H"}}))
        through_sqlalchemy: list[str] = []

        def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
            through_sqlalchemy.append(statement)

        event.listen(rt.store.engine.sync_engine, "after_cursor_execute", seen)
        try:
            assert await rt.processes.rollout("plain") == [{"version": 1, "weight": 100.0, "variant": None}]
            assert await rt.processes.deployments.rollout("nothing deployed") == []
        finally:
            event.remove(rt.store.engine.sync_engine, "after_cursor_execute", seen)
        if store_url.startswith("postgresql"):
            assert not [s for s in through_sqlalchemy if "process_rollouts" in s]


async def test_a_burst_of_starts_shares_rollout_reads_and_each_routes_by_the_rollout_as_it_asked(
    durable_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every start read its process's rollout, a round trip each on PostgreSQL: four starts, four reads. The starts
    that ask while a read is under way now share the next one; none answers from a read sent before it asked, so a
    rollout another process changed meanwhile routes them (two runtimes on one database)."""
    wait = {"type": "timer", "id": "wait", "timer": {"duration": "PT1H"}}
    async with runtime(durable_url) as one, runtime(durable_url) as two:
        await one.processes.deploy(linear("plain", wait))
        await one.processes.deploy(linear("plain", wait, version=2), weight=0)
        assert [e["version"] for e in await two.processes.rollout("plain") if e["weight"]] == [1]
        deployments = two.processes.deployments
        backend, rollout, read = deployments._backend, deployments.rollout, deployments._backend.read
        sent, release = asyncio.Event(), asyncio.Event()
        reads, asked = 0, 0

        async def held(statement: Any, params: Any = None) -> Any:
            nonlocal reads
            rows = await read(statement, params)
            if statement is deployments_module._ROLLOUT:
                reads += 1
                if reads == 1:  # the first start's read has answered (v1 only): held on its way back
                    sent.set()
                    await release.wait()
            return rows

        async def asking(name: str) -> list[dict[str, Any]]:
            nonlocal asked
            asked += 1
            return await rollout(name)

        monkeypatch.setattr(backend, "read", held)
        monkeypatch.setattr(deployments, "rollout", asking)
        first = asyncio.create_task(two.processes.start("plain", "k-0"))
        await asyncio.wait_for(sent.wait(), 10)
        await one.processes.set_rollout("plain", {2: 100})  # committed by another process before the next ask
        later = [asyncio.create_task(two.processes.start("plain", f"k-{i}")) for i in range(1, 4)]
        while asked < 4:  # noqa: ASYNC110 (the starts' way to the rollout: no event tells)
            await asyncio.sleep(0.01)
        release.set()
        views = await asyncio.gather(first, *later)
    assert [view["version"] for view in views] == [1, 2, 2, 2]
    assert reads == 2  # the first start's, and one the three later starts shared


async def test_ab_variants_are_recorded_on_each_instance(store_url: str) -> None:
    async with runtime(store_url) as rt:
        Calls().register(rt, "activate")
        Calls().register(rt, "welcome_call")
        await rt.processes.deploy(onboarding(1))
        await rt.processes.deploy(onboarding(2, extra_step=True))
        await rt.processes.ab_test("onboarding", {"A": (1, 50), "B": (2, 50)})
        seen: dict[str, set[int]] = {"A": set(), "B": set()}
        for i in range(12):
            view = await rt.processes.start("onboarding", f"ab-{i}")
            seen[view["variant"]].add(view["version"])
            started = (await rt.processes.history(view["instance_id"]))[0]
            assert started.payload["variant"] == view["variant"]
        assert seen == {"A": {1}, "B": {2}}


async def test_a_migration_plan_moves_a_waiting_instance_and_is_refused_without_a_mapping(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = onboarding_agents(rt)
        await rt.processes.deploy(onboarding(1))
        view = await rt.processes.start("onboarding", "cust-1")
        await rt.processes.deploy(onboarding(2, extra_step=True, task_id="sign_contract"))
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")

        before = await table_dump(rt)
        with pytest.raises(MigrationRefusedError) as caught:
            await rt.processes.migrate(view["instance_id"], to_version=2)
        assert any(
            "waiting node 'approve' has no mapping" in p and "add {'approve':" in p for p in caught.value.problems
        )
        with pytest.raises(MigrationRefusedError) as wrong_kind:
            await rt.processes.migrate(view["instance_id"], to_version=2, mapping={"approve": "trial"})
        assert any("is a user_task but its mapping 'trial' is a timer" in p for p in wrong_kind.value.problems)
        assert await table_dump(rt) == before

        moved = await rt.processes.migrate(view["instance_id"], to_version=2, mapping={"approve": "sign_contract"})
        assert moved["version"] == 2 and waiting_elements(moved) == ["sign_contract"]
        assert moved["waiting"][0]["wait_id"] == task["task_id"]  # the same task, now under the new element
        [same] = await rt.processes.inbox.list_tasks(assignee="ana")
        assert (same["task_id"], same["element"]) == (task["task_id"], "sign_contract")
        migrated = [e for e in await rt.processes.history(view["instance_id"]) if e.type == "process.migrated"]
        assert migrated[0].payload["mapping"] == {"approve": "sign_contract"}

        await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
        clock.advance(timedelta(days=7))
        await rt.processes.scheduler.run_due()
        done = await rt.processes.status(view["instance_id"])
        assert done["status"] == "completed" and calls.intents() == ["activate", "welcome_call"]


def reserving(version: int, *, undo: bool) -> dict[str, Any]:
    """reserve (undone by release, when ``undo``) → ana approves → ship."""
    reserve: dict[str, Any] = {"type": "service_task", "id": "reserve", "agent": "reserve"}
    if undo:
        reserve["compensation"] = "release"
    ship = {"type": "service_task", "id": "ship", "agent": "ship"}
    return linear("reserving", reserve, user_task("approve"), ship, version=version)


async def test_a_migration_that_would_drop_the_undo_of_a_completed_task_is_refused(store_url: str) -> None:
    """An instance of v1 had reserved (its undo: release) and waited for ana's approval when it was migrated to v2,
    which declares no compensation. Then ship failed: the instance stood failed with nothing compensated and release
    was never called, though v1 would have undone the reservation (and a v2 with any compensation would have called
    release too, from the handler the log keeps). The migration is now refused, naming the task and its handler,
    and nothing changes; to a version that compensates it goes through, and a failure then undoes the reservation."""
    async with runtime(store_url) as rt:
        calls = Calls()
        for intent in ("reserve", "release"):
            calls.register(rt, intent, {"done": intent})
        rt.agents.register("ship", calls.failing("ship"), replace=True)
        await rt.processes.deploy(reserving(1, undo=True))
        view = await rt.processes.start("reserving", "order-1")
        await rt.processes.deploy(reserving(2, undo=False))
        before = await table_dump(rt)
        with pytest.raises(MigrationRefusedError, match=r"'reserve'.*'release'") as caught:
            await rt.processes.migrate(view["instance_id"], to_version=2)
        assert any("declares no compensation" in p for p in caught.value.problems), caught.value.problems
        assert await table_dump(rt) == before

        await rt.processes.deploy(reserving(3, undo=True))
        moved = await rt.processes.migrate(view["instance_id"], to_version=3)
        assert moved["version"] == 3
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
        done = await rt.processes.status(view["instance_id"])
        assert (done["status"], done["compensated"]) == ("compensated", ["reserve"])
        assert calls.intents() == ["reserve", "ship", "release"]


async def test_an_instance_waiting_at_a_timer_migrates_by_identity_and_keeps_its_due_time(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = onboarding_agents(rt)
        view = await waiting_at_the_trial_on_v1(rt)
        clock.advance(timedelta(days=3))
        await rt.processes.deploy(onboarding(2, extra_step=True))
        moved = await rt.processes.migrate(view["instance_id"], to_version=2)
        assert moved["version"] == 2 and waiting_elements(moved) == ["trial"]

        clock.advance(timedelta(days=4) - timedelta(seconds=1))
        assert (await rt.processes.scheduler.run_due()).fired == 0
        clock.advance(timedelta(seconds=1))
        assert (await rt.processes.scheduler.run_due()).resumed == 1
        assert calls.intents() == ["activate", "welcome_call"]


async def test_a_task_migrated_while_waiting_escalates_and_reminds_as_its_new_version_says(store_url: str) -> None:
    """v2 changes what the task's SLA does (reassign to the CFO's office, not page the lead) and whom its reminder
    tells. Migrated, the instance's timers kept their due times, as they should, but fired v1's escalation and
    reminder: the migration made to fix them changed nothing of what the timers did."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        for intent in ("page_lead", "remind_v1", "remind_v2"):
            calls.register(rt, intent)

        def version(number: int, on_timeout: dict[str, Any], notify: str) -> dict[str, Any]:
            task = user_task("approve", sla="PT2H", on_timeout=on_timeout)
            nudge = reminder(notify)
            spec = linear("expense", task, version=number)
            spec["elements"].append(nudge)  # a boundary event: no flows in or out
            return spec

        await rt.processes.deploy(version(1, {"action": "notify", "notify": "page_lead"}, "remind_v1"))
        view = await rt.processes.start("expense", "exp-1")
        await rt.processes.deploy(version(2, {"action": "reassign", "candidate_groups": ["cfo"]}, "remind_v2"))
        moved = await rt.processes.migrate(view["instance_id"], to_version=2)
        assert moved["version"] == 2
        due = {t.purpose: t.due_at for t in await rt.processes.services.timers.find(instance_id=view["instance_id"])}
        assert due == {"sla": clock.now() + timedelta(hours=2), "reminder": clock.now() + timedelta(hours=1)}

        for _ in range(2):
            clock.advance(timedelta(hours=1))
            await rt.processes.scheduler.run_due()
        assert calls.intents() == ["remind_v2", "remind_v2"]
        [task] = await rt.processes.inbox.list_tasks(instance_id=view["instance_id"])
        assert (task["escalation"], task["assignee"], task["candidate_groups"]) == ("reassign", None, ["cfo"])


async def test_deployment_rows_are_kept_in_a_bounded_cache_and_read_again_once_evicted(store_url: str) -> None:
    """The orchestrator's caches were plain dicts that grew with every version ever used; now the rows sit in
    one LRU of a fixed size, and specs and graphs come from the DesignBook (bounded too)."""
    async with runtime(store_url) as rt:
        Calls().register(rt, "activate")
        deployed = [await rt.processes.deploy(onboarding(v, task_id=f"approve_v{v}")) for v in (1, 2, 3, 4)]
        versions = DeployedVersions(rt.processes._designs, rt.processes.deployments, cache_size=3)
        for _round in range(2):
            for view in deployed:
                by_version = await versions.get("onboarding", view["version"])
                assert by_version is not None and by_version.design_id == view["design_id"]
                by_design = await versions.of_design(view["design_id"])
                assert by_design.version == view["version"]
                spec = await versions.spec_of(by_design)
                assert spec.version == view["version"] and spec.element(f"approve_v{view['version']}")
                assert await versions.graph_of(by_design) is rt.processes.graph_of(spec)
                assert len(versions._rows) <= 3
        assert await versions.get("onboarding", 9) is None


async def test_resuming_an_instance_neither_reads_nor_hashes_its_design_again(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with runtime(store_url) as rt:
        Calls().register(rt, "activate")
        await rt.processes.deploy(onboarding(1))
        view = await rt.processes.start("onboarding", "cust-1")
        await rt.processes.status(view["instance_id"])  # the design and its graph key are known from here on
        hashed: list[str] = []
        read: list[str] = []
        real_digest, real_read = designs_module.spec_digest, rt.store.index.get_design

        def spec_digest(spec: Any) -> str:
            hashed.append(spec.name)
            return real_digest(spec)

        monkeypatch.setattr(designs_module, "spec_digest", spec_digest)

        async def get_design(journey_id: str) -> Any:
            read.append(journey_id)
            return await real_read(journey_id)

        monkeypatch.setattr(rt.store.index, "get_design", get_design)
        for _ in range(3):
            await rt.processes.status(view["instance_id"])
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
        assert (hashed, read) == ([], [])


def _migrate_when_first_locked(
    rt: Any, monkeypatch: pytest.MonkeyPatch, instance_id: str, mapping: dict[str, str] | None = None
) -> list[BaseException]:
    """Make the next call that takes ``instance_id``'s lock meet a migration to v2 by another caller first:
    the migration runs (taking and releasing the lock itself) just before that call's own turn at the lock,
    as when a migration in another process wins the lock while a delivery is on its way to it. Returns
    what the migration raised (it is refused: the wait it would move has been answered)."""
    engine = rt.processes.engine
    real = engine.exclusive
    refused: list[BaseException] = []
    tried: list[bool] = []

    @asynccontextmanager
    async def exclusive(locked_id: str, **options: Any) -> AsyncIterator[None]:
        if locked_id == instance_id and not tried:
            tried.append(True)  # the migration's own calls go straight through
            with pytest.raises(ProcessStateError) as caught:
                await rt.processes.migrate(instance_id, to_version=2, mapping=mapping)
            refused.append(caught.value)
        async with real(locked_id, **options):
            yield

    monkeypatch.setattr(engine, "exclusive", exclusive)
    return refused


async def test_a_timer_fired_before_a_migration_resumes_its_instance_on_its_version_and_the_migration_is_refused(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timer fired (its wait answered) before the migration took the instance's lock: the migration is
    refused with nothing changed, and the continuation runs on v1, whose graph it loaded. Before, the migration
    went through and the continuation ran v1's graph on the migrated instance (v2's extra step never ran)."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = onboarding_agents(rt)
        view = await waiting_at_the_trial_on_v1(rt)
        await rt.processes.deploy(onboarding(2, extra_step=True))

        refused = _migrate_when_first_locked(rt, monkeypatch, view["instance_id"])
        clock.advance(timedelta(days=7))
        assert (await rt.processes.scheduler.run_due()).resumed == 1
        assert refused and "was answered" in str(refused[0]) and "migrate it once it waits again" in str(refused[0])
        done = await rt.processes.status(view["instance_id"])
        assert (done["version"], done["status"]) == (1, "completed")
        assert calls.intents() == ["activate"]
        history = [e.type for e in await rt.processes.history(view["instance_id"])]
        assert not [t for t in history if t.startswith("process.migrat")]


async def test_a_task_completed_before_a_migration_is_delivered_on_its_version_and_the_migration_is_refused(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the migration moved the answered task to ``sign_contract`` and the delivery, on v1's graph,
    found nothing parked at ``approve``: it marked the answer consumed and the instance waited for ever."""
    async with runtime(store_url) as rt:
        onboarding_agents(rt)
        await rt.processes.deploy(onboarding(1, task_id="approve"))
        view = await rt.processes.start("onboarding", "cust-1")
        await rt.processes.deploy(onboarding(2, extra_step=True, task_id="sign_contract"))
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")

        refused = _migrate_when_first_locked(rt, monkeypatch, view["instance_id"], {"approve": "sign_contract"})
        status = await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
        assert refused
        assert (status["version"], waiting_elements(status)) == (1, ["trial"])
        history = [e.type for e in await rt.processes.history(view["instance_id"])]
        assert not [t for t in history if t.startswith("process.migrat")]


@pytest.mark.parametrize("durability", ["async", "exit"])
@pytest.mark.parametrize("mapping", [None, {"approve": "sign_contract"}], ids=["same-element", "moved-element"])
async def test_a_task_completed_while_its_instance_migrates_rolls_the_migration_back(
    store_url: str, monkeypatch: pytest.MonkeyPatch, mapping: dict[str, str] | None, durability: Durability
) -> None:
    """The task is completed after the migration logged its intent and before it finished: the migration
    rolls back (its rewritten checkpoint too) and is refused, and the answer is delivered on v1. Also with the
    durability ``serve`` and ``worker`` run by default ("exit"), where the checkpoint the migration started from is
    the thread's first: its copy failed on SQLite (KeyError 'checkpoint_ns' from the saver)."""
    async with runtime(store_url, durability=durability) as rt:
        onboarding_agents(rt)
        await rt.processes.deploy(onboarding(1, task_id="approve"))
        view = await rt.processes.start("onboarding", "cust-1")
        task_id = "sign_contract" if mapping else "approve"
        await rt.processes.deploy(onboarding(2, extra_step=True, task_id=task_id))
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")

        rows = rt.processes.migrations.rows
        real_apply = rows.apply
        completing: list[asyncio.Task[dict[str, Any]]] = []

        async def apply(instance_id: str, step: Any, event: Any) -> bool:
            applied = await real_apply(instance_id, step, event)
            if step.status == "migrating" and not completing:  # step 1 committed: now the task is answered
                completing.append(
                    asyncio.create_task(rt.processes.inbox.complete(task["task_id"], user="ana", payload={}))
                )
                for _ in range(500):  # until its answer is committed (its delivery then waits for the lock)
                    if (await rt.processes.services.waits.resolution(task["task_id"])) is not None:
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("the task's answer was never committed")
            return applied

        monkeypatch.setattr(rows, "apply", apply)
        with pytest.raises(ProcessStateError, match="was answered"):
            await rt.processes.migrate(view["instance_id"], to_version=2, mapping=mapping)
        status = await completing[0]
        assert (status["version"], status["status"], waiting_elements(status)) == (1, "in_progress", ["trial"])
        history = [e.type for e in await rt.processes.history(view["instance_id"])]
        assert "process.migrating" in history and "process.migration_rolled_back" in history
        assert "process.migrated" not in history


async def test_two_tenants_deploying_one_new_name_at_once_on_two_processes_never_both_own_it(durable_url: str) -> None:
    """The name's owner was checked before the deploy's transaction: ana (acme) deploying v1 of a new name while eve
    (initech) deployed v2 of it, through two processes on one database, often both succeeded, and ana's next
    instances then ran eve's definition (v2 took the rollout). The owner is now read in the transaction that adds
    the version, after it has written the name's rollout row, which a concurrent first deploy writes too."""

    def spec(name: str, version: int, who: str) -> dict[str, Any]:
        return {**linear(name, version=version), "description": who}

    async def deploy(rt: Any, owner: Owner, body: dict[str, Any]) -> str:
        with acting_as(owner):
            try:
                await rt.processes.deploy(body)
            except ProcessNameTakenError:
                return "refused"
            return "deployed"

    async with runtime(durable_url) as one, runtime(durable_url) as two:
        ana, eve = Owner("ana", "acme"), Owner("eve", "initech")
        for n in range(12):
            name = f"claims_{n}"
            outcomes = await asyncio.gather(
                deploy(one, ana, spec(name, 1, "ana")), deploy(two, eve, spec(name, 2, "eve"))
            )
            assert sorted(outcomes) == ["deployed", "refused"], (name, outcomes)
            owner = ana if outcomes[0] == "deployed" else eve
            with acting_as(owner):
                view = await one.processes.start(name, "k")
            assert view["version"] == (1 if owner is ana else 2)
            assert [v["version"] for v in await one.processes.versions(name)] == [view["version"]]


@pytest.mark.parametrize("renamed", [False, True], ids=["same-element", "moved-element"])
async def test_a_migrated_task_takes_its_new_versions_title_and_response_schema(store_url: str, renamed: bool) -> None:
    """v2 asks more of the task's answer (an amount, which its flows read). Migrated, the task kept v1's title and
    schema in the inbox and in the instance's view, and an answer without the amount was taken on v2."""
    strict = {"type": "object", "required": ["amount"], "properties": {"amount": {"type": "number"}}}
    v2_task = "check_amount" if renamed else "approve"
    async with runtime(store_url) as rt:
        await rt.processes.deploy(linear("expense", user_task("approve")))
        view = await rt.processes.start("expense", "exp-1")
        await rt.processes.deploy(
            linear("expense", user_task(v2_task, title="Check the amount", response_schema=strict), version=2)
        )
        moved = await rt.processes.migrate(
            view["instance_id"], to_version=2, mapping={"approve": v2_task} if renamed else None
        )
        [wait] = moved["waiting"]
        assert (wait["element"], wait["title"], wait["response_schema"]) == (v2_task, "Check the amount", strict)
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        assert (task["element"], task["title"], task["response_schema"]) == (v2_task, "Check the amount", strict)
        assert (await rt.processes.status(view["instance_id"]))["waiting"] == [wait]

        with pytest.raises(ResumeValueError, match="amount"):
            await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
        done = await rt.processes.inbox.complete(task["task_id"], user="ana", payload={"amount": 12})
        assert (done["version"], done["status"], done["variables"]["amount"]) == (2, "completed", 12)


async def test_the_inbox_rebuilt_from_the_log_keeps_a_migrated_task_where_the_migration_moved_it(
    store_url: str,
) -> None:
    """The inbox is derived from the log (``journeys rebuild``), which did not read migrations: it 'corrected' a
    migrated task back to v1's element, where no node of v2 waits, and to v1's schema."""
    strict = {"type": "object", "required": ["amount"]}
    async with runtime(store_url) as rt:
        await rt.processes.deploy(linear("expense", user_task("approve")))
        view = await rt.processes.start("expense", "exp-1")
        await rt.processes.deploy(linear("expense", user_task("check", response_schema=strict), version=2))
        await rt.processes.migrate(view["instance_id"], to_version=2, mapping={"approve": "check"})
        [before] = await rt.processes.inbox.list_tasks(assignee="ana")

        rebuilt = await rebuild_inbox(rt.store.backend, rt.store.events)
        assert rebuilt.corrected == []
        await rt.store.backend.write([delete(user_tasks)], {})  # lost: the log has it whole
        rebuilt = await rebuild_inbox(rt.store.backend, rt.store.events)
        assert rebuilt.corrected == [before["task_id"]]
        [after] = await rt.processes.inbox.list_tasks(assignee="ana")
        assert (after["element"], after["title"], after["response_schema"]) == ("check", "check", strict)
        done = await rt.processes.inbox.complete(after["task_id"], user="ana", payload={"amount": 1})
        assert (done["version"], done["status"]) == (2, "completed")


async def test_a_failed_sla_migrated_escalates_as_its_new_version_says_once_retried_or_goes_with_its_sla(
    store_url: str,
) -> None:
    """v1's SLA pages a lead whose pager is down: an incident. Migrated to v2 (which pages the CFO), the retry
    re-armed the failed timer with v1's escalation and paged the broken pager again; migrated to v3 (no SLA), the
    incident stayed and its retry escalated as v1 said, though the instance no longer had an SLA."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        calls.register(rt, "page_cfo")
        rt.agents.register("page_lead", FailingAgent("page_lead", permanent=True))

        def version(number: int, notify: str | None) -> dict[str, Any]:
            if notify is None:
                return linear("expense", user_task("approve"), version=number)
            escalate = {"action": "notify", "notify": notify}
            return linear("expense", user_task("approve", sla="PT2H", on_timeout=escalate), version=number)

        await rt.processes.deploy(version(1, "page_lead"))
        first = await rt.processes.start("expense", "exp-1")
        second = await rt.processes.start("expense", "exp-2")
        clock.advance(timedelta(hours=2))
        await rt.processes.scheduler.run_due()
        for view in (first, second):
            [incident] = (await rt.processes.status(view["instance_id"]))["incidents"]
            assert (incident["purpose"], incident["intent"]) == ("sla", "page_lead")

        await rt.processes.deploy(version(2, "page_cfo"))
        await rt.processes.deploy(version(3, None))
        moved = await rt.processes.migrate(first["instance_id"], to_version=2)
        [incident] = moved["incidents"]  # still an incident: it failed, and nothing retried it yet
        await rt.processes.retry(first["instance_id"])
        await rt.processes.scheduler.run_due()
        assert calls.intents() == ["page_cfo"]
        assert "incidents" not in await rt.processes.status(first["instance_id"])

        without_sla = await rt.processes.migrate(second["instance_id"], to_version=3)
        assert "incidents" not in without_sla
        with pytest.raises(ProcessStateError, match="no failed node nor failed timer"):
            await rt.processes.retry(second["instance_id"])
        assert calls.intents() == ["page_cfo"]
        [task] = await rt.processes.inbox.list_tasks(instance_id=second["instance_id"])
        assert task["status"] == "open"


async def test_an_answer_read_before_a_migration_renamed_its_task_is_taken_by_the_renamed_task(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task was completed as the instance migrated: the completion read the task at v1's ``review``, the
    migration (its wait still unanswered) moved it to v2's ``check``, then the answer resolved the wait. Its
    option still named ``review``, which v2's ``check`` took for a boundary timer's way on and looked up in v2:
    the instance failed with IndexError (seen with two servers on PostgreSQL: 1 instance in 80)."""
    async with runtime(store_url) as rt:
        await rt.processes.deploy(linear("expense", user_task("review")))
        view = await rt.processes.start("expense", "exp-1")
        await rt.processes.deploy(linear("expense", user_task("check"), version=2))
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        inbox = rt.processes.inbox
        checked = inbox._check_assignments

        async def migrated_meanwhile(row: Any, result: Any) -> None:
            await checked(row, result)
            await rt.processes.migrate(view["instance_id"], to_version=2, mapping={"review": "check"})

        monkeypatch.setattr(inbox, "_check_assignments", migrated_meanwhile)
        done = await inbox.complete(task["task_id"], user="ana", payload={})
        assert (done["version"], done["status"], done["failure"]) == (2, "completed", None)
        assert [e.type for e in await rt.processes.history(view["instance_id"])][-2:] == [
            "wait.completed",
            "process.completed",
        ]


def payment(version: int, message: str, correlation: str, element: str, *, raced: bool) -> dict[str, Any]:
    """An order waiting at message event ``element``: alone, or (``raced``) after an event gateway against a timer."""
    name, waits = ("payment_race", "race") if raced else ("payment", element)
    elements: list[dict[str, Any]] = [
        {"type": "start", "id": "start"},
        {"type": "message", "id": element, "message": message, "correlation": correlation},
        {"type": "end", "id": "paid"},
    ]
    flows = [f"start -> {waits}", f"{element} -> paid"]
    if raced:
        elements += [
            {"type": "event_gateway", "id": "race"},
            {"type": "timer", "id": "too_late", "timer": {"duration": "P30D"}},
            {"type": "end", "id": "expired"},
        ]
        flows += [f"race -> {element}", "race -> too_late", "too_late -> expired"]
    return {"name": name, "version": version, "elements": elements, "flows": flows}


@pytest.mark.parametrize("raced", [False, True], ids=["message_event", "event_gateway"])
async def test_a_migrated_message_wait_takes_its_new_versions_message_name_and_correlation_key(
    store_url: str, raced: bool
) -> None:
    """v2 renames the message an instance waits for and correlates it on another variable: once migrated, the
    instance waits for v2's message under v2's key, and v1's message reaches it no more. Before, its
    subscription kept v1's name and key: v2's message was buffered and the instance waited for good, while v1's
    message still moved it on. A version whose correlation variable the instance lacks refuses the plan, saying so."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(payment(1, "payment_received", "order_id", "pay", raced=raced))
        variables = {"order_id": "o-1", "invoice": "inv-9"}
        view = await rt.processes.start("payment_race" if raced else "payment", "bk-1", variables=variables)
        target = "pay" if raced else "confirm"
        mapping = {} if raced else {"pay": "confirm"}
        await rt.processes.deploy(payment(2, "payment_confirmed", "customer_ref", target, raced=raced))
        before = await table_dump(rt)
        with pytest.raises(MigrationRefusedError, match="correlates on variable 'customer_ref', which is not set"):
            await rt.processes.migrate(view["instance_id"], to_version=2, mapping=mapping)
        assert await table_dump(rt) == before
        await rt.processes.deploy(payment(3, "payment_confirmed", "invoice", target, raced=raced))
        await rt.processes.migrate(view["instance_id"], to_version=3, mapping=mapping)
        old = await rt.processes.send_message("payment_received", "o-1", {"paid": True})
        assert old["correlated"] == [], old
        new = await rt.processes.send_message("payment_confirmed", "inv-9", {"paid": True})
        assert new["correlated"] == [view["instance_id"]], new
        done = await rt.processes.status(view["instance_id"])
        assert (done["status"], done["outcome"]) == ("completed", "paid")
