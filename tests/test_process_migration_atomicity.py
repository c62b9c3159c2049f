"""A migration is never left half-applied (SPEC B6, "nothing half-applied").

It moves the thread's checkpoint and our rows, which no transaction spans, so a crash between the
two steps leaves the instance ``migrating`` with its plan logged. Whoever touches the instance next
(or ``recover()``, or a scheduler pass once the lease is up) completes the migration if the checkpoint
had moved, and rolls it back if it had not. A crash is injected as a ``BaseException`` that no handler
of the runtime catches, exactly where a killed process would stop. Memory, SQLite and Postgres.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from checkpoints.process.timers import DEFAULT_LEASE
from graphs.errors import MigrationInProgressError
from graphs.process import migration as process_migration
from graphs.process.orchestrator import ProcessOrchestrator
from graphs.runtime import JourneyRuntime
from tests.process_support import Calls, runtime, table_dump, user_task, virtual_clock, waiting_elements


class Crash(BaseException):
    """Stands for the process dying at this point: nothing in the runtime catches it."""


def onboarding(version: int, task_id: str) -> dict[str, Any]:
    return {
        "name": "onboarding",
        "version": version,
        "elements": [
            {"type": "start", "id": "start"},
            user_task(task_id),
            {"type": "timer", "id": "trial", "timer": {"duration": "P7D"}},
            {"type": "service_task", "id": "activate", "agent": "activate"},
            {"type": "end", "id": "end"},
        ],
        "flows": ["start -> " + task_id, f"{task_id} -> trial", "trial -> activate", "activate -> end"],
    }


def fail_once(
    monkeypatch: pytest.MonkeyPatch, step: str, error: BaseException, *, after: bool = False
) -> Callable[..., Awaitable[Any]]:
    """Make ``process_migration.<step>`` fail the first time it runs (before or after doing its work)."""
    real = getattr(process_migration, step)
    calls = 0

    async def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1 and not after:
            raise error
        done = await real(*args, **kwargs)
        if calls == 1:
            raise error
        return done

    monkeypatch.setattr(process_migration, step, failing)
    return failing


async def waiting_v1(rt: JourneyRuntime) -> str:
    Calls().register(rt, "activate")
    await rt.processes.deploy(onboarding(1, "approve"))
    view = await rt.processes.start("onboarding", "cust-1")
    await rt.processes.deploy(onboarding(2, "sign_contract"))
    return str(view["instance_id"])


async def row_status(rt: JourneyRuntime, instance_id: str) -> str:
    instance = await rt.store.index.get_instance(instance_id)
    assert instance is not None
    return instance.status


MIGRATION = ("process.migrating", "process.migrated", "process.migration_rolled_back")


async def event_types(rt: JourneyRuntime, instance_id: str) -> list[str]:
    return [e.type for e in await rt.processes.history(instance_id) if e.type.startswith("process.migrat")]


async def finish_onboarding(rt: JourneyRuntime, instance_id: str, clock: Any) -> dict[str, Any]:
    [task] = await rt.processes.inbox.list_tasks(assignee="ana")
    await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
    clock.advance(timedelta(days=7))
    await rt.processes.scheduler.run_due()
    return await rt.processes.status(instance_id)


async def test_a_crash_before_the_checkpoint_moves_is_rolled_back_by_the_next_call(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        instance_id = await waiting_v1(rt)
        before = await table_dump(rt)
        fail_once(monkeypatch, "_rewrite_checkpoint", Crash())
        with pytest.raises(Crash):
            await rt.processes.migrate(instance_id, to_version=2, mapping={"approve": "sign_contract"}, by="otto")
        assert await row_status(rt, instance_id) == "migrating"  # the intent is logged; nothing else moved

        view = await rt.processes.status(instance_id)  # the next call settles it first
        assert (view["version"], view["status"], waiting_elements(view)) == (1, "in_progress", ["approve"])
        assert await event_types(rt, instance_id) == ["process.migrating", "process.migration_rolled_back"]
        # Who migrated it, the rollback another call settled included.
        assert [e.payload["by"] for e in await rt.processes.history(instance_id) if e.type in MIGRATION] == [
            "otto",
            "otto",
        ]
        after = await table_dump(rt)
        for table in before:  # every row as it was, but for the two logged events and the instance's timestamp
            if table not in ("journey_events", "journey_instances", "process_waits"):
                assert after[table] == before[table], table
        # The wait too, but for the interrupt it names: the rollback's clean copy of the checkpoint parks the
        # thread anew, under a new interrupt id, which the wait node records (see WaitStore.parked).
        assert [row[:-1] for row in after["process_waits"]] == [row[:-1] for row in before["process_waits"]]
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        assert task["element"] == "approve"

        moved = await rt.processes.migrate(instance_id, to_version=2, mapping={"approve": "sign_contract"})
        assert (moved["version"], waiting_elements(moved)) == (2, ["sign_contract"])
        done = await finish_onboarding(rt, instance_id, clock)
        assert (done["status"], done["version"]) == ("completed", 2)


async def test_a_crash_while_rolling_back_is_rolled_back_again(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rollback writes a clean copy of the old checkpoint before it commits: a crash between the two
    must not make that copy look like the migration's own checkpoint."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        instance_id = await waiting_v1(rt)
        fail_once(monkeypatch, "_rewrite_checkpoint", Crash())
        with pytest.raises(Crash):
            await rt.processes.migrate(instance_id, to_version=2, mapping={"approve": "sign_contract"})
        fail_once(monkeypatch, "_commit", Crash())  # the rollback's commit dies
        with pytest.raises(Crash):
            await rt.processes.status(instance_id)
        assert await row_status(rt, instance_id) == "migrating"
        monkeypatch.undo()

        view = await rt.processes.status(instance_id)
        assert (view["version"], view["status"], waiting_elements(view)) == (1, "in_progress", ["approve"])
        assert await event_types(rt, instance_id) == ["process.migrating", "process.migration_rolled_back"]
        done = await finish_onboarding(rt, instance_id, clock)
        assert (done["status"], done["version"]) == ("completed", 1)


async def test_a_crash_inside_the_checkpoint_write_is_rolled_back_to_a_clean_wait(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The saver stores an update's pending writes before its checkpoint: dying between the two leaves the
    old checkpoint with writes of a move that never landed. The rollback resumes from a clean copy."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        instance_id = await waiting_v1(rt)
        saver = rt.store.saver

        async def no_checkpoint(*_args: Any, **_kwargs: Any) -> Any:
            raise Crash

        real_rewrite = process_migration._rewrite_checkpoint

        async def rewrite_dying_at_the_checkpoint(*args: Any, **kwargs: Any) -> None:
            with monkeypatch.context() as patch:
                patch.setattr(saver, "aput", no_checkpoint)
                await real_rewrite(*args, **kwargs)

        monkeypatch.setattr(process_migration, "_rewrite_checkpoint", rewrite_dying_at_the_checkpoint)
        with pytest.raises(Crash):
            await rt.processes.migrate(instance_id, to_version=2, mapping={"approve": "sign_contract"})
        monkeypatch.undo()

        view = await rt.processes.status(instance_id)
        assert (view["version"], view["status"], waiting_elements(view)) == (1, "in_progress", ["approve"])
        done = await finish_onboarding(rt, instance_id, clock)
        assert (done["status"], done["version"]) == ("completed", 1)


async def test_a_crash_after_the_checkpoint_moved_is_completed_by_the_next_call(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        instance_id = await waiting_v1(rt)
        fail_once(monkeypatch, "_finish", Crash())
        with pytest.raises(Crash):
            await rt.processes.migrate(instance_id, to_version=2, mapping={"approve": "sign_contract"})
        assert await row_status(rt, instance_id) == "migrating"
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        assert task["element"] == "approve"  # the checkpoint moved, the rows not yet

        view = await rt.processes.status(instance_id)
        assert (view["version"], view["status"], waiting_elements(view)) == (2, "in_progress", ["sign_contract"])
        assert view["waiting"][0]["wait_id"] == task["task_id"]  # the same task, now under the new element
        [moved_task] = await rt.processes.inbox.list_tasks(assignee="ana")
        assert moved_task["element"] == "sign_contract"
        assert await event_types(rt, instance_id) == ["process.migrating", "process.migrated"]
        done = await finish_onboarding(rt, instance_id, clock)
        assert (done["status"], done["version"]) == ("completed", 2)


async def test_an_error_between_the_steps_is_settled_by_the_failing_call_itself(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with runtime(store_url) as rt:
        instance_id = await waiting_v1(rt)
        fail_once(monkeypatch, "_rewrite_checkpoint", RuntimeError("saver unavailable"))
        with pytest.raises(RuntimeError, match="saver unavailable"):
            await rt.processes.migrate(instance_id, to_version=2, mapping={"approve": "sign_contract"})
        assert await row_status(rt, instance_id) == "in_progress"  # rolled back before the error surfaced
        view = await rt.processes.status(instance_id)
        assert (view["version"], waiting_elements(view)) == (1, ["approve"])

        fail_once(monkeypatch, "_finish", RuntimeError("database hiccup"))  # the checkpoint moved: complete it
        moved = await rt.processes.migrate(instance_id, to_version=2, mapping={"approve": "sign_contract"})
        assert (moved["version"], moved["status"], waiting_elements(moved)) == (2, "in_progress", ["sign_contract"])
        assert await event_types(rt, instance_id) == [
            "process.migrating",
            "process.migration_rolled_back",
            "process.migrating",
            "process.migrated",
        ]


async def test_another_process_leaves_a_migration_alone_until_its_lease_is_up(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        instance_id = await waiting_v1(rt)
        fail_once(monkeypatch, "_finish", Crash())
        with pytest.raises(Crash):
            await rt.processes.migrate(instance_id, to_version=2, mapping={"approve": "sign_contract"})

        other = ProcessOrchestrator(rt.processes._designs)  # another process on the same store
        with pytest.raises(MigrationInProgressError):  # it may still be running there
            await other.status(instance_id)
        await other.scheduler.run_due()  # a scheduler pass within the lease leaves it alone
        assert await row_status(rt, instance_id) == "migrating"
        clock.advance(DEFAULT_LEASE)
        await other.scheduler.run_due()  # past the lease: the process that started it has died
        view = await other.status(instance_id)
        assert (view["version"], view["status"], waiting_elements(view)) == (2, "in_progress", ["sign_contract"])


@pytest.mark.parametrize("crash_in", ["_rewrite_checkpoint", "_finish"])
async def test_recover_after_a_restart_settles_a_migration_the_crash_cut_short(
    durable_url: str, monkeypatch: pytest.MonkeyPatch, crash_in: str
) -> None:
    store_url = durable_url  # a restart needs a store that outlives its runtime
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        instance_id = await waiting_v1(rt)
        fail_once(monkeypatch, crash_in, Crash())
        with pytest.raises(Crash):
            await rt.processes.migrate(instance_id, to_version=2, mapping={"approve": "sign_contract"})
    monkeypatch.undo()
    async with runtime(store_url, clock) as rt:  # the next process, on the same store
        Calls().register(rt, "activate")
        assert instance_id in await rt.recover()
        assert await row_status(rt, instance_id) == "in_progress"
        view = await rt.processes.status(instance_id)
        expected = (1, ["approve"]) if crash_in == "_rewrite_checkpoint" else (2, ["sign_contract"])
        assert (view["version"], waiting_elements(view)) == expected
        done = await finish_onboarding(rt, instance_id, clock)
        assert (done["status"], done["version"]) == ("completed", expected[0])
