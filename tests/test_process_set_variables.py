"""Setting variables on a running process instance, then retrying its failed element (Camunda's
``setVariables`` and resolving the incident): in-process on memory, SQLite and Postgres, and over HTTP with two
tenants."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from checkpoints.clock import VirtualClock
from graphs import InvalidInputError
from graphs.errors import ProcessStateError
from graphs.runtime import JourneyRuntime
from server.settings import ApiKey
from tests.process_support import Calls, linear, runtime, user_task, virtual_clock, waiting_elements

WORK = frozenset({"read", "runs", "journeys", "tasks"})
KEYS = {
    "key-ana": ApiKey("ana", WORK, tenant="acme"),
    "key-bob": ApiKey("bob", WORK, tenant="globex"),
}
TIERS = {"type": "object", "properties": {"tier": {"enum": ["gold", "silver"]}}}


def routing(*before: dict[str, Any]) -> dict[str, Any]:
    """start → before… → an exclusive gateway over the ``tier`` enum (both values covered, no default)."""
    elements = [
        {"type": "start", "id": "start"},
        *before,
        {"type": "exclusive_gateway", "id": "route"},
        {"type": "service_task", "id": "gold", "agent": "gold"},
        {"type": "service_task", "id": "silver", "agent": "silver"},
        {"type": "end", "id": "end"},
    ]
    ids = ["start", *(e["id"] for e in before), "route"]
    flows: list[Any] = [f"{a} -> {b}" for a, b in itertools.pairwise(ids)]
    flows += [
        {"source": "route", "target": tier, "when": {"field": "tier", "op": "==", "value": tier}}
        for tier in ("gold", "silver")
    ]
    flows += ["gold -> end", "silver -> end"]
    return {"name": "routing", "elements": elements, "flows": flows, "variables_schema": TIERS}


def tiers(rt: JourneyRuntime) -> Calls:
    """The agents of :func:`routing`'s ``gold`` and ``silver`` service tasks on ``rt``; their calls."""
    calls = Calls()
    for intent in ("gold", "silver"):
        calls.register(rt, intent)
    return calls


async def test_a_gateway_missing_its_variable_is_retried_once_the_variable_is_set(store_url: str) -> None:
    """The enum variable was never set: the gateway failed for good, and nothing could give the instance the
    variable. Now set_variables with retry sets it (checked against variables_schema) and the gateway decides."""
    async with runtime(store_url) as rt:
        calls = tiers(rt)
        await rt.processes.deploy(routing())
        view = await rt.processes.start("routing", "cust-1")
        instance_id = view["instance_id"]
        assert (view["status"], view["failed_element"]) == ("failed", "route")

        with pytest.raises(ProcessStateError) as caught:  # it would not run again on them: says what to do
            await rt.processes.set_variables(instance_id, {"tier": "silver"})
        assert "retry=True" in str(caught.value)
        with pytest.raises(InvalidInputError) as refused:
            await rt.processes.set_variables(instance_id, {"tier": "bronze"}, retry=True)
        assert "variables_schema at tier" in str(refused.value)
        for bad in ({}, {"business_key": "other"}, {"ratio": float("nan")}):
            with pytest.raises(InvalidInputError):
                await rt.processes.set_variables(instance_id, bad, retry=True)
        status = await rt.processes.status(instance_id)
        assert (status["status"], status["failed_element"]) == ("failed", "route")
        assert "tier" not in status["variables"]

        done = await rt.processes.set_variables(instance_id, {"tier": "silver"}, retry=True, by="ops")
        assert (done["status"], done["variables"]["tier"]) == ("completed", "silver")
        assert calls.intents() == ["silver"]
        [change] = await rt.processes.variable_history(instance_id, "tier")
        assert (change["value"], change["version"], change["event"], change["element"]) == (
            "silver",
            1,
            "variables.set",
            "route",
        )
        with pytest.raises(ProcessStateError):  # finished: nothing to set
            await rt.processes.set_variables(instance_id, {"tier": "gold"})


