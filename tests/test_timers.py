"""Durable timers (SPEC B4, G1 timed): ISO 8601 and cron definitions, never early, catch-up after
downtime with the stated policy for missed cycle ticks, cancelled timers never fire, and two workers
never fire the same timer. Process tests run on memory, SQLite and Postgres, on a virtual clock."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from pydantic import ValidationError
from sqlalchemy import event

from checkpoints.clock import SystemClock
from checkpoints.process.timers import Timer
from checkpoints.schema.tables import process_timers, process_waits
from checkpoints.url import parse_store_url
from graphs.process.timers import MAX_ROUNDS, fire_due_timers
from graphs.runtime import JourneyRuntime
from nodes.timer import COUNTED_MISSED, TimerDefinition
from tests.process_support import T0, boundary_spec, linear, runtime, virtual_clock, waiting_elements
from tests.test_process_validation import refused

# --- definitions ------------------------------------------------------------------------------------


def test_iso_8601_and_cron_definitions_give_due_times_in_utc() -> None:
    assert TimerDefinition(duration="P7D").first_due(T0) == T0 + timedelta(days=7)
    assert TimerDefinition(duration="PT4H30M").first_due(T0) == T0 + timedelta(hours=4, minutes=30)
    assert TimerDefinition(duration="P1M").first_due(T0) == datetime(2026, 2, 5, 9, tzinfo=UTC)
    assert TimerDefinition(date="2026-03-01T09:00:00+01:00").first_due(T0) == datetime(2026, 3, 1, 8, tzinfo=UTC)
    cycle = TimerDefinition(cycle="R5/PT10S")
    assert cycle.repetitions == 5 and cycle.first_due(T0) == T0 + timedelta(seconds=10)
    anchored = TimerDefinition(cycle="R3/2026-02-01T00:00:00Z/PT1H")
    assert anchored.first_due(T0) == datetime(2026, 2, 1, 1, tzinfo=UTC)
    # "daily at 9am" in Paris is 08:00 UTC in winter and 07:00 UTC in summer.
    paris = TimerDefinition(cron="0 9 * * *", timezone="Europe/Paris")
    assert paris.first_due(T0) == datetime(2026, 1, 6, 8, tzinfo=UTC)
    assert paris.first_due(datetime(2026, 7, 1, tzinfo=UTC)) == datetime(2026, 7, 1, 7, tzinfo=UTC)


def test_missed_ticks_are_coalesced_or_fired_one_by_one_as_stated() -> None:
    coalesce = TimerDefinition(cycle="R5/PT10S")
    first = T0 + timedelta(seconds=10)
    # Tick 1 fires 35 s late: ticks 2 and 3 (due at +20 s and +30 s) were missed and are folded into it.
    assert coalesce.after_firing(T0, 1, first, T0 + timedelta(seconds=45)) == (T0 + timedelta(seconds=50), 3)
    assert coalesce.after_firing(T0, 1, first, first) == (T0 + timedelta(seconds=20), 0)
    assert coalesce.after_firing(T0, 5, T0 + timedelta(seconds=50), T0 + timedelta(seconds=50)) == (None, 0)
    fire_all = TimerDefinition(cycle="R5/PT10S", missed="fire_all")
    assert fire_all.after_firing(T0, 1, first, T0 + timedelta(seconds=45)) == (T0 + timedelta(seconds=20), 0)
    unbounded = TimerDefinition(cycle="R/PT1H")
    assert unbounded.after_firing(T0, 100, T0 + timedelta(hours=100), T0 + timedelta(hours=100)) == (
        T0 + timedelta(hours=101),
        0,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"duration": "7 days"}, "not an ISO 8601 duration"),
        ({"duration": "-P1D"}, "must be positive"),
        ({"date": "2026-01-01T00:00:00"}, "has no offset"),
        ({"cycle": "R0/PT1S"}, "repeats zero times"),
        ({"cycle": "every 5s"}, "not an ISO 8601 repeating interval"),
        ({"cron": "0 25 * * *"}, "not a cron expression"),
        # croniter reads a sixth field as seconds: these fired every second (a Quartz 'every five minutes' too)
        ({"cron": "* * * * * *"}, "would fire every second"),
        ({"cron": "0 */5 * * * *"}, "Quartz or Spring schedule (seconds first) is written '*/5 * * * * 0'"),
        ({"cron": "0 0 12 ? * ? 2027"}, "is written '0 12 * * * 0 2027'"),
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "unknown timezone"),
        ({}, "exactly one of duration, date, cycle or cron"),
    ],
)
def test_unreadable_definitions_are_refused_with_a_fix(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TimerDefinition(**fields)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"duration": "P1000000Y"}, "longer than 36525 days"),  # was a bare ValueError: year out of range
        ({"duration": "PT100000000000000000000S"}, "longer than 36525 days"),  # was an OverflowError: a 500
        ({"duration": "P200Y"}, "longer than 36525 days"),
        ({"duration": "P1.5Y"}, "whole years and months"),
        ({"cycle": "R/PT0S"}, "must be positive"),
        ({"cycle": "R/PT0.001S"}, "at most once a second"),  # fired a thousand times a second
        ({"cycle": "R/P1000000D"}, "longer than 36525 days"),
        ({"cycle": "R\u00b2/PT1H"}, "must be a whole number"),  # '²' is a digit to str.isdigit, not to int()
        ({"date": "9999-12-31T23:00:00-05:00"}, "out of range"),  # was an OverflowError
        ({"cron": "0 0 30 2 *"}, "never falls due"),  # armed, it raised CroniterBadDateError
        ({"cron": "0 0 1 1 * 0 2020"}, "never falls due"),  # a year field already past
    ],
)
def test_definitions_that_could_never_fire_or_only_spin_are_refused_with_a_fix(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        TimerDefinition(**fields)
    assert message in str(caught.value)


def test_a_long_downtime_is_caught_up_in_one_step_not_one_per_missed_tick() -> None:
    """Down a year under a cycle of a second, or a month under a cron of a minute: the next tick is found at
    once (it was a loop per missed tick: 31 million parses of the cycle, a scheduler frozen for minutes)."""
    year_later = T0 + timedelta(days=365)
    every_second = TimerDefinition(cycle="R/PT1S")
    started = time.thread_time()  # CPU: what a loop per missed tick costs (minutes), not a loaded box's wall clock
    assert every_second.after_firing(T0, 1, T0 + timedelta(seconds=1), year_later) == (
        year_later + timedelta(seconds=1),
        365 * 86_400 - 1,
    )
    capped = TimerDefinition(cycle="R100/PT1S")
    assert capped.after_firing(T0, 1, T0 + timedelta(seconds=1), year_later) == (None, 99)
    every_minute = TimerDefinition(cron="* * * * *")
    month_later = T0 + timedelta(days=30, seconds=30)
    due, skipped = every_minute.after_firing(T0, 1, T0 + timedelta(minutes=1), month_later)
    assert due == T0 + timedelta(days=30, minutes=1) and skipped == COUNTED_MISSED
    assert time.thread_time() - started < 5


def test_a_fixed_time_cron_ticks_once_when_the_clocks_go_back_and_a_wildcard_hour_keeps_real_time() -> None:
    """Paris, 25 October 2026: 02:00-02:59 comes round twice. "Daily at 02:30" fired at both (00:30 and 01:30
    UTC): a daily job run twice. It ticks at the first, as cron does; a half-hourly one ticks at all of them."""
    paris = ZoneInfo("Europe/Paris")

    def ticks(definition: TimerDefinition, armed: datetime, count: int) -> list[str]:
        due, found = definition.first_due(armed), []
        for number in range(1, count + 1):
            found.append(due.astimezone(paris).strftime("%d %H:%M%z"))
            next_due, _skipped = definition.after_firing(armed, number, due, due)
            assert next_due is not None
            due = next_due
        return found

    eve = datetime(2026, 10, 24, 22, tzinfo=UTC)
    daily = TimerDefinition(cron="30 2 * * *", timezone="Europe/Paris")
    assert ticks(daily, eve, 3) == ["25 02:30+0200", "26 02:30+0100", "27 02:30+0100"]
    midnight = TimerDefinition(cron="@daily", timezone="Europe/Paris")
    assert ticks(midnight, eve - timedelta(hours=1), 2) == ["25 00:00+0200", "26 00:00+0100"]
    half_hourly = TimerDefinition(cron="*/30 * * * *", timezone="Europe/Paris")
    assert ticks(half_hourly, datetime(2026, 10, 24, 23, 45, tzinfo=UTC), 5) == [
        "25 02:00+0200",
        "25 02:30+0200",
        "25 02:00+0100",
        "25 02:30+0100",
        "25 03:00+0100",
    ]
    # Spring forward: 02:30 does not exist that night; it ticks at 03:00, not a day late.
    assert ticks(daily, datetime(2026, 3, 28, 22, tzinfo=UTC), 2) == ["29 03:00+0200", "30 02:30+0200"]


async def test_a_cycle_start_timer_down_for_a_year_fires_once_and_moves_past_now(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(timer_start("pulse", {"cycle": "R/PT1S"}))
        clock.advance(timedelta(days=365))
        report = await asyncio.wait_for(rt.processes.scheduler.run_due(), 30)
        assert (report.fired, report.failed) == (1, 0)
        [instance] = await started(rt, "pulse")
        status = await rt.processes.status(instance["instance_id"])
        assert status["variables"]["timer"]["missed_ticks"] == 365 * 86_400 - 1
        [timer] = await rt.processes.services.timers.find(purpose="start")
        assert timer.status == "scheduled" and timer.due_at == clock.now() + timedelta(seconds=1)


async def test_a_repeating_timer_catching_up_tick_by_tick_does_not_hold_up_the_rest_of_the_pass(store_url: str) -> None:
    """A fire_all cycle two hours behind stays due after each firing: the pass claimed it again and again, and
    only after all 7,200 ticks resumed the thread whose timer fell due beside it. A pass takes MAX_ROUNDS
    batches, then does the rest; the next pass goes on with the backlog."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(waiting_timer("trial", {"duration": "PT1H"}))
        view = await rt.processes.start("trial", "cust-1")
        pings: list[int] = []

        async def ping(timer: Timer) -> bool:
            pings.append(timer.ticks + 1)
            return True

        rt.processes.scheduler.handlers["ping"] = ping
        timers = rt.processes.services.timers
        behind = TimerDefinition(cycle="R/PT1S", missed="fire_all")
        await timers.execute(
            [timers.schedule_row("ping", element="ping", purpose="ping", definition=behind.to_row(),
                                       due_at=behind.first_due(T0), origin=T0)]
        )  # fmt: skip
        clock.advance(timedelta(hours=2))
        report = await rt.processes.scheduler.run_due()
        assert (await rt.processes.status(view["instance_id"]))["status"] == "completed"
        assert report.resumed == 1 and pings == list(range(1, MAX_ROUNDS + 1))
        await rt.processes.scheduler.run_due()
        assert pings == list(range(1, 2 * MAX_ROUNDS + 1))  # back to back, in order, pass after pass


