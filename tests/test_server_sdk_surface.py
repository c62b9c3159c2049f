"""Every public method of ``langgraph-sdk``'s ``get_client()`` against a real server on SQLite and PostgreSQL.

Each section drives one sub-client (``client.assistants``, ``client.threads``, ``client.runs``, …) through a
:class:`Surface` that records which of its public methods were called, asserts the shape of every answer
against the SDK's own TypedDicts (:func:`assert_shape`), and ends by checking that no public method of that
sub-client was left out (:data:`LEFT_OUT` names the deliberate exceptions, with the reason).

To add a section (crons, store): write ``async def test_<name>_surface(client, ...)`` taking a
``Surface(client.<name>)`` and finish it with ``surface.assert_all_called()``.
"""

from __future__ import annotations

import asyncio
import collections.abc
import types
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any, Literal, NotRequired, Required, Union, get_args, get_origin

import pytest
import typing_extensions
from langgraph.pregel.remote import RemoteGraph
from langgraph.types import Command
from langgraph_sdk import get_client, get_sync_client
from langgraph_sdk import schema as sdk
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import ConflictError, NotFoundError, UnprocessableEntityError

from agents import AgentRegistry, EchoAgent
from server.app import create_app
from server.settings import ApiKey, Settings
from tests.server_support import serving

pytestmark = pytest.mark.slow

SCOPES = frozenset({"read", "runs", "journeys", "tasks"})
KEYS = {"key-ana": ApiKey("ana", SCOPES), "key-bob": ApiKey("bob", SCOPES)}
CONTENT_MIGRATION: dict[str, Any] = {
    "journey_type": "content_migration",
    "requirements": {"source": "a", "target": "b"},
}
# Public methods deliberately not served, with the reason (the README's server section says the same).
LEFT_OUT: dict[str, dict[str, str]] = {}


# --- shapes -----------------------------------------------------------------------------------------------


def assert_shape(value: Any, expected: Any, where: str = "answer") -> None:
    """``value`` (decoded JSON) conforms to the SDK type ``expected``: every required key of a TypedDict is
    there, and every key it declares holds a value of the declared type (datetimes as ISO strings)."""
    origin = get_origin(expected)
    if expected is Any or expected is object:
        return
    if origin in (Required, NotRequired):
        assert_shape(value, get_args(expected)[0], where)
        return
    if origin is Literal:
        assert value in get_args(expected), f"{where}: {value!r} is none of {get_args(expected)}"
        return
    if origin in (Union, types.UnionType):
        problems = []
        for option in get_args(expected):
            try:
                assert_shape(value, option, where)
                return
            except AssertionError as exc:
                problems.append(str(exc))
        raise AssertionError(f"{where}: {value!r} matches no option: {problems}")
    if expected is type(None):
        assert value is None, f"{where}: {value!r} is not null"
        return
    if typing_extensions.is_typeddict(expected):
        assert isinstance(value, dict), f"{where}: {value!r} is not an object"
        hints = typing_extensions.get_type_hints(expected, include_extras=True)
        not_required: Any = NotRequired  # get_origin is typed as answering no special form
        optional = {k for k, h in hints.items() if get_origin(h) is not_required}  # stringified: not in the keys
        missing = set(expected.__required_keys__) - optional - set(value)
        assert not missing, f"{where}: missing {sorted(missing)} of {expected.__name__}"
        for key, hint in hints.items():
            if key in value:
                assert_shape(value[key], hint, f"{where}.{key}")
        return
    if expected is datetime:
        assert isinstance(value, str), f"{where}: {value!r} is not a date-time string"
        datetime.fromisoformat(value)
        return
    if origin in (list, collections.abc.Sequence) or expected in (list, collections.abc.Sequence):
        assert isinstance(value, list), f"{where}: {value!r} is not an array"
        (item,) = get_args(expected) or (Any,)
        for i, element in enumerate(value):
            assert_shape(element, item, f"{where}[{i}]")
        return
    if origin in (dict, collections.abc.Mapping) or expected in (dict, collections.abc.Mapping):
        assert isinstance(value, dict), f"{where}: {value!r} is not an object"
        args = get_args(expected)
        if args:
            for key, element in value.items():
                assert_shape(element, args[1], f"{where}[{key!r}]")
        return
    if isinstance(expected, type) and typing_extensions.is_protocol(expected):  # Context's "TypedDict-like" options
        assert isinstance(value, dict), f"{where}: {value!r} is not an object"
        return
    if expected is float:
        assert isinstance(value, int | float) and not isinstance(value, bool), f"{where}: {value!r} is no number"
        return
    if isinstance(expected, type):
        assert isinstance(value, expected), f"{where}: {value!r} is not {expected.__name__}"
        return
    raise AssertionError(f"{where}: cannot check against {expected!r}")