async def test_a_message_event_missing_its_correlation_variable_waits_once_it_is_set(store_url: str) -> None:
    """The instance failed when it reached the event, and its status named the graph node ``wait.arm`` rather
    than the element; the variable could not be given. Now the view names ``wait``, and the variable set with
    the retry arms the event, which the message then resolves."""
    async with runtime(store_url) as rt:
        spec = linear("orders", {"type": "message", "id": "wait", "message": "paid", "correlation": "order_id"})
        await rt.processes.deploy(spec)
        view = await rt.processes.start("orders", "cust-1")
        assert (view["status"], view["failed_element"]) == ("failed", "wait")
        retried = await rt.processes.set_variables(view["instance_id"], {"order_id": "o-1"}, retry=True)
        assert (retried["status"], waiting_elements(retried)) == ("in_progress", ["wait"])
        sent = await rt.processes.send_message("paid", "o-1", {})
        assert sent["correlated"] == [view["instance_id"]]
        assert (await rt.processes.status(view["instance_id"]))["status"] == "completed"
        [change] = await rt.processes.variable_history(view["instance_id"], "order_id")
        assert (change["event"], change["element"]) == ("variables.set", "wait")

        # A value no sender could name as its key (it waited for "{'id': 7}") fails the event the same way.
        shaped = await rt.processes.start("orders", "cust-2", {"order_id": {"id": 7}})
        assert (shaped["status"], shaped["failed_element"]) == ("failed", "wait")
        history = await rt.processes.history(shaped["instance_id"])
        assert "is not a correlation key" in history[-1].payload["error"]
        await rt.processes.set_variables(shaped["instance_id"], {"order_id": 7}, retry=True)
        assert (await rt.processes.send_message("paid", "7", {}))["correlated"] == [shaped["instance_id"]]


