"""Regular expressions in the JSON Schemas users give (user task responses, process variables, step and
session schemas, unit-of-work tasks) run on a linear-time engine: a pattern such as ``^(a+)+$`` cannot
backtrack catastrophically and block the event loop, and a pattern that engine cannot run
(backreferences, lookaround) is refused when the schema is designed or deployed, naming it. Nor can a ``$ref``
chain (a bounded evaluation) or ``uniqueItems`` (compared in time linear in the array)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jsonschema
import pytest

from graphs import ResumeValueError, SpecError
from graphs.lifecycle.catalog import default_lifecycle_spec
from nodes import schemas
from server.app import create_app
from server.settings import Settings
from tests.process_support import linear, runtime, table_dump, user_task
from tests.server_support import serving

CATASTROPHIC = "^(a+)+$"
EVIL = "a" * 28 + "!"  # 12.6 s on a backtracking engine
BOUND_S = 1.0  # generous: the linear engine takes microseconds
# Across a server (its own thread, timed by the wall clock): a pattern 16 times EVIL's work (~200 s on a
# backtracking engine, which would hold the loop that long), against a bound wide enough for a loaded CI box.
EVIL_LONGER = "a" * 32 + "!"
SERVER_BOUND_S = 20.0
# A check made in this thread is timed by its CPU (time.thread_time): what a blow-up costs is CPU, and the wall
# clock of a loaded CI box (load 12: 4 s for a refusal that takes 0.1 s of CPU) failed the bound for nothing.
UNSUPPORTED = [r"^(a)\1$", r"^(?=a)\w+$", r"(?<!x)y", r"^(?!admin)"]


def judged(instance: Any, schema: dict[str, Any]) -> str | None:
    """The error message validating ``instance`` gives (None: valid), checked to come back quickly."""
    started = time.thread_time()
    try:
        schemas.validate(instance, schema)
        message = None
    except jsonschema.ValidationError as exc:
        message = exc.message
    assert time.thread_time() - started < BOUND_S, (instance, schema)
    return message


def test_catastrophic_patterns_are_judged_in_linear_time() -> None:
    pattern = {"type": "string", "pattern": CATASTROPHIC}
    assert judged(EVIL, pattern) == f"{EVIL!r} does not match {CATASTROPHIC!r}"
    assert judged("a" * 28, pattern) is None
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", **pattern}
    assert judged(EVIL, draft7) is not None and judged("aaa", draft7) is None

    keyed = {"type": "object", "patternProperties": {CATASTROPHIC: {"type": "integer"}}}
    assert judged({EVIL: "not checked: its name does not match"}, keyed) is None
    assert judged({"aaa": "x"}, keyed) == "'x' is not of type 'integer'"
    closed = {**keyed, "properties": {"id": {}}, "additionalProperties": False}
    assert judged({EVIL: 1}, closed) == f"{EVIL!r} does not match any of the regexes: {CATASTROPHIC!r}"
    assert judged({"aa": 1, "id": 2}, closed) is None
    extra = {**keyed, "additionalProperties": {"type": "string"}}
    assert judged({EVIL: 1}, extra) == "1 is not of type 'string'"
    assert judged({"aa": 1, "b": "s"}, extra) is None
    names = {"type": "object", "propertyNames": {"pattern": CATASTROPHIC}}
    assert judged({EVIL: 1}, names) is not None
    nested = {"type": "array", "items": {"$ref": "#/$defs/code"}, "$defs": {"code": pattern}}
    assert judged(["aa", EVIL], nested) is not None


def test_patterns_use_ecma_classes_the_linear_engine_knows() -> None:
    # \p{…} is ECMA-262 (with the u flag) and RE2, but not Python's re: it is accepted and works.
    letters = {"type": "string", "pattern": r"^\p{L}+$"}
    schemas.check_schema(letters)
    assert judged("héllo", letters) is None and judged("h3llo", letters) is not None


@pytest.mark.parametrize("pattern", UNSUPPORTED)
def test_a_pattern_the_linear_engine_cannot_run_is_refused_naming_it(pattern: str) -> None:
    for schema, where in (
        ({"type": "string", "pattern": pattern}, "$.pattern"),
        ({"type": "object", "properties": {"code": {"pattern": pattern}}}, "$.properties.code.pattern"),
        ({"type": "object", "patternProperties": {pattern: {}}}, "$.patternProperties"),
    ):
        with pytest.raises(jsonschema.SchemaError) as caught:
            schemas.check_schema(schema)
        message = caught.value.message
        assert f"pattern {pattern!r} at {where}" in message, message
        assert "backreferences and lookaround" in message
        with pytest.raises(jsonschema.SchemaError):
            schemas.validate("x", schema)


def test_unevaluated_properties_next_to_pattern_properties_is_refused() -> None:
    schema = {"allOf": [{"patternProperties": {"^a": {}}}], "unevaluatedProperties": False}
    with pytest.raises(jsonschema.SchemaError, match="unevaluatedProperties"):
        schemas.check_schema(schema)
    # Either one alone is fine, and a property merely named like a keyword is not mistaken for one.
    schemas.check_schema({"unevaluatedProperties": False, "properties": {"a": {}}})
    schemas.check_schema({"patternProperties": {"^a": {}}})
    schemas.check_schema({"properties": {"patternProperties": {}, "unevaluatedProperties": {}}})
    schemas.check_schema({"unevaluatedProperties": False, "enum": [{"patternProperties": 1}]})


def response(pattern: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": pattern}},
        "required": ["code"],
    }


async def test_a_user_task_with_a_catastrophic_pattern_is_completed_in_milliseconds(store_url: str) -> None:
    async with runtime(store_url) as rt:
        await rt.processes.deploy(linear("codes", user_task("enter_code", response_schema=response(CATASTROPHIC))))
        view = await rt.processes.start("codes", "c-1")
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        before = await table_dump(rt)
        started = time.thread_time()  # the pattern is judged in this thread
        with pytest.raises(ResumeValueError, match="does not match"):
            await rt.processes.inbox.complete(task["task_id"], user="ana", payload={"code": EVIL})
        assert time.thread_time() - started < BOUND_S
        assert await table_dump(rt) == before
        done = await rt.processes.inbox.complete(task["task_id"], user="ana", payload={"code": "aaaa"})
        assert done["status"] == "completed" and done["variables"]["code"] == "aaaa"
        assert (await rt.processes.status(view["instance_id"]))["status"] == "completed"


async def test_every_user_schema_with_an_unsupported_pattern_is_refused_at_design_time(store_url: str) -> None:
    pattern = r"^(\w)\1$"
    async with runtime(store_url) as rt:
        before = await table_dump(rt)
        with pytest.raises(SpecError) as process:
            await rt.processes.deploy(
                linear(
                    "codes",
                    user_task("enter_code", response_schema=response(pattern)),
                    variables_schema={"type": "object", "patternProperties": {"(?=x)": {}}},
                )
            )
        problems = process.value.problems
        assert any("user task 'enter_code' response_schema" in p and repr(pattern) in p for p in problems), problems
        assert any("variables_schema" in p and repr("(?=x)") in p for p in problems), problems
        assert await table_dump(rt) == before

        step = {"step_id": "enter", "input_schema": response(pattern)}
        with pytest.raises(SpecError) as structured:
            await rt.structured.design_journey("codes", spec={"journey_type": "codes", "steps": [step]})
        assert any("step 'enter'" in p and repr(pattern) in p for p in structured.value.problems)

        area = {"area_id": "codes", "state_schema": response(pattern)}
        with pytest.raises(SpecError) as session:
            await rt.session.start_session("ana", {"areas": [area]})
        assert any("'codes'" in p and repr(pattern) in p for p in session.value.problems)

        spec = default_lifecycle_spec().model_dump(mode="json")
        spec["sandbox"]["units"][0]["tasks"][0]["input_schema"] = response(pattern)
        with pytest.raises(SpecError) as lifecycle:
            await rt.lifecycle.design(spec)
        assert any("input_schema" in p and repr(pattern) in p for p in lifecycle.value.problems)


@pytest.mark.slow
async def test_the_server_answers_while_a_catastrophic_pattern_is_judged(sqlite_url: str) -> None:
    with serving(create_app(Settings(database_url=sqlite_url, auth=False))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            process = linear("codes", user_task("enter_code", response_schema=response(CATASTROPHIC)))
            assert (await http.post("/processes", json=process)).status_code == 200
            assert (await http.post("/processes/codes/instances", json={"business_key": "c-1"})).status_code == 200
            [task] = (await http.get("/tasks", params={"assignee": "ana"})).json()
            complete = f"/tasks/{task['task_id']}/complete"
            started = time.perf_counter()
            evil = asyncio.create_task(http.post(complete, json={"user": "ana", "payload": {"code": EVIL_LONGER}}))
            await asyncio.sleep(0.02)  # the completion is in the server now
            ok = await http.get("/ok")
            ok_after = time.perf_counter() - started
            refused = await evil
            assert ok.status_code == 200 and ok_after < SERVER_BOUND_S
            assert refused.status_code == 422 and refused.json()["code"] == "ResumeValueError"
            assert time.perf_counter() - started < SERVER_BOUND_S
            done = await http.post(complete, json={"user": "ana", "payload": {"code": "aaaa"}})
            assert done.status_code == 200 and done.json()["status"] == "completed"


def doubling(levels: int) -> dict[str, Any]:
    """A chain of ``levels`` $defs, each referring to the next twice: a few hundred bytes of schema that take
    2**levels evaluations (JSON Schema's "billion laughs"; 20 levels took 90 s of the event loop)."""
    defs: dict[str, Any] = {
        f"l{n}": {"allOf": [{"$ref": f"#/$defs/l{n + 1}"}, {"$ref": f"#/$defs/l{n + 1}"}]} for n in range(levels)
    }
    return {**defs, f"l{levels}": {"type": "string"}}


LOOPS = {
    "itself": {"$ref": "#"},
    "each other": {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
    "doubling at the root": {"$defs": doubling(30), "$ref": "#/$defs/l0"},
}
# Doubling only under a property: judged within the bound when the value has it.
UNDER_A_PROPERTY = {"type": "object", "$defs": doubling(30), "properties": {"code": {"$ref": "#/$defs/l0"}}}


@pytest.mark.parametrize("schema", LOOPS.values(), ids=LOOPS.keys())
def test_a_schema_that_loops_or_doubles_whatever_the_value_is_refused_when_designed(schema: dict[str, Any]) -> None:
    """A $ref back to itself crashed every validation with a RecursionError (a 500); doubling $defs held the
    event loop for minutes. Both are refused when the schema is checked, saying why."""
    started = time.thread_time()
    with pytest.raises(jsonschema.SchemaError, match=r"too many evaluations .* whatever the value"):
        schemas.check_schema(schema)
    assert time.thread_time() - started < BOUND_S


def test_a_schema_whose_cost_depends_on_the_value_is_judged_within_a_bound() -> None:
    schemas.check_schema(UNDER_A_PROPERTY)  # cheap on a value without the property
    assert judged({"other": 1}, UNDER_A_PROPERTY) is None
    assert judged({"code": "x"}, UNDER_A_PROPERTY) == schemas.TOO_COSTLY
    # Recursive schemas that move into the value at each level are judged as before, however deep the value.
    children = {"type": "array", "items": {"$ref": "#/$defs/node"}}
    tree = {"$defs": {"node": {"type": "object", "properties": {"children": children}}}, "$ref": "#/$defs/node"}
    deep: dict[str, Any] = {}
    for _ in range(60):
        deep = {"children": [deep, {}]}
    assert judged(deep, tree) is None
    assert judged({"children": [{"children": 3}]}, tree) == "3 is not of type 'array'"
    assert judged(list(range(20_000)), {"type": "array", "items": {"type": "integer"}}) is None


async def test_a_process_whose_schema_loops_is_refused_and_a_costly_answer_is_refused_at_once(store_url: str) -> None:
    async with runtime(store_url) as rt:
        before = await table_dump(rt)
        with pytest.raises(SpecError) as refused:
            await rt.processes.deploy(linear("loops", user_task("enter_code", response_schema=LOOPS["itself"])))
        assert any("enter_code" in p and "too many evaluations" in p for p in refused.value.problems)
        assert await table_dump(rt) == before

        await rt.processes.deploy(linear("codes", user_task("enter_code", response_schema=UNDER_A_PROPERTY)))
        view = await rt.processes.start("codes", "c-1")
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        before = await table_dump(rt)
        started = time.thread_time()  # the schema is judged in this thread
        with pytest.raises(ResumeValueError, match="too many evaluations"):
            await rt.processes.inbox.complete(task["task_id"], user="ana", payload={"code": "x"})
        assert time.thread_time() - started < BOUND_S
        assert await table_dump(rt) == before
        done = await rt.processes.inbox.complete(task["task_id"], user="ana", payload={"other": 1})
        assert done["status"] == "completed"
        assert (await rt.processes.status(view["instance_id"]))["status"] == "completed"


# Distinct objects: jsonschema's uniqueItems compares every pair of elements it cannot sort (objects, or numbers
# beside strings), in Python: 2,000 objects (25 KB of JSON) held the event loop 13 s, 10,000 (130 KB) 300 s.
DISTINCT_OBJECTS = [{"n": n} for n in range(3_000)]
UNSORTABLE = [n if n % 2 else str(n) for n in range(8_000)]
UNIQUE = {"type": "array", "uniqueItems": True}
# Elements equal or not as JSON Schema compares them: 1 and 1.0 are one number, true and 1 are not, objects are
# equal whatever their key order, at any depth.
UNIQUE_OR_NOT = [
    [1, 1.0],
    [1, True],
    [0, False, None, "", [], {}],
    [[1], [True]],
    [[1, [2]], [1.0, [2.0]]],
    [{"a": 1, "b": [True]}, {"b": [True], "a": 1.0}],
    [{"a": {"b": 1}}, {"a": {"b": False}}],
    [{"a": 1}, {"a": 1, "b": 2}],
    ["1", 1],
    [None, None],
    [[], []],
    [{}, {}],
    [2**53 + 1, float(2**53)],
    [{"a": [1, {"b": "x"}]}, [1, {"b": "x"}], {"a": [1, {"b": "x"}]}],
]


def test_unique_items_is_judged_in_linear_time() -> None:
    assert judged(DISTINCT_OBJECTS, UNIQUE) is None
    assert judged(UNSORTABLE, UNIQUE) is None
    assert judged([*DISTINCT_OBJECTS, {"n": 2_999.0}], UNIQUE) is not None
    assert judged([*UNSORTABLE, 7.0], UNIQUE) is not None
    for elements in UNIQUE_OR_NOT:
        expected = next(jsonschema.Draft202012Validator(UNIQUE).iter_errors(elements), None)
        assert judged(elements, UNIQUE) == (expected.message if expected else None), elements


def test_a_draft_4_enum_is_checked_in_linear_time() -> None:
    """Draft 4's meta-schema says an ``enum``'s values are unique: checking a deployed schema's long enum
    compared every pair of its values (5,000 numbers and strings took 3.9 s of the event loop)."""
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#"}
    started = time.thread_time()
    schemas.check_schema({**draft4, "enum": UNSORTABLE})
    with pytest.raises(jsonschema.SchemaError, match="non-unique elements"):
        schemas.check_schema({**draft4, "enum": [*UNSORTABLE, "0"]})
    assert time.thread_time() - started < BOUND_S


async def test_a_user_task_answer_under_unique_items_is_judged_in_milliseconds(store_url: str) -> None:
    codes = {"type": "object", "properties": {"codes": UNIQUE}, "required": ["codes"]}
    async with runtime(store_url) as rt:
        await rt.processes.deploy(linear("codes", user_task("enter_codes", response_schema=codes)))
        view = await rt.processes.start("codes", "c-1")
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        before = await table_dump(rt)
        started = time.thread_time()  # the schema is judged in this thread
        with pytest.raises(ResumeValueError, match="has non-unique elements"):
            await rt.processes.inbox.complete(
                task["task_id"], user="ana", payload={"codes": [*DISTINCT_OBJECTS, {}, {}]}
            )
        assert time.thread_time() - started < BOUND_S
        assert await table_dump(rt) == before
        done = await rt.processes.inbox.complete(task["task_id"], user="ana", payload={"codes": DISTINCT_OBJECTS})
        assert done["status"] == "completed" and len(done["variables"]["codes"]) == len(DISTINCT_OBJECTS)
        assert (await rt.processes.status(view["instance_id"]))["status"] == "completed"
