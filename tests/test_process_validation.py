"""Invalid processes are refused when deployed, every problem at once, each with how to fix it, and
nothing is written. Every test runs on memory, SQLite and Postgres."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from graphs import InvalidInputError, SpecError
from tests.process_support import Calls, linear, runtime, table_dump, user_task, virtual_clock


async def refused(store_url: str, spec: dict[str, Any]) -> list[str]:
    async with runtime(store_url) as rt:
        calls = Calls()
        for intent in ("work", "undo", "notify"):
            calls.register(rt, intent)
        before = await table_dump(rt)
        with pytest.raises(SpecError) as caught:
            await rt.processes.deploy(spec)
        assert await table_dump(rt) == before
        assert caught.value.category == "invalid"
        return caught.value.problems


def service(id: str) -> dict[str, Any]:
    return {"type": "service_task", "id": id, "agent": "work"}


async def test_a_join_without_a_fork_is_refused_with_a_fix(store_url: str) -> None:
    spec = {
        "name": "join_without_fork",
        "elements": [
            {"type": "start", "id": "start"},
            {"type": "exclusive_gateway", "id": "choose"},
            service("a"),
            service("b"),
            {"type": "parallel_gateway", "id": "join"},
            {"type": "end", "id": "end"},
        ],
        "flows": [
            "start -> choose",
            {"source": "choose", "target": "a", "when": {"field": "x", "op": "==", "value": 1}},
            {"source": "choose", "target": "b", "default": True},
            "a -> join",
            "b -> join",
            "join -> end",
        ],
    }
    problems = await refused(store_url, spec)
    assert any(
        "parallel join 'join'" in p and "no parallel fork split" in p and "exclusive gateway" in p for p in problems
    )


async def test_a_gateway_without_default_and_with_gaps_is_refused_but_an_exhaustive_one_is_not(store_url: str) -> None:
    flows = [
        "start -> check",
        "check -> route",
        {"source": "route", "target": "a", "when": {"field": "tier", "op": "==", "value": "gold"}},
        {"source": "route", "target": "b", "when": {"field": "tier", "op": "==", "value": "silver"}},
        "a -> end",
        "b -> end",
    ]
    elements = [
        {"type": "start", "id": "start"},
        service("check"),
        {"type": "exclusive_gateway", "id": "route"},
        service("a"),
        service("b"),
        {"type": "end", "id": "end"},
    ]
    problems = await refused(store_url, {"name": "gappy", "elements": elements, "flows": flows})
    assert any("no default flow" in p and "default: true" in p and "enum" in p for p in problems)

    # The same conditions over a declared enum that they cover completely: accepted.
    schema = {"type": "object", "properties": {"tier": {"enum": ["gold", "silver"]}}}
    async with runtime(store_url) as rt:
        Calls().register(rt, "work")
        deployed = await rt.processes.deploy(
            {"name": "exhaustive", "elements": elements, "flows": flows, "variables_schema": schema}
        )
        assert deployed["version"] == 1
    # A third value in the enum leaves a gap again.
    wider = {"type": "object", "properties": {"tier": {"enum": ["gold", "silver", "bronze"]}}}
    problems = await refused(
        store_url, {"name": "gap2", "elements": elements, "flows": flows, "variables_schema": wider}
    )
    assert any("route" in p and "do not cover every case" in p for p in problems)
    # A number split at a bound no number compares with: neither condition holds for any number, so every
    # instance failed at the gateway (NoFlowError) once deployed; an object bound was a TypeError (a 500).
    number = {"type": "object", "properties": {"tier": {"type": "number"}}}
    for bound in ("5", {"a": 1}, [1], True):
        split = [
            *flows[:2],
            {"source": "route", "target": "a", "when": {"field": "tier", "op": "<", "value": bound}},
            {"source": "route", "target": "b", "when": {"field": "tier", "op": ">=", "value": bound}},
            *flows[4:],
        ]
        spec = {"name": "split", "elements": elements, "flows": split, "variables_schema": number}
        problems = await refused(store_url, spec)
        assert any("route" in p and "do not cover every case" in p for p in problems), (bound, problems)
    # Enum values that are objects and arrays are covered by equal values, whatever their keys' order.
    shapes = {"type": "object", "properties": {"tier": {"enum": [{"a": 1, "b": [2]}, [1, {"c": 3}]]}}}
    covering = [
        *flows[:2],
        {"source": "route", "target": "a", "when": {"field": "tier", "op": "==", "value": {"b": [2], "a": 1}}},
        {"source": "route", "target": "b", "when": {"field": "tier", "op": "in", "value": [[1, {"c": 3}]]}},
        *flows[4:],
    ]
    async with runtime(store_url) as rt:
        Calls().register(rt, "work")
        spec = {"name": "shapes", "elements": elements, "flows": covering, "variables_schema": shapes}
        assert (await rt.processes.deploy(spec))["version"] == 1


async def test_unreachable_elements_and_dead_ends_are_refused(store_url: str) -> None:
    spec = linear("orphans", service("a"))
    spec["elements"] += [service("orphan"), service("stuck")]
    spec["flows"] += ["orphan -> end"]
    problems = await refused(store_url, spec)
    assert any("'orphan' is unreachable from any start event" in p and "remove it" in p for p in problems)
    assert any("'stuck' is unreachable" in p for p in problems)


async def test_many_problems_come_back_together_each_with_a_fix(store_url: str) -> None:
    spec = {
        "name": "broken",
        "elements": [
            {"type": "start", "id": "start"},
            {"type": "service_task", "id": "a", "agent": "nobody_registered"},
            user_task("approve", assignee=None, on_timeout={"action": "notify"}),
            {"type": "exclusive_gateway", "id": "route"},
            {"type": "end", "id": "end"},
        ],
        "flows": [
            "start -> a",
            "a -> approve",
            "approve -> route",
            {"source": "route", "target": "end", "when": {"field": "ok", "op": "==", "value": True}},
            {"source": "route", "target": "a", "default": True},
            {"source": "a", "target": "end"},
        ],
    }
    problems = await refused(store_url, spec)
    joined = "\n".join(problems)
    assert "needs an agent for intent 'nobody_registered'" in joined and "runtime.agents.register" in joined
    assert "neither an assignee nor candidate_groups" in joined
    assert "on_timeout but no sla" in joined
    assert "service_task 'a' needs exactly one outgoing flow (has 2)" in joined


async def test_structural_rules_of_forks_boundaries_and_event_gateways(store_url: str) -> None:
    spec = {
        "name": "structure",
        "elements": [
            {"type": "start", "id": "start"},
            {"type": "parallel_gateway", "id": "fork"},
            service("a"),
            service("b"),
            {"type": "parallel_gateway", "id": "join"},
            {"type": "event_gateway", "id": "race"},
            {"type": "timer", "id": "later", "timer": {"duration": "PT1H"}},
            service("not_an_event"),
            {"type": "boundary_timer", "id": "bt", "attached_to": "a", "timer": {"duration": "PT1H"}},
            {"type": "end", "id": "end"},
            {"type": "end", "id": "early_end"},
        ],
        "flows": [
            "start -> fork",
            "fork -> a",
            "fork -> b",
            "a -> join",
            "b -> early_end",
            "join -> race",
            "race -> later",
            "race -> not_an_event",
            "later -> end",
            "not_an_event -> end",
            "bt -> end",
        ],
    }
    problems = await refused(store_url, spec)
    joined = "\n".join(problems)
    assert "event gateway 'race' leads to service_task 'not_an_event'" in joined
    assert "boundary timer 'bt' is attached to 'a', which is not a user task" in joined


async def test_fork_branches_must_all_reach_one_join(store_url: str) -> None:
    spec = {
        "name": "leaky_fork",
        "elements": [
            {"type": "start", "id": "start"},
            {"type": "parallel_gateway", "id": "fork"},
            service("a"),
            service("b"),
            {"type": "parallel_gateway", "id": "join"},
            {"type": "end", "id": "end"},
            {"type": "end", "id": "early_end"},
        ],
        "flows": ["start -> fork", "fork -> a", "fork -> b", "a -> join", "b -> early_end", "join -> end"],
    }
    problems = await refused(store_url, spec)
    joined = "\n".join(problems)
    assert "reaches end event 'early_end' before any join" in joined


async def test_timer_expressions_are_read_at_design_time(store_url: str) -> None:
    spec = linear("bad_timers", {"type": "timer", "id": "wait", "timer": {"duration": "7 days"}})
    problems = await refused(store_url, spec)
    assert any("not an ISO 8601 duration" in p and "P7D" in p for p in problems)
    spec = linear("cycle_once", {"type": "timer", "id": "wait", "timer": {"cycle": "R5/PT10S"}})
    problems = await refused(store_url, spec)
    assert any("fires once, but its timer is a repeating cycle" in p for p in problems)
    spec = linear("bad_cron", {"type": "timer", "id": "wait", "timer": {"cron": "61 * * * *"}})
    problems = await refused(store_url, spec)
    assert any("is not a cron expression" in p for p in problems)


async def test_a_process_as_large_as_a_request_may_carry_is_checked_in_time_linear_in_its_size(store_url: str) -> None:
    """Checking a process looked elements and flows up by scanning them, once per element: a deploy of the 1 MiB a
    request may carry held the event loop for minutes, and the server answered nobody meanwhile."""
    services = [service(f"s{n}") for n in range(4000)]
    tasks = [user_task(f"u{n}") for n in range(1000)]
    boundaries = [
        {"type": "boundary_timer", "id": f"b{n}", "attached_to": f"u{n}", "timer": {"duration": "P1D"}}
        for n in range(1000)
    ]
    chain = ["start", *(e["id"] for e in services), *(t["id"] for t in tasks), "end"]
    flows = [f"{a} -> {b}" for a, b in itertools.pairwise(chain)]
    flows += [f"b{n} -> {f'u{n + 1}' if n < 999 else 'end'}" for n in range(1000)]
    elements = [{"type": "start", "id": "start"}, *services, *tasks, *boundaries, {"type": "end", "id": "end"}]
    async with runtime(store_url) as rt:
        Calls().register(rt, "work")
        began = time.perf_counter()
        deployed = await rt.processes.deploy({"name": "large", "elements": elements, "flows": flows})
        took = time.perf_counter() - began
    assert deployed["version"] == 1
    assert took < 10, f"deploying 7,000 elements took {took:.1f} s"  # about 1 s; checked by scanning, over a minute


async def test_an_element_named_as_the_compensation_step_is_refused_when_deployed(store_url: str) -> None:
    """An element ``compensate`` in a process with compensations was deployed, and then every start failed with
    LangGraph's "Node `compensate` already present." (a 500 over HTTP)."""
    undoable = {**service("compensate"), "compensation": "undo"}
    problems = await refused(store_url, linear("reserved", undoable))
    assert problems == [
        "element id 'compensate' is the name of the step that runs the process's compensations (its service tasks "
        "declare some); rename the element"
    ]
    async with runtime(store_url) as rt:  # without compensations the name is free
        Calls().register(rt, "work")
        await rt.processes.deploy(linear("free", service("compensate")))
        assert (await rt.processes.start("free", "k-1"))["status"] == "completed"