async def test_a_cron_whose_years_end_fires_its_last_tick_and_is_spent(store_url: str) -> None:
    clock = virtual_clock()  # 2026-01-05
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(timer_start("new_year", {"cron": "0 9 1 1 * 0 2027"}))  # once: 2027-01-01 09:00
        clock.set(datetime(2027, 1, 1, 9, tzinfo=UTC))
        report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.failed) == (1, 0)  # it failed, and was retried every minute for ever
        assert len(await started(rt, "new_year")) == 1
        [timer] = await rt.processes.services.timers.find(purpose="start")
        assert (timer.status, timer.ticks) == ("fired", 1)
        clock.advance(timedelta(days=400))
        assert (await rt.processes.scheduler.run_due()).fired == 0


async def test_hostile_timers_in_a_spec_are_refused_at_deploy(store_url: str) -> None:
    for timer, message in [
        ({"duration": "PT100000000000000000000S"}, "longer than 36525 days"),
        ({"cycle": "R/PT0.01S"}, "at most once a second"),
        ({"cron": "0 0 30 2 *"}, "never falls due"),
    ]:
        problems = await refused(store_url, timer_start("hostile", timer))
        assert any(message in p for p in problems), problems
    sla = {"type": "user_task", "id": "approve", "assignee": "ana", "on_timeout": "notify"}
    for hours, message in [(0.0001, "under a second"), (1e300, "longer than 36525 days"), ("inf", "finite")]:
        problems = await refused(store_url, linear("sla", {**sla, "sla_hours": hours}))
        assert any(message in p for p in problems), problems