class Surface:
    """One SDK sub-client whose method calls are recorded, so a section proves it called every one."""

    def __init__(self, name: str, target: Any) -> None:
        self.name = name
        self._target = target
        self.called: set[str] = set()

    def __getattr__(self, attribute: str) -> Any:
        found = getattr(self._target, attribute)
        if callable(found) and not attribute.startswith("_"):
            self.called.add(attribute)
        return found

    def public_methods(self) -> set[str]:
        cls = type(self._target)
        return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}

    def assert_all_called(self) -> None:
        left_out = set(LEFT_OUT.get(self.name, {}))
        missing = self.public_methods() - self.called - left_out
        assert not missing, f"{self.name}: methods never called: {sorted(missing)}"


# --- the server -------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url: str = request.getfixturevalue(f"{request.param}_url")
    registry = AgentRegistry()
    registry.register("check_expense", EchoAgent("check_expense", {"within_policy": True}))
    app = create_app(Settings(database_url=url, api_keys=KEYS), runtime_options={"agents": registry})
    with serving(app) as base:
        yield base


@pytest.fixture
async def client(server_url: str) -> AsyncIterator[LangGraphClient]:
    async with get_client(url=server_url, api_key="key-ana") as sdk_client:
        yield sdk_client


@pytest.fixture
async def bob(server_url: str) -> AsyncIterator[LangGraphClient]:
    async with get_client(url=server_url, api_key="key-bob") as sdk_client:
        yield sdk_client


# --- assistants -------------------------------------------------------------------------------------------