async def test_a_timer_reaching_past_the_year_9999_is_refused_with_a_fix(store_url: str) -> None:
    """Such timers escaped the checks as a bare OverflowError (a 500 over HTTP), or were accepted and broke
    the instance when armed (an SLA of 10**300 hours)."""
    fixes = {
        "PT99999999999999S": "is longer than 36525 days (a century); shorten it",
        "P9000Y": "is longer than 36525 days (a century); shorten it",
        "9999-12-31T23:59:59-01:00": "is out of range; write a year from 1 to 9999",
    }
    for timer in ({"duration": "PT99999999999999S"}, {"duration": "P9000Y"}, {"date": "9999-12-31T23:59:59-01:00"}):
        problems = await refused(store_url, linear("far", {"type": "timer", "id": "wait", "timer": timer}))
        [(kind, expression)] = timer.items()
        noun = "duration" if kind == "duration" else "date-time"
        assert problems == [f"elements.1.timer.timer: Value error, {noun} {expression!r} {fixes[expression]}"]
    for hours, problem in ((1e300, "longer than 36525 days (a century)"), (float("inf"), "be a finite number")):
        problems = await refused(store_url, linear("late", user_task("sign", sla_hours=hours)))
        assert len(problems) == 1 and problem in problems[0], problems


async def test_a_default_no_store_can_keep_is_refused_when_deployed(store_url: str) -> None:
    """A NaN among a process's variable defaults was deployed, and each instance then started with None in its
    place; with a datetime default every start was refused."""
    spec = linear("defaults", user_task("sign", sla="PT1H", on_timeout={"action": "complete", "default": {"at": {}}}))
    spec["variables"] = {"limits": {"ratio": float("nan")}}
    spec["elements"][1]["on_timeout"]["default"]["at"] = datetime(2026, 1, 5, tzinfo=UTC)
    problems = await refused(store_url, spec)
    assert problems == [
        "variables.limits.ratio is a number too large for a double, or NaN; numbers must be finite",
        "user task 'sign' on_timeout.default.at is of type datetime, which has no JSON form; use a string, number, "
        "boolean, null, list or object (a date as its ISO text, say)",
    ]