# --- durable timers in processes -------------------------------------------------------------------


def waiting_timer(name: str, timer: dict[str, Any]) -> dict[str, Any]:
    return linear(name, {"type": "timer", "id": "wait", "timer": timer})


async def test_a_timer_never_fires_early_and_fires_once_late_after_downtime(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(waiting_timer("trial", {"duration": "P7D"}))
        view = await rt.processes.start("trial", "cust-1")
        [timer] = await rt.processes.services.timers.find(instance_id=view["instance_id"])
        assert timer.due_at == T0 + timedelta(days=7) and timer.status == "scheduled"

        clock.advance(timedelta(days=7) - timedelta(microseconds=1))
        assert (await rt.processes.scheduler.run_due()).fired == 0
        assert waiting_elements(await rt.processes.status(view["instance_id"])) == ["wait"]

        clock.advance(timedelta(days=3))  # the scheduler was down when it fell due
        report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.resumed) == (1, 1)
        assert report.lateness == [pytest.approx(timedelta(days=3).total_seconds(), abs=1e-3)]
        assert (await rt.processes.status(view["instance_id"]))["status"] == "completed"
        assert (await rt.processes.scheduler.run_due()).fired == 0
        fired = [e for e in await rt.processes.history(view["instance_id"]) if e.type == "wait.completed"]
        assert len(fired) == 1 and fired[0].payload["resolution_kind"] == "timer"


class AheadClock(SystemClock):
    """The wall clock of a worker whose machine runs two hours ahead."""

    def now(self) -> datetime:
        return super().now() + timedelta(hours=2)