async def test_assistants_surface(client: LangGraphClient, bob: LangGraphClient) -> None:
    assistants = Surface("assistants", client.assistants)
    system = await assistants.get("structured")
    assert_shape(system, sdk.Assistant)
    assert system["metadata"]["created_by"] == "system"
    found = await assistants.search(limit=50)
    assert_shape(found, list[sdk.Assistant])
    assert {"structured", "session", "mvp", "saga", "lifecycle", "process", "guide"} <= {
        a["assistant_id"] for a in found
    }
    page = await assistants.search(graph_id="structured", response_format="object")
    assert_shape(page, sdk.AssistantsSearchResponse)
    assert [a["assistant_id"] for a in page["assistants"]] == ["structured"]
    graph = await assistants.get_graph("structured")
    assert any(n["id"] == "upload_content.await" for n in graph["nodes"])
    schemas = await assistants.get_schemas("structured")
    assert_shape(schemas, sdk.GraphSchema)
    assert schemas["graph_id"] == "structured" and schemas["input_schema"]
    subgraphs = await assistants.get_subgraphs("structured")
    assert_shape(subgraphs, dict[str, sdk.GraphSchema])

    # Ana's own assistant on the structured graph, with config and context of its own (context, not
    # config.configurable as well: the Agent Server refuses both at once).
    created = await assistants.create(
        "structured",
        config={"tags": ["ops"]},
        context={"region": "eu"},
        metadata={"owner_team": "migrations"},
        name="Migrations",
        description="content migrations for the ops team",
    )
    assert_shape(created, sdk.Assistant)
    aid = created["assistant_id"]
    assert (created["graph_id"], created["version"], created["name"]) == ("structured", 1, "Migrations")
    assert created["config"]["tags"] == ["ops"] and created["context"] == {"region": "eu"}
    again = await assistants.create("structured", assistant_id=aid, if_exists="do_nothing", name="ignored")
    assert (again["assistant_id"], again["name"]) == (aid, "Migrations")
    with pytest.raises(ConflictError):
        await assistants.create("structured", assistant_id=aid)
    with pytest.raises(NotFoundError):
        await assistants.create("no-such-graph")
    bobs = await bob.assistants.create("session", name="Bob's sessions")

    updated = await assistants.update(aid, context={"region": "us"}, metadata={"reviewed": True})
    assert_shape(updated, sdk.Assistant)
    assert updated["version"] == 2 and updated["context"] == {"region": "us"}
    assert updated["metadata"]["owner_team"] == "migrations" and updated["metadata"]["reviewed"] is True
    versions = await assistants.get_versions(aid)
    assert_shape(versions, list[sdk.AssistantVersion])
    assert [v["version"] for v in versions] == [2, 1]
    latest = await assistants.set_latest(aid, 1)
    assert_shape(latest, sdk.Assistant)
    assert latest["version"] == 1 and latest["context"] == {"region": "eu"}
    assert (await assistants.get(aid))["context"] == {"region": "eu"}
    # Updates made at once each make a version of their own and merge their metadata into the others': on
    # PostgreSQL two took one version number (500, a unique violation), and on every backend an update read the
    # version in use before the others wrote theirs and dropped their metadata.
    await asyncio.gather(*(assistants.update(aid, metadata={f"tag{n}": n}) for n in range(8)))
    assert [v["version"] for v in await assistants.get_versions(aid, limit=20)] == list(range(10, 0, -1))
    merged = await assistants.get(aid)
    assert merged["metadata"] == {"owner_team": "migrations", **{f"tag{n}": n for n in range(8)}}
    assert merged["version"] == 10 and merged["context"] == {"region": "eu"}

    assert await assistants.count(graph_id="structured") == 2
    assert await assistants.count(metadata={"owner_team": "migrations"}) == 1
    assert [a["assistant_id"] for a in await assistants.search(name="Migrations")] == [aid]

    # A run on the created assistant runs its graph; the run says which assistant it ran.
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], aid, input={**CONTENT_MIGRATION, "user_id": "ana"})
    assert run["assistant_id"] == aid
    joined = await client.runs.join(thread["thread_id"], run["run_id"])
    assert joined["current_step"] == "upload_content"

    with pytest.raises(ConflictError):  # the built-in patterns are system assistants
        await assistants.delete("structured")
    await assistants.delete(aid, delete_threads=True)
    with pytest.raises(NotFoundError):
        await assistants.get(aid)
    with pytest.raises(NotFoundError):  # the thread its run ran on went with it
        await client.threads.get(thread["thread_id"])
    await bob.assistants.delete(bobs["assistant_id"])
    assert await assistants.count(graph_id="structured") == 1
    assistants.assert_all_called()


# --- threads ----------------------------------------------------------------------------------------------


async def _interrupted_journey(client: LangGraphClient, user_id: str, **metadata: Any) -> str:
    """A structured journey for ``user_id`` (the caller's own: naming another needs the impersonate scope)."""
    thread = await client.threads.create(metadata=metadata)
    await client.runs.wait(thread["thread_id"], "structured", input={**CONTENT_MIGRATION, "user_id": user_id})
    return str(thread["thread_id"])