async def test_a_cycle_ticking_past_the_year_9999_is_refused_or_ends_there(store_url: str) -> None:
    """A cycle from an explicit start was checked on its interval only: one whose first tick fell after 9999 was
    deployed and broke the deploy when armed, and one whose later tick did broke the scheduler at that tick
    (year 10000 is out of range). Now a cycle whose promised ticks cannot all fall is refused with a fix, and an
    unbounded one that runs out of dates is spent at its last possible tick."""
    fixes = {
        "R/9999-06-01T00:00:00Z/P1Y": "its first tick falls after the year 9999",
        "R3/9990-01-01T00:00:00Z/P5Y": "its tick 3 (its last) falls after the year 9999",
    }
    for cycle, fix in fixes.items():
        problems = await refused(store_url, timer_start("far", {"cycle": cycle}))
        assert problems == [
            f"elements.0.start.timer: Value error, {cycle!r}: {fix}; start it earlier or repeat it fewer times"
        ]
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(timer_start("far", {"cycle": "R/9990-01-01T00:00:00Z/P5Y"}))
        clock.set(datetime(9995, 1, 1, 0, 1, tzinfo=UTC))
        assert (await rt.processes.scheduler.run_due()).fired == 1
        [timer] = await rt.processes.services.timers.find(purpose="start")
        assert (timer.status, timer.ticks) == ("fired", 1)
        clock.set(datetime(9999, 12, 31, tzinfo=UTC))
        assert (await rt.processes.scheduler.run_due()).fired == 0
        assert len(await rt.processes.instances("far")) == 1


