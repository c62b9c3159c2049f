"""A design's ``sensitive`` marks across processes: the distributed server's API and worker are two processes,
and marks are known by the process that loaded the design. The API did not (the worker designed and ran the
journey), so ``runs.wait`` answered a marked field in clear while the thread's state, read through the API
(which loads the design), showed it redacted. Driven with the official langgraph-sdk against a real
``journeys serve`` and ``journeys worker`` on PostgreSQL, the API restarted once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from langgraph_sdk import get_client

from checkpoints.redaction import REDACTED
from server.queues.procrastinate import ensure_schema
from tests.server_support import journeys_serve, start_worker, stop_worker

SECRET = "VIP-7731-private"
WAIT = {"wait": "true"}
SPEC = {"journey_type": "vip_marks", "sensitive": ["vip_note"], "steps": [{"step_id": "intake"}, {"step_id": "review"}]}
PROCESS = {  # a process whose spec marks the field a person's answer carries
    "name": "vip_review",
    "sensitive": ["vip_pin"],
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "user_task", "id": "review", "title": "Review", "assignee": "local"},
        {"type": "user_task", "id": "archive", "title": "Archive", "assignee": "local"},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> review", "review -> archive", "archive -> end"],
}


def clear(document: Any) -> bool:
    """Whether the marked value shows anywhere in ``document``."""
    return SECRET in json.dumps(document, default=str)


async def _shows(base: str, thread_id: str | None) -> tuple[str, list[Any]]:
    """Start (or read back) the journey through the API at ``base``; every answer that carries its values."""
    answers: list[Any] = []
    started_here = thread_id is None
    async with get_client(url=base) as client:
        if thread_id is None:
            thread_id = (await client.threads.create())["thread_id"]
            start: dict[str, Any] = {
                "journey_type": "vip_marks",
                "spec": SPEC,
                "context": {"vip_note": SECRET, "plain": "shown"},
            }
            answers.append(await client.runs.wait(thread_id, "structured", input=start))
            answers += [
                part.data
                async for part in client.runs.stream(
                    thread_id, "structured", command={"resume": {"vip_note": SECRET}}, stream_mode=["values", "updates"]
                )
            ]
            await client.http.post("/processes", json=PROCESS)
            # Distributed: the workers run the process; wait=true answers once its task is open.
            start_process = {"business_key": "vip-1"}
            started = await client.http.post("/processes/vip_review/instances", json=start_process, params=WAIT)
            [task] = await client.http.get("/tasks", params={"instance_id": started["instance_id"]})
            answers.append(
                await client.http.post(
                    f"/tasks/{task['task_id']}/complete", json={"payload": {"vip_pin": SECRET}}, params=WAIT
                )
            )
            await client.threads.update(thread_id, metadata={"task_id": task["task_id"]})
        answers.append(await client.runs.list(thread_id))
        answers.append(await client.threads.get_state(thread_id))
        thread = await client.threads.get(thread_id)
        answers.append(thread)
        metadata = thread["metadata"] or {}
        answers.append(await client.http.get(f"/tasks/{metadata['task_id']}"))
        instance_id = answers[-1]["instance_id"]
        if not started_here:  # the API restarted: this one completes the next task, with a marked answer
            [task] = await client.http.get("/tasks", params={"instance_id": instance_id})
            payload = {"payload": {"vip_pin": SECRET}}
            answers.append(await client.http.post(f"/tasks/{task['task_id']}/complete", json=payload, params=WAIT))
        answers.append(await client.http.get(f"/journeys/{instance_id}/history"))
    return thread_id, answers


async def test_a_designs_marks_hold_in_every_answer_of_an_api_that_never_loaded_the_design(
    postgres_url: str, tmp_path: Path
) -> None:
    ensure_schema(postgres_url)
    worker = start_worker(postgres_url)
    try:
        with journeys_serve(postgres_url, tmp_path / "api.log", "--distributed", "--no-auth") as base:
            thread_id, answers = await _shows(base, None)
        with journeys_serve(postgres_url, tmp_path / "api2.log", "--distributed", "--no-auth") as base:
            _thread_id, again = await _shows(base, thread_id)
    finally:
        stop_worker(worker)
    leaks = [(n, answer) for n, answer in enumerate([*answers, *again]) if clear(answer)]
    assert not leaks, [n for n, _a in leaks]
    assert answers[0]["context"] == {"vip_note": REDACTED, "plain": "shown"}