async def test_threads_surface(client: LangGraphClient, bob: LangGraphClient) -> None:
    threads = Surface("threads", client.threads)
    created = await threads.create(metadata={"team": "a"})
    assert_shape(created, sdk.Thread)
    tid = created["thread_id"]
    assert_shape(await threads.get(tid), sdk.Thread)
    # include=["ttl"], the Agent Server's thread TTL: a thread created without one (and no server default) has none,
    # so null, not left out as if include were not understood; a field no thread read includes is refused.
    included = await threads.get(tid, include=["ttl"])
    assert_shape(included, sdk.Thread)
    assert "ttl" in included and included["ttl"] is None, included
    with pytest.raises(UnprocessableEntityError, match="include"):
        await threads.get(tid, include=["ttl", "expiry"])
    # return_minimal (Prefer: return=minimal): no body, None to the client, as the Agent Server's 204; the update holds.
    assert await threads.update(tid, metadata={"stage": "draft"}, return_minimal=True) is None
    assert (await threads.get(tid))["metadata"]["stage"] == "draft"
    updated = await threads.update(tid, metadata={"stage": "review"})
    assert_shape(updated, sdk.Thread)
    assert updated["metadata"]["team"] == "a" and updated["metadata"]["stage"] == "review"
    # Merges made at once each merge into the others' (each read the metadata before the others wrote theirs, and
    # dropped them).
    await asyncio.gather(*(threads.update(tid, metadata={f"tag{n}": n}) for n in range(8)))
    tagged = (await threads.get(tid))["metadata"]
    assert tagged == {"team": "a", "stage": "review", **{f"tag{n}": n for n in range(8)}}

    journeys = [await _interrupted_journey(client, "ana", team="b") for _ in range(3)]
    bobs = await _interrupted_journey(bob, "bob", team="b")
    assert_shape(await threads.search(metadata={"team": "b"}, limit=50), list[sdk.Thread])
    # Each caller searches and counts its own threads only (the security branch's ownership): not Bob's.
    assert bobs not in {t["thread_id"] for t in await threads.search(metadata={"team": "b"}, limit=50)}
    assert await threads.count(metadata={"team": "b"}) == 3
    assert await threads.count(status="interrupted") == 3
    assert await threads.count(metadata={"team": "a"}) == 1
    assert await bob.threads.count(metadata={"team": "b"}) == 1

    state = await threads.get_state(journeys[0])
    assert_shape(state, sdk.ThreadState)
    await client.runs.wait(journeys[0], "structured", command={"resume": {"files": 3}}, context={"tone": "dry"})
    history = await threads.get_history(journeys[0], limit=20)
    assert_shape(history, list[sdk.ThreadState])
    # The Agent Server's fields the SDK selects and sorts by (ThreadSelectField, ThreadSortBy): the config and
    # context of a thread's latest run, and when its state last changed (its latest checkpoint).
    picked = await threads.search(
        metadata={"team": "b"}, select=["thread_id", "config", "context"], sort_by="state_updated_at", limit=50
    )
    assert [t["thread_id"] for t in picked] == [journeys[0], *reversed(journeys[1:])], picked
    assert all(set(t) == {"thread_id", "config", "context"} for t in picked)
    assert picked[0]["context"] == {"tone": "dry"} and picked[1]["context"] == {}
    ascending = await threads.search(metadata={"team": "b"}, sort_by="state_updated_at", sort_order="asc")
    assert [t["thread_id"] for t in ascending] == [*journeys[1:], journeys[0]]
    assert ascending[-1]["state_updated_at"] == history[0]["created_at"]
    # The state at an earlier checkpoint, by checkpoint (POST …/state/checkpoint) and by id (GET).
    earlier = state["checkpoint"]
    at = await threads.get_state(journeys[0], checkpoint=earlier)
    assert_shape(at, sdk.ThreadState)
    assert at["checkpoint"]["checkpoint_id"] == earlier["checkpoint_id"] and at["next"] == state["next"]
    by_id = await threads.get_state(journeys[0], checkpoint_id=earlier["checkpoint_id"])
    assert by_id["values"] == state["values"]
    written = await threads.update_state(journeys[0], {"context": {"note": "ops"}})
    assert_shape(written, sdk.ThreadUpdateStateResponse)

    # A copy of a chat thread has the same state under a new id; a journey thread is refused (its progress
    # is in the event log of its instance, which a copy of checkpoints would not carry).
    guide = await threads.create()
    hello: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    await client.runs.wait(guide["thread_id"], "guide", input=hello)
    copy = await threads.copy(guide["thread_id"])
    assert_shape(copy, sdk.Thread)
    assert copy["thread_id"] != guide["thread_id"]
    assert (await threads.get_state(copy["thread_id"]))["values"] == (await threads.get_state(guide["thread_id"]))[
        "values"
    ]
    with pytest.raises(ConflictError):
        await threads.copy(journeys[1])

    # join_stream: the chunks of the thread's runs as they come (from its first, -1), run after run.
    run = await client.runs.create(journeys[1], "structured", command={"resume": {"files": 1}}, stream_mode="updates")
    parts = []
    async for part in await threads.join_stream(journeys[1], last_event_id="-1"):
        parts.append(part)
        if part.event == "metadata" and part.data.get("run_id") == run["run_id"] and "status" in part.data:
            break
    assert any(p.event == "updates" for p in parts), [p.event for p in parts]
    await client.runs.join(journeys[1], run["run_id"])

    # stream: the v3 thread stream. A chat run's tokens through the SDK's messages projection, its output
    # once its lifecycle ended; then a journey started and its interrupt answered on the same protocol.
    async with threads.stream(assistant_id="guide") as chat:
        await chat.run.start(input={"messages": [{"role": "user", "content": "what next?"}]})
        # Each message's events reach it as the projection is iterated: its text is read after. The tool the
        # guide's model called reaches the tool-calls projection (the protocol's tools channel), which it never
        # did: no run of the thread stream recorded LangGraph's tools chunks. Both through one subscription
        # (interleave_projections), not two iterated at once: langgraph-sdk 0.4.14 opens a stream per
        # projection, and when the second's answers first it closes the first before its headers came, whose
        # `ready` is then never set, so the first projection waits for good (AsyncThreadStream
        # ._reconcile_stream, ProtocolSseTransport.open_event_stream); a server cannot order the two answers.
        projected = [item async for item in chat.interleave_projections(["messages", "tool_calls"])]
        messages = [item for channel, item in projected if channel == "messages"]
        calls = [item for channel, item in projected if channel == "tool_calls"]
        output = await chat.output.with_timeout(60)
        said = await messages[-1].text
        [call] = calls
        recommended = await call.output
    assert said and output["messages"][-1]["content"] == said
    assert call.name == "recommend_next_pillar" and "pillar_info" in recommended["content"], recommended
    assert (await threads.get(chat.thread_id))["status"] == "idle"
    async with threads.stream(assistant_id="structured") as journey:
        await journey.run.start(input={**CONTENT_MIGRATION, "user_id": "ana"})
        for _ in range(600):
            if journey.interrupted:
                break
            await asyncio.sleep(0.05)
        [waiting] = journey.interrupts
        await journey.run.respond({"files": 2})
        for _ in range(600):
            if len(journey.interrupts) > 1:
                break
            await asyncio.sleep(0.05)
        assert journey.interrupts[-1]["interrupt_id"] != waiting["interrupt_id"]
    assert [r["status"] for r in await client.runs.list(journey.thread_id)] == ["success", "success"]

    # keep_latest: the thread stays with its latest checkpoint only, on SQLite too (it answered 422 there).
    history = await threads.get_history(chat.thread_id, limit=100)
    assert len(history) > 1
    assert await threads.prune([chat.thread_id], strategy="keep_latest") == {"pruned_count": 1}
    [latest] = await threads.get_history(chat.thread_id, limit=100)
    assert (latest["values"], latest["checkpoint"]) == (history[0]["values"], history[0]["checkpoint"])
    pruned = await threads.prune([journeys[2], journeys[1]])
    assert pruned == {"pruned_count": 2}
    with pytest.raises(NotFoundError):
        await threads.get(journeys[2])
    await threads.delete(tid)
    with pytest.raises(NotFoundError):
        await threads.get(tid)
    assert await threads.count(metadata={"team": "b"}) == 1
    assert (await bob.threads.get(bobs))["status"] == "interrupted"
    threads.assert_all_called()