async def test_a_worker_whose_clock_runs_ahead_fires_no_timer_early(postgres_url: str) -> None:
    """Workers on several machines share PostgreSQL. A claim compared due times with the claiming worker's own
    clock, so a worker two hours ahead fired a one-hour timer another process had armed an hour early (a trial
    ended, an SLA escalated, before its time). The database's clock bounds a claim now: that timer waits, and one
    that is due fires.

    Then the pass has nothing due, as a worker's pass (once a second) mostly has: its claim, the migrations left
    open, the resolutions left undelivered, the messages expired and the next due time were statements built per
    call and run through SQLAlchemy's engine, 21 ms of the worker's CPU a pass. They are built once and run on
    the backend's prebuilt path: the engine sends none of them."""
    async with (
        JourneyRuntime.open(postgres_url) as armed,
        JourneyRuntime.open(postgres_url, clock=AheadClock()) as ahead,
    ):
        await armed.processes.deploy(waiting_timer("trial", {"duration": "PT1H"}))
        await armed.processes.deploy(waiting_timer("blink", {"duration": "PT1S"}))
        later = await armed.processes.start("trial", "cust-1")
        soon = await armed.processes.start("blink", "cust-2")
        await asyncio.sleep(1.2)
        report = await ahead.processes.scheduler.run_due()
        assert (report.fired, report.resumed) == (1, 1)
        assert (await ahead.processes.status(soon["instance_id"]))["status"] == "completed"
        assert waiting_elements(await ahead.processes.status(later["instance_id"])) == ["wait"]
        sent: list[str] = []

        def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            sent.append(statement)

        engine = ahead.store.engine.sync_engine
        event.listen(engine, "before_cursor_execute", record)
        try:
            idle = await ahead.processes.scheduler.run_due()
            next_due = await ahead.processes.services.timers.next_due()
        finally:
            event.remove(engine, "before_cursor_execute", record)
        assert (idle.fired, idle.redelivered, sent) == (0, 0, [])
        assert next_due is not None and timedelta(minutes=50) < next_due - datetime.now(UTC) < timedelta(hours=1)


