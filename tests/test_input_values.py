"""Values no store can keep, handed to the runtime in process (a notebook's calls, not HTTP), are refused up
front with :class:`InvalidInputError` naming where they are, and nothing is written, on every backend.

Before, each failed its own way: a ``datetime`` or ``bytes`` in a context as a bare ``TypeError`` from the event
log's JSON; NaN was kept by SQLite and refused by PostgreSQL (a driver error); an integer over 64 bits let the
journey run to completion and then raised a ``TypeError`` from the checkpoint serializer; a deeply nested
context raised ``RecursionError``; a NUL in a user id or a lone surrogate failed in the write.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any

import pytest

from checkpoints.values import ValueLimits, check_value
from graphs.errors import InvalidInputError
from graphs.runtime import JourneyRuntime
from tests.process_support import linear, runtime, table_dump, user_task


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


# (name, value, what the message says about it)
HOSTILE: list[tuple[str, Any, str]] = [
    ("datetime", datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC), "is of type datetime"),
    ("decimal", decimal.Decimal("1.5"), "is of type Decimal"),
    ("uuid", uuid.UUID(int=7), "is of type UUID"),
    ("bytes", b"\xff", "is of type bytes"),
    ("set", {1}, "is of type set"),
    ("nan", float("nan"), "numbers must be finite"),
    ("infinity", float("-inf"), "numbers must be finite"),
    ("big integer", 2**64, "integer out of range"),
    ("NUL", "a\x00b", "NUL character"),
    ("lone surrogate", "x\ud800", "lone surrogate"),
    ("integer key", {1: "a"}, "object keys must be strings"),
    ("deep", nested(65), "nests deeper than 64 levels"),
]
IDS = [name for name, _value, _said in HOSTILE]


@pytest.mark.parametrize(("value", "said"), [(v, s) for _n, v, s in HOSTILE], ids=IDS)
def test_check_value_names_what_and_where(value: Any, said: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        check_value({"items": [0, {"v": value}]}, "context")
    assert said in str(caught.value)
    location = str(caught.value.details["location"])
    assert location.startswith("context.items[1].v"), location
    assert caught.value.category == "invalid"


def test_check_value_takes_what_json_holds() -> None:
    # 64 levels in all: the value itself and the 63 of "d".
    fine = {"s": "héllo ✓", "n": [1, -(2**63), 2**64 - 1, 1.5, True, None], "t": ("a", "b"), "d": nested(63)}
    check_value(fine, "context")
    with pytest.raises(InvalidInputError, match="over the limit of 3"):
        check_value({"s": "abcd"}, "body", limits=ValueLimits(max_string_chars=3))


STEPS = {"journey_type": "steps", "steps": [{"step_id": "review", "mode": "user"}]}
ROOMS = {"areas": [{"area_id": "workshop", "completion": {"built": True}}]}
INVOICE = linear(
    "invoice",
    user_task("approve"),
    {"type": "message", "id": "paid", "message": "payment.received", "correlation": "invoice_no"},
)


@pytest.mark.parametrize(("value", "said"), [(v, s) for _n, v, s in HOSTILE], ids=IDS)
async def test_every_entry_point_refuses_it_and_writes_nothing(store_url: str, value: Any, said: str) -> None:
    async with runtime(store_url) as rt:
        design = await rt.structured.design_journey("steps", spec=STEPS)
        journey = design["journey_id"]
        await rt.structured.execute_journey(journey, "ana")  # waits at its human step
        session = (await rt.session.start_session("ana", ROOMS))["session_id"]
        await rt.processes.deploy(INVOICE)
        await rt.processes.start("invoice", "cust-1", {"invoice_no": "INV-1"})
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")

        calls = {
            "a journey's context": lambda: rt.structured.execute_journey(journey, "bob", {"v": value}),
            "a step's result": lambda: rt.structured.advance_journey_step(journey, "ana", {"v": value}),
            "a session's update": lambda: rt.session.update_area_state(session, "workshop", {"v": value}),
            "a process's variables": lambda: rt.processes.start("invoice", "cust-2", {"v": value}),
            "a message's payload": lambda: rt.processes.send_message("payment.received", "INV-1", {"v": value}),
            "a task's answer": lambda: rt.processes.inbox.complete(task["task_id"], user="ana", payload={"v": value}),
        }
        if isinstance(value, str):
            calls["a user id"] = lambda: rt.structured.execute_journey(journey, value)
        before = await table_dump(rt)
        for entry, call in calls.items():
            with pytest.raises(InvalidInputError) as caught:
                await call()
            assert said in str(caught.value), (entry, str(caught.value))
        assert await table_dump(rt) == before


async def test_a_user_id_that_is_not_a_short_string_is_refused(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey = (await rt.structured.design_journey("steps", spec=STEPS))["journey_id"]
        with pytest.raises(InvalidInputError, match="user id must be a non-empty string"):
            await rt.structured.execute_journey(journey, 42)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="over the limit of 100"):
            await rt.structured.execute_journey(journey, "u" * 101)  # PostgreSQL's column would refuse it