# --- runs -------------------------------------------------------------------------------------------------


async def test_runs_surface(client: LangGraphClient) -> None:
    runs = Surface("runs", client.runs)
    tid = (await client.threads.create())["thread_id"]
    out = await runs.wait(tid, "structured", input={**CONTENT_MIGRATION, "user_id": "ana"})
    assert out["current_step"] == "upload_content"

    # A background run records its chunks, so join_stream replays them after it finished.
    created = await runs.create(tid, "structured", command={"resume": {"files": 2}}, stream_mode=["values"])
    assert_shape(created, sdk.Run)
    assert_shape(await runs.join(tid, created["run_id"]), dict[str, Any])
    replayed = [p async for p in runs.join_stream(tid, created["run_id"])]
    assert [p.event for p in replayed][-1] == "end" and any(p.event == "values" for p in replayed)
    streamed = [p async for p in runs.stream(tid, "structured", command={"resume": {"entities": 1}})]
    assert streamed[0].event == "metadata" and any(p.event == "values" for p in streamed)
    # "tools", which langgraph-sdk's StreamMode names (LangGraph's tool-call events): it was refused (422). The
    # guide's model calls a tool for the question, which its ToolNode runs.
    chat = (await client.threads.create())["thread_id"]
    asked = {"messages": [{"role": "user", "content": "how far am I?"}]}
    told = [p async for p in runs.stream(chat, "guide", input=asked, stream_mode="tools")]
    calls = [p.data for p in told if p.event == "tools"]
    assert [c["event"] for c in calls] == ["tool-started", "tool-finished"], told
    assert calls[0]["tool_name"] == "get_session_progress" and calls[1]["tool_call_id"] == calls[0]["tool_call_id"]
    assert_shape(await runs.get(tid, created["run_id"]), sdk.Run)
    listed = await runs.list(tid, limit=10)
    assert_shape(listed, list[sdk.Run])
    assert len(listed) == 3
    # Each field the SDK's RunSelectField names may be selected, kwargs too.
    kwargs = await runs.list(tid, select=["run_id", "kwargs"])
    assert [set(r) for r in kwargs] == [{"run_id", "kwargs"}] * 3
    asked = kwargs[1]["kwargs"]
    assert asked["stream_mode"] == ["values"] and asked["command"] == {"resume": {"files": 2}}

    # A batch of runs on new threads, each a journey of the caller's own (another user_id needs impersonate),
    # kept when they end (a run on a new thread deletes it by default, as on the Agent Server).
    journey = {"assistant_id": "structured", "input": {**CONTENT_MIGRATION, "user_id": "ana"}, "on_completion": "keep"}
    batch = await runs.create_batch([journey for _ in range(3)])
    assert_shape(batch, list[sdk.Run])
    assert len({r["thread_id"] for r in batch}) == 3
    for run in batch:
        assert (await runs.join(run["thread_id"], run["run_id"]))["current_step"] == "upload_content"

    # Cancel: one run, then many (queued behind a busy thread).
    other = (await client.threads.create())["thread_id"]
    first = await runs.create(other, "structured", input={**CONTENT_MIGRATION, "user_id": "ana"}, after_seconds=60)
    queued = await runs.create(other, "structured", command={"resume": {}}, multitask_strategy="enqueue")
    await runs.cancel(other, queued["run_id"], wait=True)
    assert (await runs.get(other, queued["run_id"]))["status"] == "interrupted"
    await runs.cancel_many(thread_id=other, run_ids=[first["run_id"]])
    assert (await runs.get(other, first["run_id"]))["status"] == "interrupted"

    await runs.delete(tid, created["run_id"])
    with pytest.raises(NotFoundError):
        await runs.get(tid, created["run_id"])
    runs.assert_all_called()


