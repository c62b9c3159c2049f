"""Redaction in the server's answers, driven by the official langgraph-sdk client over real HTTP: a design's
``sensitive`` marks blank that name inside journey values (context, state, run input), never the answer's own
protocol fields (ids, status, timestamps, metadata), so one user's design cannot break every other user's
client."""

from __future__ import annotations

from typing import Any

from langgraph_sdk.client import LangGraphClient

from checkpoints.redaction import REDACTED
from server.settings import ApiKey

WORK = frozenset({"read", "runs", "journeys", "tasks"})
KEYS = {"key-ana": ApiKey("ana", WORK, ()), "key-bob": ApiKey("bob", WORK, ())}
# Bob's design calls the very names the protocol uses sensitive (and a number, where schemas want a string).
MARKED = ("status", "thread_id", "user_id", "run_id", "created_at", "version")
BOBS_SPEC = {
    "journey_type": "vip_migration",
    "sensitive": list(MARKED),
    "steps": [{"step_id": "upload_content"}, {"step_id": "analyze_content"}],
}


def assert_protocol(thread: dict[str, Any], thread_id: str) -> None:
    assert thread["thread_id"] == thread_id
    assert thread["status"] in {"idle", "busy", "interrupted", "error"}
    assert thread["created_at"] != REDACTED and thread["updated_at"] != REDACTED


async def test_a_designs_sensitive_marks_blank_journey_values_never_protocol_fields(
    ana: LangGraphClient, bob: LangGraphClient
) -> None:
    # Bob designs and starts a journey whose spec marks the protocol's names sensitive.
    bobs = await bob.threads.create(metadata={"team": "vip"})
    context = {"status": "vip-gold", "user_id": "bob-private-7", "note": "kept"}
    out = await bob.runs.wait(
        bobs["thread_id"],
        "structured",
        input={"journey_type": "vip_migration", "spec": BOBS_SPEC, "context": context},
    )
    assert out["context"] == {"status": REDACTED, "user_id": REDACTED, "note": "kept"}  # his values: redacted

    # Ana, with a design that marks nothing, uses the SDK as ever: every protocol field is the real one.
    thread = await ana.threads.create(metadata={"team": "ops"})
    tid = thread["thread_id"]
    assert_protocol(thread, tid)
    waited = await ana.runs.wait(tid, "structured", input={"journey_type": "content_migration"})
    assert waited["current_step"] == "upload_content"
    assert_protocol(await ana.threads.get(tid), tid)
    [found] = await ana.threads.search(metadata={"team": "ops"})
    assert_protocol(found, tid)
    [run] = await ana.runs.list(tid)
    assert run["thread_id"] == tid and run["status"] == "success" and run["run_id"] != REDACTED
    got = await ana.runs.get(tid, run["run_id"])
    assert (got["run_id"], got["thread_id"], got["status"]) == (run["run_id"], tid, "success")
    assert got["created_at"] == run["created_at"] != REDACTED
    state = await ana.threads.get_state(tid)
    assert state["checkpoint"]["thread_id"] == tid and state["checkpoint"]["checkpoint_id"] != REDACTED
    parts = [
        part
        async for part in ana.runs.stream(tid, "structured", command={"resume": {"files": 3}}, stream_mode="values")
    ]
    assert parts[0].event == "metadata" and parts[0].data["run_id"] not in (None, REDACTED)
    [streamed] = [r for r in await ana.runs.list(tid) if r["run_id"] == parts[0].data["run_id"]]
    assert streamed["status"] == "success"

    # Bob's own answers keep their protocol fields too; only the marked names inside his values are blank.
    bobs_thread = await bob.threads.get(bobs["thread_id"])
    assert_protocol(bobs_thread, bobs["thread_id"])
    assert bobs_thread["values"]["context"]["status"] == REDACTED
    [bobs_run] = await bob.runs.list(bobs["thread_id"])
    assert bobs_run["status"] == "success" and bobs_run["thread_id"] == bobs["thread_id"]
    assert bobs_run["kwargs"]["input"]["context"]["user_id"] == REDACTED
    chunks = [
        part
        async for part in bob.runs.stream(
            bobs["thread_id"], "structured", command={"resume": {"files": 1}}, stream_mode="values"
        )
    ]
    assert chunks[0].data["run_id"] != REDACTED
    assert {part.data["context"]["status"] for part in chunks if part.event == "values"} == {REDACTED}
    assert isinstance((await bob.assistants.get("structured"))["version"], int)