async def test_variables_set_on_a_waiting_instance_are_seen_after_the_wait(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = tiers(rt)
        await rt.processes.deploy(routing(user_task("review")))
        view = await rt.processes.start("routing", "cust-2", {"tier": "gold"})
        instance_id = view["instance_id"]
        set_now = await rt.processes.set_variables(instance_id, {"tier": "silver", "note": "upgraded"})
        assert (set_now["status"], waiting_elements(set_now)) == ("in_progress", ["review"])
        assert set_now["variables"]["tier"] == "silver"
        with pytest.raises(ProcessStateError):  # nothing failed
            await rt.processes.retry(instance_id, {"tier": "gold"})
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        done = await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
        assert (done["status"], done["variables"]["note"]) == ("completed", "upgraded")
        assert calls.intents() == ["silver"]
        history = await rt.processes.variable_history(instance_id, "tier")
        assert [(c["value"], c["version"]) for c in history] == [("gold", 1), ("silver", 2)]


async def test_variables_are_set_and_retried_over_http_within_the_callers_tenant(two_users_server: str) -> None:
    async with (
        httpx.AsyncClient(base_url=two_users_server, headers={"x-api-key": "key-ana"}) as ana,
        httpx.AsyncClient(base_url=two_users_server, headers={"x-api-key": "key-bob"}) as bob,
    ):
        spec = routing()  # the server has no agents of these intents: each tier ends at an end event of its own
        spec["elements"][2:] = [{"type": "end", "id": "gold"}, {"type": "end", "id": "silver"}]
        spec["flows"] = spec["flows"][:-2]
        deployed = await ana.post("/processes", json=spec)
        assert deployed.status_code == 200, deployed.text
        started = await ana.post("/processes/routing/instances", json={"business_key": "cust-1"})
        instance_id = started.json()["instance_id"]
        assert started.json()["status"] == "failed"
        path = f"/processes/instances/{instance_id}"

        assert (
            await bob.post(f"{path}/variables", json={"variables": {"tier": "gold"}, "retry": True})
        ).status_code == 404
        assert (await bob.post(f"{path}/retry")).status_code == 404
        refused = await ana.post(f"{path}/variables", json={"variables": {"tier": "bronze"}, "retry": True})
        assert refused.status_code == 422 and "variables_schema" in refused.text
        not_retried = await ana.post(f"{path}/variables", json={"variables": {"tier": "gold"}})
        assert not_retried.status_code == 409 and "retry" in not_retried.text
        retried = await ana.post(f"{path}/retry", json={"variables": {"tier": "gold"}})
        assert retried.status_code == 200, retried.text
        assert (retried.json()["status"], retried.json()["outcome"]) == ("completed", "gold")
        finished = await ana.post(f"{path}/variables", json={"variables": {"tier": "silver"}})
        assert finished.status_code == 409


class Crash(BaseException):
    """Stands for the process dying at this point: nothing in the runtime catches it."""


SetThenCrash = Callable[..., Awaitable[None]]


@pytest.fixture
def set_then_crash(monkeypatch: pytest.MonkeyPatch) -> SetThenCrash:
    """``set_then_crash(rt, instance_id, variables, retry=False)``: ``rt.processes.set_variables``, the process
    dying as it is about to apply the set to the thread, after ``variables.set`` is logged."""

    async def dying(*_args: Any, **_kwargs: Any) -> bool:
        raise Crash

    async def crash(rt: JourneyRuntime, instance_id: str, variables: dict[str, Any], *, retry: bool = False) -> None:
        with monkeypatch.context() as patched:
            patched.setattr(rt.processes, "run", dying)
            with pytest.raises(Crash):
                await rt.processes.set_variables(instance_id, variables, retry=retry, by="ops")

    return crash


async def reviewed_gold(rt: JourneyRuntime) -> str:
    """:func:`routing` with a ``review`` user task before its gateway, deployed on ``rt`` with both tiers' agents,
    and an instance of it started as gold, waiting for the review: its id."""
    tiers(rt)
    await rt.processes.deploy(routing(user_task("review")))
    return str((await rt.processes.start("routing", "cust-1", {"tier": "gold"}))["instance_id"])


async def after_crash(store_url: str, rt: JourneyRuntime, clock: VirtualClock) -> AsyncIterator[JourneyRuntime]:
    """The runtime to go on with after a crash: a new one on the durable stores (nothing of the dead process is
    left but the database), the same one in memory (whose store dies with it)."""
    if store_url == "memory://":
        yield rt
        return
    async with runtime(store_url, clock) as restarted:
        yield restarted


async def test_a_set_logged_before_a_crash_is_applied_not_left_false(
    store_url: str, set_then_crash: SetThenCrash
) -> None:
    """``variables.set`` was logged, then the process died before the thread took the values: the audit named a
    value the instance never had, and a later set reused its version. Now the instance takes the logged set at
    its next touch (here a status read, after a restart on the durable stores), and its history and its
    variables agree."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as first:
        instance_id = await reviewed_gold(first)
        await set_then_crash(first, instance_id, {"tier": "silver"})
        async for rt in after_crash(store_url, first, clock):
            calls = tiers(rt)
            status = await rt.processes.status(instance_id)
            history = await rt.processes.variable_history(instance_id, "tier")
            assert [(c["value"], c["version"]) for c in history] == [("gold", 1), ("silver", 2)]
            assert status["variables"]["tier"] == "silver"
            again = await rt.processes.set_variables(instance_id, {"tier": "gold", "note": "back"})
            assert again["variables"]["tier"] == "gold"
            history = await rt.processes.variable_history(instance_id, "tier")
            assert [(c["value"], c["version"]) for c in history] == [("gold", 1), ("silver", 2), ("gold", 3)]
            [task] = await rt.processes.inbox.list_tasks(assignee="ana")
            done = await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
            assert (done["status"], calls.intents()) == ("completed", ["gold"])


async def test_a_set_logged_before_a_crash_in_a_retry_is_applied_by_the_next_retry(
    store_url: str, set_then_crash: SetThenCrash
) -> None:
    """The retry logged its variables and died before the failed gateway ran on them: a plain retry now runs it
    on the logged values, and the history names them once."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as first:
        tiers(first)
        await first.processes.deploy(routing())
        instance_id = (await first.processes.start("routing", "cust-1"))["instance_id"]
        await set_then_crash(first, instance_id, {"tier": "silver"}, retry=True)
        async for rt in after_crash(store_url, first, clock):
            calls = tiers(rt)
            done = await rt.processes.retry(instance_id)
            assert (done["status"], done["variables"]["tier"]) == ("completed", "silver")
            assert calls.intents() == ["silver"]
            history = await rt.processes.variable_history(instance_id, "tier")
            assert [(c["value"], c["version"]) for c in history] == [("silver", 1)]


async def test_a_set_logged_before_a_crash_is_applied_before_the_next_delivery_moves_the_instance(
    store_url: str, set_then_crash: SetThenCrash
) -> None:
    """``variables.set`` was logged and the process died before the thread took it; the next thing to touch the
    instance was the completion of its task (no status read, set or retry first). The gateway after the task
    then decided on the old value (gold) and the instance completed with the logged set never applied. Now the
    delivery applies it first: the gateway decides on silver, and the variables and their history agree."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as first:
        instance_id = await reviewed_gold(first)
        [task] = await first.processes.inbox.list_tasks(assignee="ana")
        await set_then_crash(first, instance_id, {"tier": "silver"})
        async for rt in after_crash(store_url, first, clock):
            calls = tiers(rt)
            done = await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
            assert (done["status"], done["variables"]["tier"], calls.intents()) == ("completed", "silver", ["silver"])
            history = await rt.processes.variable_history(instance_id, "tier")
            assert [(c["value"], c["version"]) for c in history] == [("gold", 1), ("silver", 2)]


async def test_recovery_applies_a_set_a_crash_kept_from_the_thread(
    durable_url: str, set_then_crash: SetThenCrash
) -> None:
    """After a restart, recovery (``recover``, run by every worker and server at startup) applies a set whose
    process died before its thread took it, before it delivers anything: the thread holds the logged values
    without waiting for a status read, a set, a retry or a delivery."""
    clock = virtual_clock()
    async with runtime(durable_url, clock) as first:
        instance_id = await reviewed_gold(first)
        await set_then_crash(first, instance_id, {"tier": "silver"})
    async with runtime(durable_url, clock) as rt:
        tiers(rt)
        assert instance_id in await rt.recover()
        _instance, _deployment, _spec, graph = await rt.processes.loaded(instance_id)
        thread = await graph.aget_state(rt.engine.config(instance_id))
        assert thread.values["variables"]["tier"] == {"value": "silver", "version": 2}
        assert await rt.recover() == []  # applied once


async def test_a_set_logged_before_a_crash_is_applied_before_the_instance_migrates(
    store_url: str, set_then_crash: SetThenCrash
) -> None:
    """``variables.set`` was logged and the process died before the thread took it; the next thing to touch the
    instance was its migration to a new version (renaming the task it waits at). The migrated instance holds
    the logged values, decides on them, and its variables and their history agree."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as first:
        instance_id = await reviewed_gold(first)
        await set_then_crash(first, instance_id, {"tier": "silver"})
        async for rt in after_crash(store_url, first, clock):
            calls = tiers(rt)
            await rt.processes.deploy({**routing(user_task("check")), "version": 2})
            migrated = await rt.processes.migrate(instance_id, to_version=2, mapping={"review": "check"})
            assert (migrated["version"], migrated["variables"]["tier"]) == (2, "silver")
            _instance, _deployment, _spec, graph = await rt.processes.loaded(instance_id)
            thread = await graph.aget_state(rt.engine.config(instance_id))
            assert thread.values["variables"]["tier"] == {"value": "silver", "version": 2}
            [task] = await rt.processes.inbox.list_tasks(assignee="ana")
            done = await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
            assert (done["status"], done["variables"]["tier"], calls.intents()) == ("completed", "silver", ["silver"])
            history = await rt.processes.variable_history(instance_id, "tier")
            assert [(c["value"], c["version"]) for c in history] == [("gold", 1), ("silver", 2)]