# --- LangGraph's RemoteGraph ------------------------------------------------------------------------------


async def test_remote_graph_invoke_stream_state_history_and_update(server_url: str) -> None:
    async with get_client(url=server_url, api_key="key-ana") as client:
        with get_sync_client(url=server_url, api_key="key-ana") as sync_client:
            await _drive_remote_graph(RemoteGraph("structured", client=client, sync_client=sync_client))


async def _drive_remote_graph(remote: RemoteGraph) -> None:
    assert remote.client is not None
    tid = (await remote.client.threads.create())["thread_id"]
    config: Any = {"configurable": {"thread_id": tid}}
    out = await remote.ainvoke({**CONTENT_MIGRATION, "user_id": "ana"}, config)
    assert out["__interrupt__"][0]["value"]["task"] == "upload_content"
    state = await remote.aget_state(config)
    assert state.next == ("upload_content.await",)
    chunks = [c async for c in remote.astream(Command(resume={"files": 2}), config, stream_mode="values")]
    assert chunks[-1]["step_input"] == {"files": 2}
    state = await remote.aget_state(config)
    assert state.next == ("analyze_content.await",)
    history = [s async for s in remote.aget_state_history(config)]
    assert (
        history and history[0].config["configurable"]["checkpoint_id"] == state.config["configurable"]["checkpoint_id"]
    )
    written = await remote.aupdate_state(config, {"context": {"note": "remote"}})
    assert written["configurable"]["checkpoint_id"]
    assert (await remote.aget_state(config)).values["context"] == {"note": "remote"}
