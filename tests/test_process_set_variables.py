"""Setting variables on a running process instance, then retrying its failed element (Camunda's
``setVariables`` and resolving the incident): in-process on memory, SQLite and Postgres, and over HTTP with two
tenants."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest

from graphs import InvalidInputError
from graphs.errors import ProcessStateError
from server.settings import ApiKey
from tests.process_support import Calls, linear, runtime, user_task, waiting_elements

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


async def test_a_gateway_missing_its_variable_is_retried_once_the_variable_is_set(store_url: str) -> None:
    """The enum variable was never set: the gateway failed for good, and nothing could give the instance the
    variable. Now set_variables with retry sets it (checked against variables_schema) and the gateway decides."""
    async with runtime(store_url) as rt:
        calls = Calls()
        for intent in ("gold", "silver"):
            calls.register(rt, intent)
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
        calls = Calls()
        for intent in ("gold", "silver"):
            calls.register(rt, intent)
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