def timer_start(name: str, timer: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "elements": [{"type": "start", "id": "tick", "timer": timer}, {"type": "end", "id": "end"}],
        "flows": ["tick -> end"],
    }


async def test_an_exclusive_gateway_with_one_conditional_flow_and_no_default_is_refused(store_url: str) -> None:
    """It was deployed, and every instance whose variables did not meet the condition failed at the gateway
    with NoFlowError, which no retry could fix."""
    spec = linear("one_way", service("check"), {"type": "exclusive_gateway", "id": "route"}, service("ship"))
    spec["flows"][2] = {"source": "route", "target": "ship", "when": {"field": "paid", "op": "==", "value": True}}
    problems = await refused(store_url, spec)
    assert problems == [
        "exclusive gateway 'route' has one flow, 'route -> ship', with a condition and no default flow: an instance "
        "for which the condition does not hold could go nowhere; add a flow marked `default: true` for that case, "
        "or drop the condition"
    ]
    async with runtime(store_url) as rt:
        Calls().register(rt, "work")
        spec["flows"][2] = {"source": "route", "target": "ship", "default": True}  # the fix it names
        await rt.processes.deploy(spec)
        assert (await rt.processes.start("one_way", "k-1"))["status"] == "completed"
        # A condition that holds for every value variables_schema allows needs no default.
        covered = linear("covered", service("check"), {"type": "exclusive_gateway", "id": "route"}, service("ship"))
        when = {"field": "paid", "op": "in", "value": [True, False]}
        covered["flows"][2] = {"source": "route", "target": "ship", "when": when}
        covered["variables_schema"] = {"type": "object", "properties": {"paid": {"type": "boolean"}}}
        await rt.processes.deploy(covered)


