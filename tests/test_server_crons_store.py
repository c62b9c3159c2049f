"""The store (LangGraph's official ``BaseStore`` on the server's database) and crons, driven by the official
``langgraph-sdk`` client over real HTTP; every answer is checked against the SDK's own types."""

from __future__ import annotations

import asyncio
import json
import random
import string
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict, get_type_hints

import httpx
import pytest
from langgraph.config import get_store
from langgraph.graph import END, START, StateGraph
from langgraph.store.memory import InMemoryStore
from langgraph.store.postgres.aio import AsyncPostgresStore
from langgraph.store.sqlite.aio import AsyncSqliteStore
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import ConflictError, NotFoundError, UnprocessableEntityError
from langgraph_sdk.schema import Cron, Item, ListNamespaceResponse, SearchItem, SearchItemsResponse

from checkpoints import VirtualClock
from checkpoints.crons import CronStore
from checkpoints.process.timers import Timer, TimerStore
from graphs import JourneyRuntime
from server.app import create_app
from server.runs.store import RunStore
from server.settings import Settings
from tests.server_support import SchedulerPasses, free_port, serving
from tests.test_webhooks_durable import receiving

pytestmark = pytest.mark.slow


def assert_shape(value: Any, shape: type[Any]) -> None:
    """``value`` has exactly the required keys of the SDK TypedDict ``shape`` (plus only its optional ones)."""
    hints = get_type_hints(shape)
    assert isinstance(value, dict), value
    required: frozenset[str] = getattr(shape, "__required_keys__", frozenset(hints))
    assert required <= value.keys() <= hints.keys(), (shape.__name__, sorted(value))


async def test_the_store_endpoints_answer_in_the_sdk_shapes(sdk_client: LangGraphClient) -> None:
    assert await sdk_client.store.get_item(["users", "ana"], key="prefs") is None
    await sdk_client.store.put_item(["users", "ana"], key="prefs", value={"theme": "dark", "lang": "en"})
    await sdk_client.store.put_item(["users", "ana", "notes"], key="n1", value={"text": "call bob"})
    await sdk_client.store.put_item(["users", "bob"], key="prefs", value={"theme": "light"})

    item = await sdk_client.store.get_item(["users", "ana"], key="prefs")
    assert_shape(item, Item)
    assert (item["namespace"], item["key"]) == (["users", "ana"], "prefs")
    assert item["value"] == {"theme": "dark", "lang": "en"}

    found = await sdk_client.store.search_items(["users"], filter={"theme": "dark"})
    assert_shape(found, SearchItemsResponse)
    for hit in found["items"]:
        assert_shape(hit, SearchItem)
    assert [(h["namespace"], h["key"]) for h in found["items"]] == [(["users", "ana"], "prefs")]
    page = await sdk_client.store.search_items(["users"], limit=2, offset=0)
    assert len(page["items"]) == 2

    namespaces = await sdk_client.store.list_namespaces(prefix=["users"])
    assert_shape(namespaces, ListNamespaceResponse)
    assert sorted(namespaces["namespaces"]) == [["users", "ana"], ["users", "ana", "notes"], ["users", "bob"]]
    shallow = await sdk_client.store.list_namespaces(prefix=["users"], max_depth=2)
    assert sorted(shallow["namespaces"]) == [["users", "ana"], ["users", "bob"]]

    await sdk_client.store.put_item(["users", "ana"], key="prefs", value={"theme": "light"})
    updated = await sdk_client.store.get_item(["users", "ana"], key="prefs")
    assert updated is not None and updated["value"] == {"theme": "light"}
    await sdk_client.store.delete_item(["users", "ana"], key="prefs")
    assert await sdk_client.store.get_item(["users", "ana"], key="prefs") is None


async def test_bad_store_input_is_refused_with_a_problem(sdk_client: LangGraphClient) -> None:
    with pytest.raises(UnprocessableEntityError):
        await sdk_client.store.put_item(["users"], key="k", value={"a": 1}, ttl=0)  # a TTL is a positive minutes
    with pytest.raises(UnprocessableEntityError):
        await sdk_client.http.put("/store/items", json={"namespace": [], "key": "k", "value": {}})
    with pytest.raises(UnprocessableEntityError):
        await sdk_client.http.get("/store/items", params={"namespace": "users..ana", "key": "k"})
    for listing in ({"suffix": ["notes.v1"]}, {"prefix": ["users", "a.b"]}):  # a '.' cannot be in a label
        with pytest.raises(UnprocessableEntityError):
            await sdk_client.store.list_namespaces(**listing)
    # LangGraph keeps the root label "langgraph" for itself: an admin (here, --no-auth) writing the raw
    # namespaces is told so (it was a 500); the next request on the same connection is answered.
    with pytest.raises(UnprocessableEntityError, match="langgraph"):
        await sdk_client.store.put_item(["langgraph", "x"], key="k", value={"a": 1})
    await sdk_client.store.put_item(["users"], key="k", value={"a": 1})


