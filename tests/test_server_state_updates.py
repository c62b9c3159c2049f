"""``threads.update_state`` from an earlier checkpoint, over real HTTP with the official langgraph-sdk client, on
memory, SQLite and PostgreSQL: a chat thread forks from that checkpoint (as LangGraph does); a journey's thread
refuses (its completed steps are in its event log, which a fork of its checkpoints would not carry), and so
does a checkpoint the thread does not have (reading it too). The checkpoint used to be ignored: the update
went on the latest state, silently; and the state "at" an unknown checkpoint read as empty."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError

from checkpoints.clock import VirtualClock
from checkpoints.runs import ThreadTTL
from server.app import create_app
from server.settings import ApiKey, Settings
from tests.server_support import serving

pytestmark = pytest.mark.slow
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SWEEP_EVERY = 0.05  # seconds between the server's thread TTL sweeps


def refused_problem(answer: httpx.Response) -> str:
    assert answer.status_code == 422, answer.text
    return str(answer.json()["problems"])


HI: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
KEYS = {"ops-key": ApiKey("ana", frozenset({"admin"}))}


async def test_a_state_update_from_an_earlier_checkpoint_forks_a_chat_thread_and_is_refused_on_a_journey(
    store_url: str,
) -> None:
    with serving(create_app(Settings(database_url=store_url, auth=False))) as base:
        async with get_client(url=base) as sdk:
            chat = str((await sdk.threads.create())["thread_id"])
            await sdk.runs.wait(chat, "guide", input=HI)
            first = await sdk.threads.get_state(chat)
            await sdk.runs.wait(chat, "guide", input={"messages": [{"role": "user", "content": "and then?"}]})
            latest = await sdk.threads.get_state(chat)
            assert len(latest["values"]["messages"]) > len(first["values"]["messages"])
            at = first["checkpoint"]
            for named in ({"checkpoint": at}, {"checkpoint_id": at["checkpoint_id"]}):
                written = await sdk.threads.update_state(chat, {"progress": {"note": 1}}, **named)  # type: ignore[arg-type]
                forked = await sdk.threads.get_state(chat)
                assert forked["checkpoint"]["checkpoint_id"] == written["checkpoint"]["checkpoint_id"]
                assert forked["parent_checkpoint"]["checkpoint_id"] == at["checkpoint_id"]
                assert forked["values"]["messages"] == first["values"]["messages"]  # the later turn is not in it
            with pytest.raises(httpx.HTTPStatusError) as missing:
                await sdk.threads.update_state(chat, {}, checkpoint_id="1f0a0000-0000-6000-8000-000000000000")
            assert missing.value.response.status_code == 404
            with pytest.raises(httpx.HTTPStatusError) as unknown:  # reading it: 404 too (was an empty state)
                await sdk.threads.get_state(chat, checkpoint_id="1f0a0000-0000-6000-8000-000000000000")
            assert unknown.value.response.status_code == 404

            journey = str((await sdk.threads.create())["thread_id"])
            await sdk.runs.wait(journey, "structured", input={"journey_type": "content_migration", "context": {}})
            before = await sdk.threads.get_state(journey)
            with pytest.raises(httpx.HTTPStatusError) as refused:
                await sdk.threads.update_state(
                    journey, {"context": {"note": 1}}, checkpoint_id=before["checkpoint"]["checkpoint_id"]
                )
            assert refused.value.response.status_code == 422
            assert "CheckpointUnsupported" in refused.value.response.text
            assert await sdk.threads.get_state(journey) == before


async def test_a_state_update_is_in_the_journeys_event_log_with_who_made_it_and_the_checkpoint(
    store_url: str,
) -> None:
    """An operator's ``threads.update_state`` is an event of the journey's log (``state.updated``: who, which
    fields, as which node, the checkpoint written), as every other operator action is; the update used to
    change the state and log nothing, so the audit trail (``/journeys/{id}/history``) did not show it."""
    with serving(create_app(Settings(database_url=store_url, api_keys=KEYS))) as base:
        async with get_client(url=base, api_key="ops-key") as sdk:
            journey = str((await sdk.threads.create())["thread_id"])
            await sdk.runs.wait(journey, "structured", input={"journey_type": "content_migration", "context": {}})
            written = await sdk.threads.update_state(journey, {"context": {"note": 1}})
            again = await sdk.threads.update_state(journey, {"context": {"note": 2}}, as_node="__start__")
            instance_id = (await sdk.threads.get(journey))["metadata"]["instance_id"]
            history = await sdk.http.get(f"/journeys/{instance_id}/history")
            updates = [e for e in history if e["type"] == "state.updated"]
            assert [e["payload"] for e in updates] == [
                {
                    "by": "ana",
                    "fields": ["context"],
                    "as_node": node,
                    "checkpoint_id": state["checkpoint"]["checkpoint_id"],
                }
                for node, state in ((None, written), ("__start__", again))
            ]
            assert [e["step"] for e in updates] == [None, "__start__"]
            latest = await sdk.threads.get_state(journey)  # the checkpoint names its writer too
            assert latest["metadata"]["updated_by"] == "ana"


async def test_history_is_filtered_by_checkpoint_metadata(store_url: str) -> None:
    """``threads.get_history(metadata=…)`` answers only the states whose checkpoint metadata holds those pairs,
    as LangGraph's ``get_state_history(filter=…)`` does; the filter used to be ignored (every state came back)."""
    with serving(create_app(Settings(database_url=store_url, auth=False))) as base:
        async with get_client(url=base) as sdk:
            chat = str((await sdk.threads.create())["thread_id"])
            await sdk.runs.wait(chat, "guide", input=HI)
            await sdk.runs.wait(chat, "guide", input={"messages": [{"role": "user", "content": "and then?"}]})
            every = await sdk.threads.get_history(chat, limit=100)
            sources = [state["metadata"]["source"] for state in every]
            assert "input" in sources and "loop" in sources, sources
            for source in ("input", "loop"):
                found = await sdk.threads.get_history(chat, limit=100, metadata={"source": source})
                assert [s["checkpoint"] for s in found] == [
                    s["checkpoint"] for s in every if s["metadata"]["source"] == source
                ]
            assert await sdk.threads.get_history(chat, metadata={"source": "nowhere"}) == []