async def test_a_schema_referring_outside_itself_is_refused_and_nothing_is_fetched(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variables_schema whose $ref pointed at a URL or a file was deployed, and each start then had the server
    fetch it (urllib: any host the server can reach, or a local file) and fail with a bare referencing error (a
    500 over HTTP); a $ref to a $defs entry that does not exist failed the same way. Now each is refused at
    deploy, naming the reference, and a schema never fetches anything."""
    import urllib.request

    def no_network(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a schema's $ref was fetched")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    for ref, where in (
        ("http://10.255.255.1/x.json", "an address outside the schema"),
        ("file:///etc/passwd", "an address outside the schema"),
        ("#/$defs/nope", "nothing in the schema"),
    ):
        schema = {"type": "object", "properties": {"a": {"$ref": ref}}}
        problems = await refused(store_url, linear("refs", user_task("t", outputs=["a"]), variables_schema=schema))
        assert len(problems) == 1 and f"$ref {ref!r}" in problems[0] and where in problems[0], problems
    # References within the schema still work, to $defs and to an anchor.
    schema = {
        "type": "object",
        "$defs": {"tier": {"enum": ["gold", "silver"]}, "amount": {"$anchor": "amount", "type": "integer"}},
        "properties": {"tier": {"$ref": "#/$defs/tier"}, "amount": {"$ref": "#amount"}},
    }
    async with runtime(store_url) as rt:
        await rt.processes.deploy(linear("local_refs", user_task("t", outputs=["tier"]), variables_schema=schema))
        view = await rt.processes.start("local_refs", "k-1", {"tier": "gold", "amount": 3})
        assert view["status"] == "in_progress"
        with pytest.raises(InvalidInputError):
            await rt.processes.start("local_refs", "k-2", {"tier": "bronze"})


# A definition's names that its tables keep, one over its column's width at a time (the widths: 100 for an
# element id, 300 for a user task's title or, without one, its name, 200 for an assignee, a group, a message).
TOO_LONG = {
    "element id": ({"id": "a" * 101}, "id"),
    "title": ({"title": "t" * 301}, "title"),
    "name without a title": ({"title": "", "name": "n" * 301}, "name"),
    "assignee": ({"assignee": "u" * 201}, "assignee"),
    "candidate group": ({"assignee": None, "candidate_groups": ["finance", "g" * 201]}, "candidate_groups"),
    "escalation assignee": ({"sla": "PT1H", "on_timeout": {"action": "reassign", "assignee": "u" * 201}}, "assignee"),
}


async def test_names_longer_than_their_columns_are_refused_at_deploy_and_the_longest_allowed_run(
    store_url: str,
) -> None:
    """A user task titled with 400 characters (or an element id of 150, an assignee or a group of 250) was
    deployed, and every instance then failed on PostgreSQL when it reached the task, with no failure given
    (its column refused the value), while SQLite kept it. Such a definition is refused at deploy, naming
    the field; the longest names allowed run on every store."""
    async with runtime(store_url) as rt:
        before = await table_dump(rt)
        for case, (fields, field) in TOO_LONG.items():
            with pytest.raises(SpecError) as refused:
                await rt.processes.deploy(linear("long_names", {**user_task("approve"), **fields}))
            assert any(field in p and "at most" in p for p in refused.value.problems), (case, refused.value.problems)
        waits = {"type": "message", "id": "paid", "message": "m" * 201}
        with pytest.raises(SpecError, match="at most 200"):
            await rt.processes.deploy(linear("long_names", waits))
        assert await table_dump(rt) == before

        longest = user_task(
            "a" * 100, title="", name="n" * 300, assignee="u" * 200, candidate_groups=["g" * 200], sla="PT1H"
        )
        paid = {"type": "message", "id": "paid", "message": "m" * 200}
        Calls().register(rt, "notify")  # its SLA, without on_timeout, notifies the default agent
        await rt.processes.deploy(linear("long_names", longest, paid))
        view = await rt.processes.start("long_names", "k-1")
        assert (view["status"], [w["element"] for w in view["waiting"]]) == ("in_progress", ["a" * 100])
        [task] = await rt.processes.inbox.list_tasks(group="g" * 200)
        assert (task["title"], task["assignee"]) == ("n" * 300, "u" * 200)
        done = await rt.processes.inbox.complete(task["task_id"], user="u" * 200, payload={})
        assert [w["element"] for w in done["waiting"]] == ["paid"]
        await rt.processes.send_message("m" * 200, "k-1", {})
        assert (await rt.processes.status(view["instance_id"]))["status"] == "completed"