class Remembered(TypedDict):
    user: str
    seen: int


def remembering_graph() -> StateGraph[Remembered]:
    """A graph whose node keeps a per-user count in the store it reaches with ``get_store()``."""

    async def count(state: Remembered) -> dict[str, Any]:
        store = get_store()
        previous = await store.aget(("visits",), state["user"])
        seen = (previous.value["count"] if previous else 0) + 1
        await store.aput(("visits",), state["user"], {"count": seen})
        return {"seen": seen}

    graph = StateGraph(Remembered)
    graph.add_node("count", count)
    graph.add_edge(START, "count")
    graph.add_edge("count", END)
    return graph


STORE_CLASSES = {"memory": InMemoryStore, "sqlite": AsyncSqliteStore, "postgres": AsyncPostgresStore}


async def test_every_compiled_graph_gets_the_official_store_of_the_database(store_url: str) -> None:
    kind = store_url.split(":", 1)[0].replace("postgresql", "postgres")
    async with JourneyRuntime.open(store_url) as runtime:
        assert type(runtime.store.graph_store) is STORE_CLASSES[kind]
        assert runtime.store.graph_store.index_config is None  # vector search is off unless configured
        if runtime.store.pg_pool is not None:  # on the shared pool: no connection of its own
            assert runtime.store.graph_store.conn is runtime.store.pg_pool
        graph = runtime.engine.compiled("remembering", remembering_graph)
        assert graph.store is runtime.store.graph_store
        config = runtime.engine.config("visit-1")
        assert (await graph.ainvoke({"user": "ana", "seen": 0}, config))["seen"] == 1
        assert (await graph.ainvoke({"user": "ana", "seen": 0}, runtime.engine.config("visit-2")))["seen"] == 2
    if kind == "memory":
        return
    async with JourneyRuntime.open(store_url) as reopened:  # the store is on the database: it outlives the process
        item = await reopened.store.graph_store.aget(("visits",), "ana")
        assert item is not None and item.value == {"count": 2}


START_AT = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
JOURNEY = {"journey_type": "content_migration", "requirements": {"source": "a", "target": "b"}, "user_id": "ana"}


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(START_AT)


@pytest.fixture
def cron_server(store_url: str, clock: VirtualClock) -> Iterator[tuple[str, SchedulerPasses]]:
    """The server on a virtual clock, and the passes of its timer scheduler (which fires crons)."""
    app = create_app(Settings(database_url=store_url, auth=False), clock=clock)
    with serving(app) as base:
        yield base, SchedulerPasses(app)


@pytest.fixture
async def cron_client(cron_server: tuple[str, SchedulerPasses]) -> AsyncIterator[LangGraphClient]:
    async with get_client(url=cron_server[0], api_key=None) as sdk:
        yield sdk


@pytest.fixture
def passes(cron_server: tuple[str, SchedulerPasses]) -> SchedulerPasses:
    return cron_server[1]


async def cron_threads(sdk_client: LangGraphClient, passes: SchedulerPasses) -> list[dict[str, Any]]:
    """The threads the crons' firings made, once the scheduler has made two whole passes at the clock's time."""
    await passes.complete()
    print("the scheduler's last passes:", passes.outcomes[-3:])  # shown when the test fails
    return [t for t in await sdk_client.threads.search(limit=100) if t["metadata"].get("graph_id") == "structured"]