async def _ttl(sdk: LangGraphClient, thread_id: str) -> Any:
    return dict(await sdk.threads.get(thread_id, include=["ttl"]))["ttl"]


async def _deleted(sdk: LangGraphClient, thread_id: str) -> None:
    """Until the server's TTL sweeps (every SWEEP_EVERY s) have deleted the thread."""
    async with asyncio.timeout(30):
        while True:
            try:
                await sdk.threads.get(thread_id)
            except NotFoundError:
                return
            await asyncio.sleep(SWEEP_EVERY)


async def test_a_thread_with_a_ttl_is_deleted_that_long_after_its_last_activity(store_url: str) -> None:
    """The Agent Server's thread TTL (``threads.create(ttl=…)``, ``threads.update(ttl=…)``, ``include=["ttl"]``)
    was refused (422) and read as null. A thread now keeps its TTL (its own, or the server's default: --thread-ttl),
    shows it as the Agent Server does (strategy, ttl_minutes, expires_at: that long after its last activity, a
    run's included), and the server's TTL sweeps (every --thread-ttl-sweep, whatever retention's interval) delete it
    once expired, with its runs, as DELETE does; a thread active since is kept until its TTL has passed after that.
    Strategy ``keep_latest`` (refused before, 422) prunes the thread to its latest checkpoint and keeps it, as
    ``threads.prune`` does. ``supersteps`` is refused, saying so, and nothing is created."""
    clock = VirtualClock(T0)
    settings = Settings(
        database_url=store_url,
        auth=False,
        run_timers=False,
        retention_every=0,  # no retention pass: the sweeps run on their own
        thread_ttl_sweep_every=SWEEP_EVERY,
        thread_ttl=ThreadTTL(120),
    )
    with serving(create_app(settings, clock=clock)) as base:
        async with get_client(url=base) as sdk:
            before = await sdk.threads.count()
            with pytest.raises(httpx.HTTPStatusError) as refused:
                await sdk.threads.create(supersteps=[{"updates": [{"values": {"a": 1}, "as_node": "x"}]}])
            assert refused.value.response.status_code == 422
            assert await sdk.threads.count() == before

            def expiry(minutes: float, after: timedelta = timedelta(), strategy: str = "delete") -> dict[str, Any]:
                expires = (T0 + after + timedelta(minutes=minutes)).isoformat()
                return {"strategy": strategy, "ttl_minutes": minutes, "expires_at": expires}

            kept = str((await sdk.threads.create(ttl={"ttl": 10, "strategy": "keep_latest"}))["thread_id"])
            await sdk.runs.wait(kept, "guide", input=HI)
            await sdk.runs.wait(kept, "guide", input={"messages": [{"role": "user", "content": "and then?"}]})
            kept_state = await sdk.threads.get_state(kept)
            kept_history = await sdk.threads.get_history(kept, limit=100)
            assert len(kept_history) > 1
            assert await _ttl(sdk, kept) == expiry(10, strategy="keep_latest")
            # A copy has no TTL, neither its source's nor the server's default, as the Agent Server's copy.
            copied = str((await sdk.threads.copy(kept))["thread_id"])
            assert await _ttl(sdk, copied) is None

            idle = str((await sdk.threads.create(ttl=10))["thread_id"])
            assert await _ttl(sdk, idle) == expiry(10)
            assert "ttl" not in await sdk.threads.get(idle)  # only when asked, as the Agent Server's
            chat = str((await sdk.threads.create(ttl={"ttl": 10, "strategy": "delete"}))["thread_id"])
            defaulted = str((await sdk.threads.create(metadata={"k": 1}))["thread_id"])
            assert await _ttl(sdk, defaulted) == expiry(120)  # the server's
            updated = await sdk.threads.update(defaulted, metadata={"k": 2}, ttl=30)
            assert dict(updated["metadata"] or {})["k"] == 2
            # A journey started through the journey endpoints is a thread too; given a row when its thread is
            # updated, it takes no default TTL: no sweep ends a journey nobody created a thread for.
            http = sdk.http.client
            design = await http.post("/journeys/structured/designs", json={"journey_type": "content_migration"})
            started = await http.post(
                f"/journeys/structured/{design.json()['journey_id']}/executions", json={"user_id": "ana"}
            )
            journey = started.json()["instance_id"]
            await sdk.threads.update(journey, metadata={"team": "ops"})
            assert await _ttl(sdk, journey) is None
            assert await _ttl(sdk, defaulted) == expiry(30)

            clock.advance(timedelta(minutes=5))
            run = await sdk.runs.create(chat, "guide", input=HI)  # activity: its TTL counts from its run
            await sdk.runs.join(chat, run["run_id"])
            assert await _ttl(sdk, chat) == expiry(10, timedelta(minutes=5))
            await sdk.threads.update(defaulted, metadata={"k": 3})  # an update is activity too
            assert await _ttl(sdk, defaulted) == expiry(30, timedelta(minutes=5))

            clock.advance(timedelta(minutes=6))  # T0+11: idle's and kept's TTL have passed; chat's not, since its run
            await _deleted(sdk, idle)
            await _pruned(sdk, kept)  # kept stays, pruned to its latest checkpoint
            pruned = await sdk.threads.get_state(kept)
            assert (pruned["values"], pruned["checkpoint"]) == (kept_state["values"], kept_state["checkpoint"])
            assert await _ttl(sdk, kept) == expiry(10, strategy="keep_latest")  # it keeps its TTL
            assert (await sdk.threads.get(chat))["thread_id"] == chat
            assert [r["run_id"] for r in await sdk.runs.list(chat)] == [run["run_id"]]

            clock.advance(timedelta(minutes=5))  # T0+16: chat's has passed too; it goes with its run
            await _deleted(sdk, chat)
            with pytest.raises(NotFoundError):
                await sdk.runs.get(chat, run["run_id"])
            assert dict((await sdk.threads.get(defaulted))["metadata"] or {})["k"] == 3  # expires at T0+35
            assert (await sdk.threads.get(journey))["thread_id"] == journey
            assert (await sdk.threads.get(kept))["thread_id"] == kept
            assert len(await sdk.threads.get_history(copied, limit=100)) == len(kept_history)  # no sweep touched it