async def test_timers_of_one_instance_firing_in_one_batch_log_each_completion_once(store_url: str) -> None:
    """Two parallel branches wait on timers that fall due together: one firing transaction resolves both
    waits and logs both completions (one instance, two event sequence numbers in one statement batch)."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        elements = [
            {"type": "start", "id": "start"},
            {"type": "parallel_gateway", "id": "fork"},
            {"type": "timer", "id": "wait_a", "timer": {"duration": "PT1H"}},
            {"type": "timer", "id": "wait_b", "timer": {"duration": "PT1H"}},
            {"type": "parallel_gateway", "id": "join"},
            {"type": "end", "id": "end"},
        ]
        flows = ["start -> fork", "fork -> wait_a", "fork -> wait_b", "wait_a -> join", "wait_b -> join", "join -> end"]
        await rt.processes.deploy({"name": "both", "elements": elements, "flows": flows})
        view = await rt.processes.start("both", "k")
        assert waiting_elements(view) == ["wait_a", "wait_b"]
        clock.advance(timedelta(hours=1))
        report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.failed) == (2, 0)
        assert (await rt.processes.status(view["instance_id"]))["status"] == "completed"
        history = await rt.processes.history(view["instance_id"])
        assert sorted(e.step for e in history if e.type == "wait.completed") == ["wait_a", "wait_b"]
        assert [e.seq for e in history] == list(range(1, len(history) + 1))


async def test_a_date_already_past_fires_at_the_next_pass(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(waiting_timer("deadline", {"date": "2026-01-01T00:00:00Z"}))
        view = await rt.processes.start("deadline", "cust-1")
        assert waiting_elements(view) == ["wait"]
        report = await rt.processes.scheduler.run_due()
        assert report.resumed == 1 and report.lateness[0] > 0
        assert (await rt.processes.status(view["instance_id"]))["status"] == "completed"


def timer_start(name: str, timer: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "elements": [{"type": "start", "id": "tick", "timer": timer}, {"type": "end", "id": "end"}],
        "flows": ["tick -> end"],
    }


async def started(rt: Any, name: str) -> list[dict[str, Any]]:
    return await rt.processes.instances(name)


async def test_a_cycle_start_timer_coalesces_missed_ticks(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(timer_start("report", {"cycle": "R5/PT10S"}))
        clock.advance(timedelta(seconds=10))
        assert (await rt.processes.scheduler.run_due()).fired == 1
        clock.advance(timedelta(seconds=35))  # down for ticks 2, 3 and 4 (due at +20, +30, +40 s)
        assert (await rt.processes.scheduler.run_due()).fired == 1
        instances = await started(rt, "report")
        assert len(instances) == 2
        second = await rt.processes.status(instances[1]["instance_id"])
        assert second["variables"]["timer"] == {
            "due_at": (T0 + timedelta(seconds=20)).isoformat(),
            "tick": 2,
            "missed_ticks": 2,
        }
        clock.advance(timedelta(seconds=5))  # tick 5, the last of R5
        assert (await rt.processes.scheduler.run_due()).fired == 1
        clock.advance(timedelta(minutes=10))
        assert (await rt.processes.scheduler.run_due()).fired == 0
        assert len(await started(rt, "report")) == 3
        [timer] = await rt.processes.services.timers.find(purpose="start")
        assert (timer.status, timer.ticks) == ("fired", 5)


async def test_a_cycle_start_timer_can_fire_every_missed_tick(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(timer_start("report", {"cycle": "R5/PT10S", "missed": "fire_all"}))
        clock.advance(timedelta(seconds=45))
        report = await rt.processes.scheduler.run_due()
        assert report.fired == 4 and report.lateness == [35.0, 25.0, 15.0, 5.0]
        clock.advance(timedelta(hours=1))
        assert (await rt.processes.scheduler.run_due()).fired == 1
        assert len(await started(rt, "report")) == 5


async def test_a_cron_start_timer_starts_one_instance_per_tick(store_url: str) -> None:
    clock = virtual_clock()  # Monday 2026-01-05 09:00 UTC
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(timer_start("daily", {"cron": "30 9 * * *"}))
        clock.advance(timedelta(minutes=29))
        assert (await rt.processes.scheduler.run_due()).fired == 0
        for _day in range(3):
            clock.advance(timedelta(days=1))
            assert (await rt.processes.scheduler.run_due()).fired == 1
        keys = [i["business_key"] for i in await started(rt, "daily")]
        assert keys == [f"daily@2026010{d}T093000.000000Z" for d in (5, 6, 7)]


async def test_a_new_version_replaces_the_timer_starts_of_the_old_one(store_url: str) -> None:
    clock = virtual_clock()  # Monday 2026-01-05 09:00 UTC
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy({**timer_start("daily", {"cron": "30 9 * * *"}), "version": 1})
        await rt.processes.deploy({**timer_start("daily", {"cron": "0 10 * * *"}), "version": 2})
        clock.advance(timedelta(minutes=45))  # 09:45: v1's tick would have been due
        assert (await rt.processes.scheduler.run_due()).fired == 0
        clock.advance(timedelta(minutes=15))  # 10:00: v2's
        assert (await rt.processes.scheduler.run_due()).fired == 1
        assert [i["version"] for i in await started(rt, "daily")] == [2]
        timers = await rt.processes.services.timers.find(purpose="start")
        assert sorted((t.definition.get("cron"), t.status) for t in timers) == [
            ("0 10 * * *", "scheduled"),
            ("30 9 * * *", "cancelled"),
        ]

        await rt.processes.deploy({**timer_start("daily", {"cron": "0 10 * * *"}), "version": 3})
        [kept] = [t for t in await rt.processes.services.timers.find(purpose="start") if t.status == "scheduled"]
        assert (kept.definition, kept.ticks) == ({"cron": "0 10 * * *"}, 1)  # the same timer keeps its schedule

        await rt.processes.deploy(
            {
                "name": "daily",
                "version": 4,
                "elements": [{"type": "start", "id": "start"}, {"type": "end", "id": "end"}],
                "flows": ["start -> end"],
            }
        )
        assert not [t for t in await rt.processes.services.timers.find(purpose="start") if t.status == "scheduled"]
        clock.advance(timedelta(days=2))
        assert (await rt.processes.scheduler.run_due()).fired == 0  # v4 has no timer start: nothing fires


async def test_deploying_an_older_version_late_leaves_the_newer_timer_starts(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy({**timer_start("daily", {"cron": "0 10 * * *"}), "version": 2})
        await rt.processes.deploy({**timer_start("daily", {"cron": "30 9 * * *"}), "version": 1})
        [timer] = await rt.processes.services.timers.find(purpose="start")
        assert (timer.definition, timer.status) == ({"cron": "0 10 * * *"}, "scheduled")


async def test_a_cancelled_timer_never_fires(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(waiting_timer("trial", {"duration": "PT1H"}))
        view = await rt.processes.start("trial", "cust-1")
        cancelled = await rt.processes.cancel(view["instance_id"], reason="customer left")
        assert cancelled["status"] == "cancelled"
        clock.advance(timedelta(days=1))
        report = await rt.processes.scheduler.run_due()
        assert (report.fired, report.resumed) == (0, 0)
        [timer] = await rt.processes.services.timers.find(instance_id=view["instance_id"])
        assert timer.status == "cancelled"
        assert [e.type for e in await rt.processes.history(view["instance_id"])][-1] == "process.cancelled"


async def test_two_workers_never_fire_the_same_timer(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers claim a backlog together: each timer once. On PostgreSQL a claim reads its candidates in due order
    from the timers' index, never sorting every due timer (a backlog of 10,000: 20 claims, each a scan and a sort
    of all those left), also when expired leases are claimable beside them."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(waiting_timer("trial", {"duration": "PT1M"}))
        views = [await rt.processes.start("trial", f"cust-{i}") for i in range(12)]
        clock.advance(timedelta(minutes=1))
        timers = rt.processes.services.timers
        claims: list[tuple[str, Any]] = []
        execute = psycopg.AsyncCursor.execute

        async def sent(cursor: psycopg.AsyncCursor[Any], query: Any, params: Any = None, **kwargs: Any) -> Any:
            if isinstance(query, str) and query.startswith("UPDATE process_timers SET status"):
                claims.append((query, params))  # on the backend's raw cursor: $n placeholders, a list of values
            return await execute(cursor, query, params, **kwargs)

        monkeypatch.setattr(psycopg.AsyncCursor, "execute", sent)
        first, second = await asyncio.gather(
            timers.claim_due(clock.now(), "worker-a", limit=7), timers.claim_due(clock.now(), "worker-b", limit=7)
        )
        monkeypatch.undo()
        if rt.store.backend.postgres:
            statement, parameters = claims[0]
            async with await psycopg.AsyncConnection.connect(parse_store_url(store_url).target) as conn:
                await conn.execute("SET enable_seqscan = off")  # the plan of a table too big to scan
                explained = await psycopg.AsyncRawCursor(conn).execute(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
                [[plan]] = await explained.fetchall()
            assert _lock_inputs(plan[0]["Plan"]) == ["Index Scan", "Index Scan"]  # scheduled, then expired leases
        ids_a, ids_b = {t.timer_id for t in first}, {t.timer_id for t in second}
        assert not ids_a & ids_b and len(ids_a | ids_b) == 12
        # Both claims are leases of their workers; nothing else fires them meanwhile.
        assert (await fire_due_timers(rt.processes, worker="worker-c")).fired == 0
        clock.advance(timedelta(minutes=5))  # both workers died: the leases are up
        reports = await asyncio.gather(
            fire_due_timers(rt.processes, worker="worker-d"), fire_due_timers(rt.processes, worker="worker-e")
        )
        assert sum(r.fired for r in reports) == 12 and sum(r.resumed for r in reports) == 12
        for view in views:
            completions = [e for e in await rt.processes.history(view["instance_id"]) if e.type == "wait.completed"]
            assert len(completions) == 1
            assert (await rt.processes.status(view["instance_id"]))["status"] == "completed"
        from sqlalchemy import func, select

        async with rt.store.engine.connect() as conn:
            statuses = (
                await conn.execute(select(process_timers.c.status, func.count()).group_by(process_timers.c.status))
            ).all()
        assert dict((s, int(n)) for s, n in statuses) == {"fired": 12}


async def test_a_journey_parks_on_a_task_and_its_timer_with_their_rows_in_the_statement_of_its_arm_event(
    store_url: str,
) -> None:
    """Parking writes the wait's rows (the wait, its timer, its task and the task's groups) with the event that
    arms it, in one transaction; on PostgreSQL in one statement on the pool, not a SQLAlchemy transaction's
    BEGIN, event, rows and COMMIT (six round trips per park here); and the timer fires as armed."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        spec = boundary_spec("signing")
        spec["elements"][1]["candidate_groups"] = ["legal", "sales"]
        await rt.processes.deploy(spec)
        through_sqlalchemy: list[str] = []

        def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
            through_sqlalchemy.append(statement)

        event.listen(rt.store.engine.sync_engine, "after_cursor_execute", seen)
        try:
            view = await rt.processes.start("signing", "deal-1")
        finally:
            event.remove(rt.store.engine.sync_engine, "after_cursor_execute", seen)
        assert waiting_elements(view) == ["sign"]
        if store_url.startswith("postgresql"):
            armed = ("process_waits", "process_timers", "process_user_tasks", "journey_events")
            assert not [s for s in through_sqlalchemy if any(f"INSERT INTO {table}" in s for table in armed)]
        [timer] = await rt.processes.services.timers.find(instance_id=view["instance_id"])
        assert (timer.element, timer.purpose, timer.due_at) == ("too_late", "boundary", T0 + timedelta(days=2))
        [task] = await rt.processes.inbox.list_tasks(assignee="ana")
        assert task["candidate_groups"] == ["legal", "sales"]
        clock.advance(timedelta(days=2))
        report = await fire_due_timers(rt.processes)
        assert (report.fired, report.resumed) == (1, 1)
        assert (await rt.processes.status(view["instance_id"]))["status"] == "completed"