async def test_a_cron_fires_when_due_never_early_and_once_after_downtime(
    cron_client: LangGraphClient, clock: VirtualClock, passes: SchedulerPasses
) -> None:
    client = cron_client
    cron = await client.crons.create(
        "structured", schedule="0 9 * * *", input=JOURNEY, metadata={"team": "ops"}, on_run_completed="keep"
    )
    assert_shape(cron, Cron)
    assert cron["schedule"] == "0 9 * * *" and cron["timezone"] == "UTC" and cron["enabled"] is True
    assert datetime.fromisoformat(cron["next_run_date"]) == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert cron["payload"]["input"] == JOURNEY and cron["metadata"] == {"team": "ops"}

    clock.set(datetime(2026, 3, 2, 8, 59, 59, tzinfo=UTC))
    assert await cron_threads(client, passes) == []  # never early
    clock.set(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    [first] = await cron_threads(client, passes)
    [run] = await client.runs.list(first["thread_id"])
    assert run["metadata"]["cron_id"] == cron["cron_id"]
    assert (await client.runs.join(first["thread_id"], run["run_id"]))["current_step"] == "upload_content"

    clock.set(datetime(2026, 3, 5, 12, 0, tzinfo=UTC))  # three ticks missed while nothing fired them
    assert len(await cron_threads(client, passes)) == 2  # caught up with one firing, not three
    [found] = await client.crons.search(assistant_id="structured")
    assert_shape(found, Cron)
    assert datetime.fromisoformat(found["next_run_date"]) == datetime(2026, 3, 6, 9, 0, tzinfo=UTC)

    paused = await client.crons.update(cron["cron_id"], enabled=False)
    assert paused["enabled"] is False and paused["next_run_date"] is None
    clock.set(datetime(2026, 3, 6, 9, 30, tzinfo=UTC))
    assert len(await cron_threads(client, passes)) == 2
    assert await client.crons.count(assistant_id="structured") == 1
    assert await client.crons.search(enabled=True) == []
    resumed = await client.crons.update(cron["cron_id"], enabled=True, schedule="30 10 * * *")
    assert datetime.fromisoformat(resumed["next_run_date"]) == datetime(2026, 3, 6, 10, 30, tzinfo=UTC)
    # Metadata is merged into the cron's and its runs', as the Agent Server's update does, not replaced.
    tagged = await client.crons.update(cron["cron_id"], metadata={"owner": "ana"})
    assert tagged["metadata"] == tagged["payload"]["metadata"] == {"team": "ops", "owner": "ana"}, tagged
    retagged = await client.crons.update(cron["cron_id"], metadata={"owner": "bo"}, input=JOURNEY)
    assert retagged["metadata"] == retagged["payload"]["metadata"] == {"team": "ops", "owner": "bo"}, retagged

    await client.crons.delete(cron["cron_id"])
    assert await client.crons.count() == 0
    with pytest.raises(NotFoundError):
        await client.crons.delete(cron["cron_id"])
    clock.set(datetime(2026, 3, 7, 12, 0, tzinfo=UTC))
    assert len(await cron_threads(client, passes)) == 2  # a deleted cron's timer is gone with it


async def test_a_cron_stops_at_its_end_time_and_takes_a_timezone(
    cron_client: LangGraphClient, clock: VirtualClock, passes: SchedulerPasses
) -> None:
    client = cron_client
    cron = await client.crons.create(
        "structured",
        schedule="0 9 * * *",
        timezone="Europe/Paris",  # 9:00 in Paris is 8:00 UTC in March
        input=JOURNEY,
        end_time=datetime(2026, 3, 3, 12, 0, tzinfo=UTC),
        on_run_completed="keep",
    )
    assert datetime.fromisoformat(cron["next_run_date"]) == datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    clock.set(datetime(2026, 3, 3, 8, 0, tzinfo=UTC))
    assert len(await cron_threads(client, passes)) == 1
    clock.set(datetime(2026, 3, 6, 8, 0, tzinfo=UTC))
    assert len(await cron_threads(client, passes)) == 1  # past its end time: no more firings
    [spent] = await client.crons.search()
    assert spent["next_run_date"] is None


async def test_bad_crons_are_refused_before_anything_is_stored(cron_client: LangGraphClient) -> None:
    client = cron_client
    with pytest.raises(UnprocessableEntityError):
        await client.crons.create("structured", schedule="every morning", input=JOURNEY)
    with pytest.raises(UnprocessableEntityError):
        await client.crons.create("structured", schedule="0 9 * * *", input=JOURNEY, timezone="Mars/Olympus")
    with pytest.raises(UnprocessableEntityError):
        await client.crons.create("structured", schedule="0 9 * * *", input={"journey_type": 7})
    with pytest.raises(UnprocessableEntityError):  # a webhook is a URL
        await client.crons.create("structured", schedule="0 9 * * *", input=JOURNEY, webhook="x.test/hook")
    with pytest.raises(UnprocessableEntityError, match="do not take multitask_strategy 'interrupt'"):
        await client.crons.create("structured", schedule="0 9 * * *", input=JOURNEY, multitask_strategy="interrupt")
    with pytest.raises(NotFoundError):
        await client.crons.create("no_such_assistant", schedule="0 9 * * *", input=JOURNEY)
    with pytest.raises(NotFoundError):
        await client.crons.create_for_thread("no-such-thread", "guide", schedule="0 9 * * *", input={})
    thread = await client.threads.create()
    with pytest.raises(UnprocessableEntityError):  # a journey thread advances by resume, not by new input
        await client.crons.create_for_thread(thread["thread_id"], "structured", schedule="0 9 * * *", input=JOURNEY)
    with pytest.raises(NotFoundError):
        await client.crons.update("no-such-cron", schedule="0 10 * * *")
    # A bad schedule's refusal says what to write; a host's own zone ('localtime', 'posix/...') was taken, so API
    # and workers on different hosts disagreed on when it fires: refused now, saying what to write.
    with pytest.raises(UnprocessableEntityError, match=r"write five fields .* a sixth field is seconds"):
        await client.crons.create("structured", schedule="0 9 * *", input=JOURNEY)
    # croniter's sixth field is seconds: a Quartz 'every five minutes' fired every second of every fifth hour.
    with pytest.raises(UnprocessableEntityError, match=r"is written '\*/5 \* \* \* \* 0' here"):
        await client.crons.create("structured", schedule="0 */5 * * * *", input=JOURNEY)
    for zone in ("localtime", "posix/Europe/Paris", "right/UTC"):
        with pytest.raises(UnprocessableEntityError, match="depends on the host"):
            await client.crons.create("structured", schedule="0 9 * * *", input=JOURNEY, timezone=zone)
    for never in ("0 0 30 2 *", "0 0 1 1 * 0 2025"):  # 30 February; a year gone: a 500 when first armed
        with pytest.raises(UnprocessableEntityError, match="never falls due"):
            await client.crons.create("structured", schedule=never, input=JOURNEY)
    assert await client.crons.count() == 0
    far = await client.crons.create("structured", schedule="0 0 1 1 * 0 2099", input=JOURNEY)  # 73 years on
    assert datetime.fromisoformat(far["next_run_date"]) == datetime(2099, 1, 1, tzinfo=UTC)
    await client.crons.delete(far["cron_id"])
    cron = await client.crons.create("structured", schedule="0 9 * * *", input=JOURNEY)
    with pytest.raises(UnprocessableEntityError, match="never falls due"):
        await client.crons.update(cron["cron_id"], schedule="0 0 31 4 *")
    [kept] = await client.crons.search()
    assert kept["schedule"] == "0 9 * * *" and kept["next_run_date"] == cron["next_run_date"]


async def test_a_crons_end_time_is_the_moment_it_names_and_one_past_the_calendar_is_refused(
    cron_client: LangGraphClient,
) -> None:
    """An end time given with an offset was kept on SQLite as its wall clock, read back as UTC (5 hours late at
    +05:00); one whose UTC moment is past the calendar (9999-12-31T23:59:59-14:00, 0001-01-01T00:00:00+14:00)
    was stored, then answered 500, and on PostgreSQL every later read of it (a search's page, its get, its
    delete) was a 500 too. It is now kept as its UTC moment, and one outside the calendar refused (422)."""
    http = cron_client.http
    created = await http.post(
        "/runs/crons",
        json={
            "assistant_id": "structured",
            "schedule": "0 9 * * *",
            "input": JOURNEY,
            "end_time": "2030-01-01T00:00:00+05:00",
        },
    )
    moment = datetime(2029, 12, 31, 19, 0, tzinfo=UTC)
    assert datetime.fromisoformat(created["end_time"]) == moment
    [found] = await cron_client.crons.search()
    assert datetime.fromisoformat(found["end_time"]) == moment
    for end_time in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
        with pytest.raises(UnprocessableEntityError, match="outside the years"):
            await http.post(
                "/runs/crons",
                json={"assistant_id": "structured", "schedule": "0 9 * * *", "input": JOURNEY, "end_time": end_time},
            )
        with pytest.raises(UnprocessableEntityError, match="outside the years"):
            await http.patch(f"/runs/crons/{created['cron_id']}", json={"end_time": end_time})
    [kept] = await cron_client.crons.search(limit=100)
    assert kept["cron_id"] == created["cron_id"] and datetime.fromisoformat(kept["end_time"]) == moment
    await cron_client.crons.delete(created["cron_id"])


async def test_a_cron_whose_years_end_fires_its_last_tick_and_is_spent(
    cron_client: LangGraphClient, clock: VirtualClock, passes: SchedulerPasses
) -> None:
    """A seven-field schedule with a year fires its ticks, then stops: its last firing made no run, and its
    timer failed at every pass for ever (the next tick after the last one was an error, not the end)."""
    client = cron_client
    cron = await client.crons.create("structured", schedule="0 9 3 3 * 0 2026", input=JOURNEY, on_run_completed="keep")
    assert datetime.fromisoformat(cron["next_run_date"]) == datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
    clock.set(datetime(2026, 3, 3, 9, 0, tzinfo=UTC))
    assert len(await cron_threads(client, passes)) == 1
    [spent] = await client.crons.search()
    assert spent["next_run_date"] is None
    clock.set(datetime(2027, 3, 3, 9, 0, tzinfo=UTC))
    assert len(await cron_threads(client, passes)) == 1


async def test_a_firing_retried_after_its_run_was_written_makes_no_second_run(
    cron_client: LangGraphClient, clock: VirtualClock, passes: SchedulerPasses, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The firing's run commits, then the timer's own update fails (the database went away, or the process
    died there): the timer stays claimed, and once its lease is up the next pass fires it again. That retry
    made a second run of the same tick; it finds the first."""
    client = cron_client
    failed: list[str] = []
    fired_statement = TimerStore.fired_statement

    def failing_once(self: TimerStore, timer: Timer, worker: str, **options: Any) -> Any:
        if timer.purpose == "cron" and not failed:
            failed.append(timer.timer_id)
            raise ConnectionResetError("the database went away after the firing's run was committed")
        return fired_statement(self, timer, worker, **options)

    monkeypatch.setattr(TimerStore, "fired_statement", failing_once)
    cron = await client.crons.create("structured", schedule="0 9 * * *", input=JOURNEY, on_run_completed="keep")
    clock.set(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    [first] = await cron_threads(client, passes)
    assert failed  # the firing made its run, then failed
    clock.set(datetime(2026, 3, 2, 9, 1, 1, tzinfo=UTC))  # the claim's lease (60 s) is up: fired again
    assert [t["thread_id"] for t in await cron_threads(client, passes)] == [first["thread_id"]]
    [run] = await client.runs.list(first["thread_id"])
    assert run["metadata"]["cron_due_at"] == datetime(2026, 3, 2, 9, 0, tzinfo=UTC).isoformat()
    assert (await client.runs.join(first["thread_id"], run["run_id"]))["current_step"] == "upload_content"
    [moved_on] = await client.crons.search()
    assert moved_on["cron_id"] == cron["cron_id"]
    assert datetime.fromisoformat(moved_on["next_run_date"]) == datetime(2026, 3, 3, 9, 0, tzinfo=UTC)


async def test_a_cron_whose_firing_keeps_failing_is_retried_with_backoff_then_an_incident_and_goes_on_ticking(
    cron_client: LangGraphClient,
    cron_server: tuple[str, SchedulerPasses],
    clock: VirtualClock,
    passes: SchedulerPasses,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A firing whose run could not be created was claimed again at every lease (each minute) for ever, said
    nowhere but a warning, and the cron never reached its next tick. Now it is tried again with a doubling
    backoff (15 s, 30 s, 1 min, 2 min); after five attempts the tick is an incident (its own failed timer, listed
    by GET /runs/crons/{id}/incidents and counted by /metrics) while the cron goes on to its next tick; POST
    /runs/crons/{id}/retry fires the failed tick once, making its run (once), and the incident is gone."""
    client = cron_client
    tried: list[datetime] = []
    create_run = RunStore.create_run

    async def refusing(self: RunStore, **options: Any) -> Any:
        if "cron_id" in options["metadata"] and down:
            tried.append(clock.now())
            raise RuntimeError("the run queue refused the run")
        return await create_run(self, **options)

    down = True
    monkeypatch.setattr(RunStore, "create_run", refusing)
    cron = await client.crons.create("structured", schedule="0 9 * * *", input=JOURNEY, on_run_completed="keep")
    nine = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    for moment in (0, 14, 15, 44, 45, 104, 105, 224, 225, 600):  # seconds after nine
        clock.set(nine + timedelta(seconds=moment))
        assert await cron_threads(client, passes) == []
    assert [(t - nine).total_seconds() for t in tried] == [0, 15, 45, 105, 225]  # then no more
    [moved_on] = await client.crons.search()
    assert datetime.fromisoformat(moved_on["next_run_date"]) == datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
    [incident] = await client.http.get(f"/runs/crons/{cron['cron_id']}/incidents")
    assert datetime.fromisoformat(incident["due_at"]) == nine and incident["attempts"] == 5
    assert incident["error_type"] == "RuntimeError" and "the run queue refused the run" in incident["error"]
    async with httpx.AsyncClient(base_url=cron_server[0]) as http:
        assert 'journeys_incidents{purpose="cron"} 1.0' in (await http.get("/metrics")).text

    down = False
    retried = await client.http.post(f"/runs/crons/{cron['cron_id']}/retry", json={})
    assert [i["due_at"] for i in retried] == [incident["due_at"]]
    [made] = await cron_threads(client, passes)
    [run] = await client.runs.list(made["thread_id"])
    assert run["metadata"]["cron_due_at"] == nine.isoformat()
    assert (await client.runs.join(made["thread_id"], run["run_id"]))["current_step"] == "upload_content"
    assert await client.http.get(f"/runs/crons/{cron['cron_id']}/incidents") == []
    async with httpx.AsyncClient(base_url=cron_server[0]) as http:
        assert 'journeys_incidents{purpose="cron"} 0.0' in (await http.get("/metrics")).text
    with pytest.raises(ConflictError, match="no failed tick"):
        await client.http.post(f"/runs/crons/{cron['cron_id']}/retry", json={})
    clock.set(datetime(2026, 3, 3, 9, 0, tzinfo=UTC))  # the next tick fires as ever
    assert len(await cron_threads(client, passes)) == 2


async def test_a_search_filter_with_an_unknown_operator_is_refused_not_a_server_error(
    sdk_client: LangGraphClient,
) -> None:
    await sdk_client.store.put_item(["docs"], "a", {"x": 1})
    found = await sdk_client.store.search_items(["docs"], filter={"x": {"$gte": 1}})
    assert [i["key"] for i in found["items"]] == ["a"]
    with pytest.raises(UnprocessableEntityError, match="unknown operator"):  # was a 500 (the store's ValueError)
        await sdk_client.store.search_items(["docs"], filter={"x": {"bad": [1]}})


@pytest.mark.parametrize("field", ["(a+)+$", "$where", "a b", "x') OR 1=1 --"])
async def test_a_search_filter_on_a_field_name_no_store_takes_is_refused_not_a_server_error(
    sdk_client: LangGraphClient, field: str
) -> None:
    """The SQLite store refuses a filter field outside [A-Za-z0-9_.-] with a ValueError: a 500 on SQLite, an
    answer on PostgreSQL. Every store now answers 422, naming the field and what a field may hold."""
    await sdk_client.store.put_item(["docs"], "a", {"x": 1})
    with pytest.raises(UnprocessableEntityError, match="letters, digits"):
        await sdk_client.store.search_items(["docs"], filter={field: 1})


async def test_a_store_value_or_filter_no_store_can_encode_is_refused_not_a_server_error(
    sdk_client: LangGraphClient,
) -> None:
    """The SQLite and PostgreSQL stores encode values and filters with orjson, which takes no integer past 64 bits,
    and the SQLite store's JSON path of a filter on '.' is no path: each was a 500 (an item put with 10**20, a
    search for [10**20] or 10**400, on either store). Every store now answers 422 naming where, and serves on.
    (Sent as JSON text: the SDK's own encoder, orjson too, cannot send such an integer.)"""
    raw = sdk_client.http.client

    async def sent(method: str, path: str, body: dict[str, Any]) -> httpx.Response:
        return await raw.request(method, path, content=json.dumps(body), headers={"content-type": "application/json"})

    big = 10**20
    refused = await sent("PUT", "/store/items", {"namespace": ["docs"], "key": "a", "value": {"n": big}})
    assert refused.status_code == 422 and "body.value.n is an integer out of range" in refused.text, refused.text
    await sdk_client.store.put_item(["docs"], "a", {"n": 1, "nested": {"x": 2}})
    for condition in ([big], 10**400, {"$gt": big}, {"$eq": [big]}):
        refused = await sent("POST", "/store/items/search", {"namespace_prefix": ["docs"], "filter": {"n": condition}})
        assert refused.status_code == 422 and "integer out of range" in refused.text, refused.text
    for field in (".", "a.", ".a", "a..b"):
        with pytest.raises(UnprocessableEntityError, match="nested field's path"):
            await sdk_client.store.search_items(["docs"], filter={field: 1})
    found = await sdk_client.store.search_items(["docs"], filter={"n": 1})
    assert [item["key"] for item in found["items"]] == ["a"]


async def test_a_search_filter_on_a_nested_field_or_a_range_finds_the_same_items_on_every_store(
    sdk_client: LangGraphClient, store_url: str
) -> None:
    """A nested field named by its path ('nested.x') was a JSON path to the SQLite store and a top-level field
    'nested.x' to the memory and PostgreSQL stores (no items, silently; a 500 on memory for a range); and
    PostgreSQL's compared a range as text (9 > 10). Both now find on every store what they find on SQLite. The
    object form ({"nested": {"x": 2}}), which LangGraph's stores differ on, is refused naming the path."""
    await sdk_client.store.put_item(["docs"], "a", {"nested": {"x": 2, "tag": "red"}})
    await sdk_client.store.put_item(["docs"], "b", {"nested": {"x": 3}, "n": 1})
    await sdk_client.store.put_item(["docs"], "c", {"nested.x": 2})  # a top-level field with a '.' in its name

    async def keys(namespace: str, filter: dict[str, Any]) -> list[str]:
        return sorted(i["key"] for i in (await sdk_client.store.search_items([namespace], filter=filter))["items"])

    paths: list[dict[str, Any]] = [
        {"nested.x": 2},
        {"nested.x": {"$gt": 2}},
        {"nested.tag": "red", "nested.x": {"$eq": 2}},
        {"nested.x": {"$ne": 2}},
    ]
    assert [await keys("docs", filter) for filter in paths] == [["a"], ["b"], ["a"], ["b"]]
    with pytest.raises(UnprocessableEntityError, match=r"named by its path, as 'nested\.x'"):
        await keys("docs", {"nested": {"x": 2}})
    both = {"nested": {"$ne": None}, "nested.x": 2}  # a field and one inside it: the memory store cannot merge them
    if store_url == "memory://":
        with pytest.raises(UnprocessableEntityError, match="a memory store cannot filter on a field and on a field"):
            await keys("docs", both)
    else:
        assert await keys("docs", both) == ["a"]
    assert await keys("docs", {"n": 1}) == ["b"]
    for n in (9, 10, 100):
        await sdk_client.store.put_item(["scores"], str(n), {"n": n, "at": {"n": n}})
    for field in ("n", "at.n"):
        found = [
            await keys("scores", {field: c})
            for c in ({"$gt": 10}, {"$gte": 10}, {"$lt": 10}, {"$lte": 9.5}, {"$gt": 9, "$lt": 100})
        ]
        assert found == [["100"], ["10", "100"], ["9"], ["9"], ["10"]], field


async def test_an_item_whose_namespace_and_key_no_store_can_index_is_refused_on_every_store(
    sdk_client: LangGraphClient,
) -> None:
    """PostgreSQL's store indexes an item's namespace and key in a B-tree (entries of at most 2704 bytes): an item
    under 15 labels of 200 random characters, or with a key of 1000 emoji (4000 bytes), was a 500 there and kept
    on SQLite and memory. Every store now refuses one past 2000 bytes (422, saying how many it took); one
    within is kept."""
    labels = ["".join(random.choices(string.ascii_letters, k=200)) for _ in range(15)]
    emoji = "".join(chr(random.randrange(0x1F300, 0x1F5FF)) for _ in range(1000))
    for namespace, key in ((labels, "k"), (["docs"], emoji)):
        with pytest.raises(UnprocessableEntityError, match="bytes as stored"):
            await sdk_client.store.put_item(namespace, key, {"a": 1})
    await sdk_client.store.put_item(labels[:5], emoji[:200], {"a": 1})  # 1005 + 800 bytes
    found = await sdk_client.store.get_item(labels[:5], emoji[:200])
    assert found is not None and found["value"] == {"a": 1}


async def test_a_cron_runs_a_created_assistant_with_its_config_and_the_crons_own(
    cron_client: LangGraphClient, clock: VirtualClock, passes: SchedulerPasses
) -> None:
    """crons.create takes an assistant made with assistants.create (as runs do), and each firing's run gets
    that assistant's graph, its config and the cron's own config and context, as a run created with them
    would. The cron was refused (404 'no assistant'), and a cron's config and context were stored but never
    given to its runs. So were its stream_mode (its runs recorded no chunk for runs.join_stream) and
    multitask_strategy (a cron on a busy thread with reject queued its run anyway): applied now."""
    client = cron_client
    mine = await client.assistants.create("structured", config={"configurable": {"team": "ops", "region": "eu"}})
    cron = await client.crons.create(
        mine["assistant_id"],
        schedule="0 9 * * *",
        input=JOURNEY,
        config={"tags": ["nightly"]},  # with context, not configurable: the two together are refused (400)
        context={"tier": "gold"},
        on_run_completed="keep",
        stream_mode=["values", "updates"],
        stream_resumable=True,
    )
    assert cron["assistant_id"] == mine["assistant_id"]
    assert [c["cron_id"] for c in await client.crons.search(assistant_id=mine["assistant_id"])] == [cron["cron_id"]]
    clock.set(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    [fired] = await cron_threads(client, passes)
    [run] = await client.runs.list(fired["thread_id"])
    assert run["assistant_id"] == mine["assistant_id"]
    # Each given alone is the other too (as on the Agent Server): the assistant's under the cron's.
    both = {"team": "ops", "region": "eu", "tier": "gold"}
    assert run["kwargs"]["config"] == {"configurable": both, "tags": ["nightly"]}
    assert run["kwargs"]["context"] == both
    assert (await client.runs.join(fired["thread_id"], run["run_id"]))["current_step"] == "upload_content"
    assert run["kwargs"]["stream_mode"] == ["values", "updates"]
    streamed = [
        part.event async for part in client.runs.join_stream(fired["thread_id"], run["run_id"], last_event_id="-1")
    ]
    assert {"values", "updates"} <= set(streamed), streamed

    # A cron's interrupt_before/after and webhook (refused before: 422 "crons do not take webhook,
    # interrupt_before yet") are its firings' runs', as a run created with them: it stops at the breakpoint and
    # its webhook is called when it ends.
    hello: dict[str, Any] = {"messages": [{"role": "user", "content": "hello"}]}
    port = free_port()
    with receiving(port) as calls:
        stopping = str((await client.threads.create())["thread_id"])
        hook = f"http://127.0.0.1:{port}/hook"
        given = await client.crons.create_for_thread(
            stopping, "guide", schedule="30 9 * * *", input=hello, interrupt_before=["agent"], webhook=hook
        )
        assert {k: given["payload"][k] for k in ("interrupt_before", "webhook")} == {
            "interrupt_before": ["agent"],
            "webhook": hook,
        }
        clock.set(datetime(2026, 3, 2, 9, 30, tzinfo=UTC))
        await passes.complete()
        [stopped] = await client.runs.list(stopping)
        await client.runs.join(stopping, stopped["run_id"])
        assert stopped["kwargs"]["interrupt_before"] == ["agent"]
        assert (await client.threads.get_state(stopping))["next"] == ["agent"]
        for _ in range(600):  # the webhook is posted as the run ends: a moment after join answers
            if calls:
                break
            await asyncio.sleep(0.05)
        assert [(c["run_id"], c["status"]) for c in calls] == [(stopped["run_id"], "success")]

    # On a thread with a run active (pending for days), a cron that rejects double texts skips its tick.
    chat = str((await client.threads.create())["thread_id"])
    later = await client.runs.create(chat, "guide", input=hello, after_seconds=7 * 86_400)
    await client.crons.create_for_thread(chat, "guide", schedule="0 10 * * *", input=hello, multitask_strategy="reject")
    clock.set(datetime(2026, 3, 2, 10, 0, tzinfo=UTC))
    await passes.complete()
    assert [r["run_id"] for r in await client.runs.list(chat)] == [later["run_id"]]


@pytest.mark.parametrize("withdrawal", ["disabled", "deleted"])
async def test_a_cron_disabled_or_deleted_as_it_fires_makes_no_run(
    cron_client: LangGraphClient,
    clock: VirtualClock,
    passes: SchedulerPasses,
    monkeypatch: pytest.MonkeyPatch,
    withdrawal: str,
) -> None:
    """The operator disables (or deletes) the cron just after its firing read it: the firing made that run
    anyway, on a new thread, after the disable had answered."""
    client = cron_client
    cron = await client.crons.create("structured", schedule="0 9 * * *", input=JOURNEY)
    get, withdrawn = CronStore.get, []

    async def read_then_withdraw(self: CronStore, cron_id: str, **options: Any) -> Any:
        found = await get(self, cron_id, **options)
        if found is not None and not withdrawn:  # the firing has read the cron enabled: withdraw it now
            withdrawn.append(cron_id)  # first: the update reads the cron again
            if withdrawal == "disabled":
                await self.update(cron_id, {"enabled": False})
            else:
                await self.delete(cron_id)
        return found

    monkeypatch.setattr(CronStore, "get", read_then_withdraw)
    clock.set(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    assert await cron_threads(client, passes) == []
    assert withdrawn
    monkeypatch.undo()
    if withdrawal == "disabled":
        [paused] = await client.crons.search()
        assert paused["cron_id"] == cron["cron_id"] and paused["enabled"] is False and paused["next_run_date"] is None
    else:
        assert await client.crons.count() == 0


async def test_a_cron_without_a_thread_deletes_its_firings_threads_by_default(
    cron_client: LangGraphClient, clock: VirtualClock, passes: SchedulerPasses
) -> None:
    """``on_run_completed="delete"``, the default as on the Agent Server (it was "keep"): each firing's new thread
    is deleted when its run ends; its runs' journeys stay."""
    client = cron_client
    cron = await client.crons.create("structured", schedule="0 9 * * *", input=JOURNEY)
    assert cron["on_run_completed"] == "delete"
    clock.set(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    for _ in range(100):
        await passes.complete()
        if not await client.threads.search():
            break
    assert await client.threads.search() == []
    found = await client.crons.search()
    assert len(found) == 1 and datetime.fromisoformat(found[0]["next_run_date"]) == datetime(
        2026, 3, 3, 9, 0, tzinfo=UTC
    )


async def test_store_items_say_when_in_utc_on_every_backend(sdk_client: LangGraphClient) -> None:
    """An item's ``created_at`` and ``updated_at`` carry their UTC offset, as the Agent Server's do: the SQLite
    store's were naive ("2026-12-05T17:36:44"), which JavaScript's ``Date`` reads as local time."""
    before = datetime.now(UTC).replace(microsecond=0)
    await sdk_client.store.put_item(["notes"], key="k", value={"a": 1})
    item = await sdk_client.store.get_item(["notes"], key="k")
    [found] = (await sdk_client.store.search_items(["notes"]))["items"]
    assert item is not None
    for answer in (item, found):
        for name in ("created_at", "updated_at"):
            when = datetime.fromisoformat(answer[name])
            assert when.utcoffset() is not None, answer
            assert abs((when - before).total_seconds()) < 120, answer