async def test_searches_and_run_lists_answer_in_the_order_and_with_the_filter_asked(store_url: str) -> None:
    """``threads.search``/``assistants.search`` with ``sort_by``/``sort_order``, and ``runs.list(status=…)``: the
    order and the filter used to be ignored (newest first, every run). ``extract`` was refused (422): it answers
    what its paths find in each thread (``extracted``), as the Agent Server does, whatever ``select`` keeps."""
    with serving(create_app(Settings(database_url=store_url, auth=False))) as base:
        async with get_client(url=base) as sdk:
            made = [str((await sdk.threads.create(metadata={"batch": "s"}))["thread_id"]) for _ in range(4)]
            for order in ("asc", "desc"):
                found = await sdk.threads.search(metadata={"batch": "s"}, sort_by="thread_id", sort_order=order)
                assert [t["thread_id"] for t in found] == sorted(made, reverse=order == "desc")
            oldest = await sdk.threads.search(metadata={"batch": "s"}, sort_by="created_at", sort_order="asc", limit=2)
            assert [t["thread_id"] for t in oldest] == made[:2]
            names = ["b-helper", "a-helper", "c-helper"]
            for name in names:
                await sdk.assistants.create("guide", name=name, metadata={"batch": "s"})
            by_name = await sdk.assistants.search(metadata={"batch": "s"}, sort_by="name", sort_order="asc")
            assert [a["name"] for a in by_name] == sorted(names)

            thread = made[0]
            await sdk.runs.wait(thread, "guide", input=HI)
            messages = dict((await sdk.threads.get_state(thread))["values"])["messages"]
            paths = {
                "last": "values.messages[-1].content",
                "first": "values.messages[0]",
                "none": "values.messages[9].content",
                "batch": "metadata.batch",
            }
            [found] = await sdk.threads.search(ids=[thread], extract=paths, select=["thread_id"])
            assert found == {
                "thread_id": thread,
                "extracted": {"last": messages[-1]["content"], "first": messages[0], "none": None, "batch": "s"},
            }
            for refused_paths in ({"bad": "values..x"}, {f"p{n}": "values" for n in range(11)}):
                with pytest.raises(httpx.HTTPStatusError) as refused:
                    await sdk.threads.search(extract=refused_paths)
                assert refused.value.response.status_code == 422
            # A run is activity on its thread, created and finished: its updated_at moves (as the Agent Server's),
            # so sort_by="updated_at" finds the thread talked to last first (it used to move at its first run only).
            await sdk.runs.wait(made[1], "guide", input=HI)
            await sdk.runs.wait(thread, "guide", input=HI)
            latest = await sdk.threads.search(metadata={"batch": "s"}, sort_by="updated_at", sort_order="desc", limit=2)
            assert [t["thread_id"] for t in latest] == [thread, made[1]]
            [finished] = await sdk.runs.list(thread, limit=1)
            assert latest[0]["updated_at"] == finished["updated_at"]  # when its run finished
            later = await sdk.runs.create(thread, "guide", input=HI, after_seconds=3600)  # pending for an hour
            assert (await sdk.threads.get(thread))["updated_at"] == later["created_at"]  # created, not yet started
            every = await sdk.runs.list(thread)
            for status in ("success", "pending", "error"):
                listed = await sdk.runs.list(thread, status=status)  # type: ignore[arg-type]
                assert [r["run_id"] for r in listed] == [r["run_id"] for r in every if r["status"] == status]
            assert [r["run_id"] for r in await sdk.runs.list(thread, status="pending")] == [later["run_id"]]
            await sdk.runs.cancel(thread, later["run_id"])


async def _pruned(sdk: LangGraphClient, thread_id: str) -> None:
    """Until the server's TTL sweeps have pruned the thread to its latest checkpoint."""
    async with asyncio.timeout(30):
        while True:
            if len(await sdk.threads.get_history(thread_id, limit=100)) == 1:
                return
            await asyncio.sleep(SWEEP_EVERY)