def _lock_inputs(node: dict[str, Any]) -> list[str]:
    """What each row-locking step of a plan takes its rows from (an index in its order, or a sort), in plan order."""
    found = [child["Node Type"] for child in node.get("Plans", [])] if node["Node Type"] == "LockRows" else []
    return found + [kind for child in node.get("Plans", []) for kind in _lock_inputs(child)]


async def test_a_batch_resolves_its_waits_in_one_statement_and_the_first_of_two_racing_timers_wins(
    store_url: str,
) -> None:
    """Three instances race two timers that fall due together: in each, the first timer in claim order
    (due time, then id) wins its wait and the other never fires, as if applied one after the other; on
    PostgreSQL the whole batch's waits are resolved, and their completions logged, by one statement each, not
    one per timer; the batch's ids go in JSON documents, not in arrays psycopg dumps element by element in Python,
    and the firing reads each wait's winning timer, not its whole resolution (a JSON document decoded per timer)."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        elements = [
            {"type": "start", "id": "start"},
            {"type": "event_gateway", "id": "race"},
            {"type": "timer", "id": "a_first", "timer": {"duration": "PT1H"}},
            {"type": "timer", "id": "b_second", "timer": {"duration": "PT1H"}},
            {"type": "end", "id": "end_a", "outcome": "a"},
            {"type": "end", "id": "end_b", "outcome": "b"},
        ]
        flows = ["start -> race", "race -> a_first", "race -> b_second", "a_first -> end_a", "b_second -> end_b"]
        await rt.processes.deploy({"name": "two_timers", "elements": elements, "flows": flows})
        ids = [(await rt.processes.start("two_timers", f"k-{i}"))["instance_id"] for i in range(3)]
        timer_ids = {t.element: t.timer_id for t in await rt.processes.services.timers.find(instance_id=ids[0])}
        assert sorted(timer_ids) == ["a_first", "b_second"]
        first = min(timer_ids, key=lambda element: timer_ids[element])

        resolving: list[int] = []
        logging: list[int] = []  # event statements through the engine (the firing's): one per executemany row

        arrays: list[str] = []  # statements the firing sent with a list parameter (an array of ids)
        read_back: list[str] = []  # the columns of its reads of some of a wait's columns (a whole row: redelivery's)

        def count(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool) -> None:
            if statement.lstrip().upper().startswith("UPDATE PROCESS_WAITS SET STATUS"):
                resolving.append(len(parameters) if many else 1)
            if "INSERT INTO journey_events" in statement:
                logging.append(len(parameters) if many else 1)
            values = parameters.values() if isinstance(parameters, dict) else parameters if not many else []
            if any(isinstance(value, list | tuple) for value in values):
                arrays.append(statement)

        def read(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
            if "FROM process_waits" in statement and len(cursor.description or process_waits.c) < len(process_waits.c):
                read_back.extend(column[0] for column in cursor.description)

        sync_engine = rt.store.engine.sync_engine
        event.listen(sync_engine, "before_cursor_execute", count)
        event.listen(sync_engine, "after_cursor_execute", read)
        try:
            clock.advance(timedelta(hours=1))
            report = await rt.processes.scheduler.run_due()
        finally:
            event.remove(sync_engine, "before_cursor_execute", count)
            event.remove(sync_engine, "after_cursor_execute", read)
        assert (report.fired, report.dropped, report.resumed, report.failed) == (3, 3, 3, 0)
        for instance_id in ids:
            done = await rt.processes.status(instance_id)
            assert done["status"] == "completed" and done["outcome"] == first[0]
            fired = {t.element: t.status for t in await rt.processes.services.timers.find(instance_id=instance_id)}
            assert fired == {first: "fired", ({"a_first", "b_second"} - {first}).pop(): "cancelled"}
        if rt.store.engine.dialect.name == "postgresql":
            assert sum(resolving) == 2  # the batch's resolutions, then marking the consumed ones done
            assert sum(logging) == 1  # the batch's wait completions, not one statement per timer
            assert arrays == []
            assert "resolution" not in read_back


def completions(rt: JourneyRuntime, count: int) -> tuple[list[str], asyncio.Event]:
    """The instances that complete from now on, in order, and an event set once ``count`` of them have."""
    completed: list[str] = []
    enough = asyncio.Event()

    async def seen(instance_id: str, status: str) -> None:
        if status == "completed":
            completed.append(instance_id)
            if len(completed) >= count:
                enough.set()

    rt.store.events.on_status(seen)
    return completed, enough


async def test_a_fired_timers_thread_goes_on_while_later_batches_fire(store_url: str) -> None:
    """The threads of a batch of fired timers resume as the batch fires, not once every timer due has fired: the
    worker runs them while the next batches are on the wire. Here the database is slow to fire the second batch
    until the first batch's journey has ended (as a big backlog's later batches keep it busy)."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        completed, first_completed = completions(rt, 1)
        await rt.processes.deploy(linear("nap", {"type": "timer", "id": "later", "timer": {"duration": "PT1H"}}))
        ids = []
        for key in "ab":  # due in this order: one batch each
            ids.append((await rt.processes.start("nap", key))["instance_id"])
            clock.advance(timedelta(minutes=1))
        timers = rt.processes.services.timers
        fire_waits = timers.fire_waits
        batches: list[int] = []

        async def slow_after_the_first(claimed: Any, worker: str) -> Any:
            if claimed and batches:
                async with asyncio.timeout(10):  # only a guard: reached when the pass fires everything first
                    await first_completed.wait()
            batches.append(len(claimed))
            return await fire_waits(claimed, worker)

        timers.fire_waits = slow_after_the_first  # type: ignore[method-assign]
        clock.advance(timedelta(hours=2))
        report = await fire_due_timers(rt.processes, batch=1)
        assert (report.fired, report.resumed, report.failed) == (2, 2, 0)
        assert batches[:2] == [1, 1] and completed == ids


