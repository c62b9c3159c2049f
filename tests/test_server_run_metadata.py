"""A run's metadata is the client's, over real HTTP with the official langgraph-sdk client: runs.get and
runs.list show exactly the metadata the run was created with, while the caller's groups still reach the
executor (a process user task offered to a group is completed by a run of one of its members only)."""

from __future__ import annotations

import pytest
from langgraph_sdk.client import LangGraphClient

from graphs import JourneyRuntime
from server.runs.store import RunStore
from server.settings import ApiKey
from tests.server_support import APPROVAL_PROCESS

WORK = frozenset({"read", "runs", "journeys", "tasks"})
KEYS = {"key-ana": ApiKey("ana", WORK, ("finance",)), "key-bob": ApiKey("bob", WORK, ("sales",))}


async def approval_thread(client: LangGraphClient, key: str) -> str:
    """A thread whose process waits for its ``approve`` task (offered to finance)."""
    tid = str((await client.threads.create())["thread_id"])
    start = {"process": "approval", "business_key": key}
    await client.runs.wait(tid, "process", input=start, metadata={"step": "start", "by": key})
    return tid


async def test_runs_show_the_metadata_they_were_given_and_act_with_their_callers_groups(
    ana: LangGraphClient, bob: LangGraphClient
) -> None:
    await ana.http.post("/processes", json=APPROVAL_PROCESS)
    anas, bobs = await approval_thread(ana, "a-1"), await approval_thread(bob, "b-1")
    approve = {"resume": {"payload": {"approved": True}}}
    await ana.runs.wait(anas, "process", command=approve, metadata={"step": "approve"})
    # Bob is not in finance: his run may not complete the task, and it stays open.
    with pytest.raises(Exception, match="TaskForbiddenError"):  # the SDK's own error for a failed run
        await bob.runs.wait(bobs, "process", command=approve, metadata={"step": "approve"})
    assert [t["status"] for t in await bob.http.get(f"/tasks?instance_id={bobs}")] == ["open"]
    assert [t["status"] for t in await ana.http.get(f"/tasks?instance_id={anas}")] == []

    for client, tid in ((ana, anas), (bob, bobs)):
        runs = await client.runs.list(tid)
        by = "a-1" if tid == anas else "b-1"
        assert sorted((r["metadata"] for r in runs), key=len) == [{"step": "approve"}, {"step": "start", "by": by}]
        for run in runs:
            got = await client.runs.get(tid, run["run_id"])
            assert got["metadata"] == run["metadata"] and "groups" not in got["kwargs"]


async def test_a_run_stored_with_its_groups_in_its_metadata_is_read_with_them_moved(store_url: str) -> None:
    """Runs queued before the groups moved to the run's options (a pending one across the upgrade) still act
    with their caller's groups, and show only the client's metadata."""
    async with JourneyRuntime.open(store_url) as runtime:
        runs = RunStore(runtime.store.backend, runtime.store.clock, runtime.store.sealer)
        stored = await runs.create_run(
            thread_id=None,
            assistant_id="process",
            kind="start",
            input={},
            command=None,
            stream_modes=[],
            multitask_strategy="reject",
            metadata={"team": "ops", "_groups": ["finance"]},  # as the server stored it then
            principal="ana",
        )
        found = await runs.get_run(stored.run_id)
        assert found is not None
        assert (found.metadata, found.groups) == ({"team": "ops"}, ("finance",))
        assert found.view()["metadata"] == {"team": "ops"} and "groups" not in found.view()["kwargs"]