async def test_the_waits_of_resumed_threads_are_finished_while_later_threads_still_resume(store_url: str) -> None:
    """Once a batch's worth of threads has consumed its fired timers' resolutions, their waits are marked done while
    the pass's later threads resume, not one batch after another once every thread has: 10,000 continuations' took
    half a second more at the end of the pass. Here the last thread's agent answers only once the first two
    threads' waits are done."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        waits = rt.processes.services.waits
        finish = waits.finish
        finished: list[list[str]] = []
        first_two_done = asyncio.Event()

        async def finishing(wait_ids: Any) -> None:
            await finish(wait_ids)
            finished.append(sorted(wait_ids))
            first_two_done.set()

        async def look_up(request: Any) -> dict[str, Any]:
            if request.payload.get("variables", {}).get("held"):
                async with asyncio.timeout(10):  # only a guard: reached when the waits are finished at the end
                    await first_two_done.wait()
            return {}

        rt.agents.register("crm.look_up", look_up, replace=True)
        await rt.processes.deploy(
            linear(
                "follow_up",
                {"type": "timer", "id": "later", "timer": {"duration": "PT1H"}},
                {"type": "service_task", "id": "look_up", "agent": "crm.look_up", "input_variables": ["held"]},
            )
        )
        ids: list[str] = []
        waited: list[str] = []
        for key in ("a", "b", "held"):  # due in this order: batches [a, b], [held]
            started = await rt.processes.start("follow_up", key, {"held": key == "held"})
            ids.append(started["instance_id"])
            waited.append(started["waiting"][0]["wait_id"])
            clock.advance(timedelta(minutes=1))

        waits.finish = finishing  # type: ignore[method-assign]
        clock.advance(timedelta(hours=2))
        report = await fire_due_timers(rt.processes, batch=2)
        assert (report.fired, report.resumed, report.failed) == (3, 3, 0), report.errors
        assert [(await rt.processes.status(i))["status"] for i in ids] == ["completed"] * 3
        assert finished == [sorted(waited[:2]), waited[2:]]
        # Done: a later pass delivers none of them again.
        assert await waits.undelivered(resolved_before=clock.now() + timedelta(days=1)) == []


async def test_a_continuation_held_up_by_its_agent_holds_up_only_its_own_slot(store_url: str) -> None:
    """Continuations run in waves, two under way at once (``fire_due_timers``), but one that outlasts its wave (its
    agent answers only once the others are through) keeps only its own slot: with both waves held up so, the next
    wave goes on without them."""
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        completed, others_completed = completions(rt, 4)

        async def look_up(request: Any) -> dict[str, Any]:
            if request.payload.get("variables", {}).get("held"):
                async with asyncio.timeout(30):  # only a guard: never reached unless the others wait for these
                    await others_completed.wait()
            return {}

        rt.agents.register("crm.look_up", look_up, replace=True)
        await rt.processes.deploy(
            linear(
                "follow_up",
                {"type": "timer", "id": "later", "timer": {"duration": "PT1H"}},
                {"type": "service_task", "id": "look_up", "agent": "crm.look_up", "input_variables": ["held"]},
            )
        )
        held: list[str] = []
        others: list[str] = []
        for key in ("held-1", "a", "held-2", "b", "c", "d"):  # due in this order: waves [held-1, a], [held-2, b]
            started = await rt.processes.start("follow_up", key, {"held": key.startswith("held")})
            (held if key.startswith("held") else others).append(started["instance_id"])
            clock.advance(timedelta(minutes=1))

        clock.advance(timedelta(hours=2))
        report = await fire_due_timers(rt.processes, concurrency=4)
        assert (report.fired, report.resumed, report.failed) == (6, 6, 0)
        assert sorted(completed[:4]) == sorted(others) and sorted(completed[4:]) == sorted(held)
