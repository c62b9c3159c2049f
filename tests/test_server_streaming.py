"""The Agent Server's stream modes over real HTTP through langgraph-sdk: LLM tokens (``messages-tuple``,
``messages``) from a langchain-core chat model inside a node (the guide's), the run's callback events
(``events``), and journeys' progress on ``custom``; and the run options that shape a run (interrupt_before,
after_seconds, webhook)."""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError, UnprocessableEntityError
from langgraph_sdk.schema import RunCreateMetadata

from agents import AgentRegistry, EchoAgent
from server.app import create_app
from server.runs.executor import RunExecutor
from server.runs.store import RunStore
from server.settings import Settings
from tests.server_support import free_port, serving

pytestmark = pytest.mark.slow
ANSWER = "the insights pillar comes next"
CONTENT_MIGRATION = {"journey_type": "content_migration", "requirements": {"source": "a", "target": "b"}}


class SlowWhenAsked(GenericFakeChatModel):
    """langchain-core's fake chat model (it streams its answer word by word), which takes its time when the
    last message asks it to be slow: a run to cancel."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        """The guide binds its tools; this model answers in text and never calls one."""
        return self

    async def _wait_if_asked(self, messages: list[BaseMessage]) -> None:
        if "slow" in str(messages[-1].content):
            await asyncio.sleep(30)

    async def _agenerate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        await self._wait_if_asked(messages)
        return await super()._agenerate(messages, *args, **kwargs)

    async def _astream(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        await self._wait_if_asked(messages)
        async for chunk in super()._astream(messages, *args, **kwargs):
            yield chunk


def streaming_model() -> BaseChatModel:
    return SlowWhenAsked(messages=itertools.repeat(ANSWER))


@pytest.fixture(params=["sqlite", "postgres"])
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url: str = request.getfixturevalue(f"{request.param}_url")
    registry = AgentRegistry()
    registry.register("auto_check", EchoAgent("auto_check", {"ok": True}))
    settings = Settings(database_url=url, auth=False, guide_model=f"{__name__}:streaming_model")
    with serving(create_app(settings, runtime_options={"agents": registry})) as base:
        yield base


@pytest.fixture
async def client(server_url: str) -> AsyncIterator[LangGraphClient]:
    async with get_client(url=server_url, api_key=None) as sdk_client:
        yield sdk_client


def _guide_input() -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "what next?"}]}


async def test_messages_tuple_streams_the_models_tokens(client: LangGraphClient) -> None:
    tid = (await client.threads.create())["thread_id"]
    parts = [
        p
        async for p in client.runs.stream(tid, "guide", input=_guide_input(), stream_mode=["values", "messages-tuple"])
    ]
    tokens = [p.data for p in parts if p.event == "messages"]
    assert len(tokens) >= 3, [p.event for p in parts]  # one chunk per word, not one message
    message, metadata = tokens[0]
    assert message["type"] == "AIMessageChunk" and "langgraph_node" in metadata
    assert "".join(chunk["content"] for chunk, _ in tokens) == ANSWER
    assert parts[-1].event == "end" and any(p.event == "values" for p in parts)


async def test_messages_mode_sends_each_message_as_it_grows(client: LangGraphClient) -> None:
    parts = [p async for p in client.runs.stream(None, "guide", input=_guide_input(), stream_mode="messages")]
    events = [p.event for p in parts]
    assert events.count("messages/metadata") == 1
    partial = [p.data[0]["content"] for p in parts if p.event == "messages/partial"]
    assert len(partial) >= 3 and partial[-1] == ANSWER and all(ANSWER.startswith(text) for text in partial)
    assert [p.data[0]["content"] for p in parts if p.event == "messages/complete"] == [ANSWER]


async def test_events_mode_streams_the_runs_callback_events(client: LangGraphClient) -> None:
    parts = [p async for p in client.runs.stream(None, "guide", input=_guide_input(), stream_mode=["events", "values"])]
    kinds = [p.data["event"] for p in parts if p.event == "events"]
    assert "on_chain_start" in kinds and "on_chat_model_stream" in kinds and "on_chain_end" in kinds
    assert any(p.event == "values" for p in parts)  # the other modes ride along


async def test_custom_mode_carries_a_journeys_progress(client: LangGraphClient) -> None:
    spec = {
        "journey_type": "checked",
        "steps": [{"step_id": "check", "mode": "auto", "agent": "auto_check"}, {"step_id": "review"}],
    }
    parts = [
        p
        async for p in client.runs.stream(
            None, "structured", input={"journey_type": "checked", "spec": spec}, stream_mode="custom"
        )
    ]
    progress = [(p.data["event"], p.data["step"]) for p in parts if p.event == "custom"]
    assert progress[:3] == [("step.started", "check"), ("agent.called", "check"), ("step.done", "check")]


async def test_interrupt_before_stops_the_run_before_that_node(client: LangGraphClient) -> None:
    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "guide", input=_guide_input(), interrupt_before=["agent"])
    state = await client.threads.get_state(tid)
    assert state["next"] == ["agent"]


async def test_after_seconds_delays_the_run(client: LangGraphClient) -> None:
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "structured", input={**CONTENT_MIGRATION, "user_id": "ana"}, after_seconds=3)
    await asyncio.sleep(0.3)  # well inside its 3 s, even on a loaded box
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "pending"
    joined = await client.runs.join(tid, run["run_id"])
    assert joined["current_step"] == "upload_content"
    done = await client.runs.get(tid, run["run_id"])
    assert done["status"] == "success" and done["updated_at"] > run["created_at"]


class _Receiver(BaseHTTPRequestHandler):
    """A loopback webhook receiver: fails its first call with a 503, keeps the bodies it then takes."""

    calls: list[dict[str, Any]] = []  # noqa: RUF012 - shared by the handler instances of one server
    failures = 1

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).failures > 0:
            type(self).failures -= 1
            self.send_response(503)
        else:
            type(self).calls.append(body)
            self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_a_webhook_is_posted_when_the_run_ends_and_retried(
    client: LangGraphClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Posted once taken, retried after a 503; the attempts share one TLS context (building one loads the CA
    bundle: ~30 ms of CPU an attempt, more than a whole journey, also for a plain-HTTP URL). What is posted is
    the Agent Server's payload: the run, with the thread's ``values`` as it ended (a receiver's usual read; it
    was missing), ``run_ended_at`` and ``webhook_sent_at``."""
    _Receiver.calls, _Receiver.failures = [], 1
    bundles_loaded: list[tuple[Any, ...]] = []
    load = ssl.SSLContext.load_verify_locations

    def counted(*args: Any, **kwargs: Any) -> None:
        bundles_loaded.append(args)
        load(*args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    port = free_port()
    receiver = HTTPServer(("127.0.0.1", port), _Receiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        tid = (await client.threads.create())["thread_id"]
        run = await client.runs.create(
            tid, "structured", input={**CONTENT_MIGRATION, "user_id": "ana"}, webhook=f"http://127.0.0.1:{port}/hook"
        )
        output = await client.runs.join(tid, run["run_id"])
        for _ in range(100):
            if _Receiver.calls:
                break
            await asyncio.sleep(0.05)
        [call] = _Receiver.calls
        assert (call["run_id"], call["status"]) == (run["run_id"], "success")
        ended = (await client.runs.get(tid, run["run_id"]))["updated_at"]
        assert call["values"] == output and output["current_step"] == "upload_content", call
        sent = datetime.fromisoformat(call["webhook_sent_at"])
        assert call["run_ended_at"] == ended and datetime.fromisoformat(ended) <= sent, call
        assert len(bundles_loaded) <= 1  # two attempts: a context built once in this process, or not at all
    finally:
        receiver.shutdown()
        receiver.server_close()


async def _slow_run(client: LangGraphClient, tid: str) -> str:
    run = await client.runs.create(tid, "guide", input={"messages": [{"role": "user", "content": "slow please"}]})
    for _ in range(200):
        if (await client.runs.get(tid, run["run_id"]))["status"] == "running":
            return str(run["run_id"])
        await asyncio.sleep(0.05)
    raise AssertionError("the slow run never started")


def _said(state: dict[str, Any]) -> list[str]:
    return [m["content"] for m in state["values"].get("messages", []) if m["type"] == "human"]


async def test_double_texting_interrupt_cancels_the_active_run_and_keeps_its_progress(client: LangGraphClient) -> None:
    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "guide", input={"messages": [{"role": "user", "content": "hello"}]})
    slow = await _slow_run(client, tid)
    quick = await client.runs.create(
        tid, "guide", input={"messages": [{"role": "user", "content": "quick"}]}, multitask_strategy="interrupt"
    )
    await client.runs.join(tid, quick["run_id"])
    assert (await client.runs.get(tid, slow))["status"] == "interrupted"
    assert (await client.runs.get(tid, quick["run_id"]))["status"] == "success"
    said = _said(await client.threads.get_state(tid))
    # What the cancelled run checkpointed stays (its input, if its checkpoint was written before the cancel).
    assert said[0] == "hello" and said[-1] == "quick" and set(said) <= {"hello", "slow please", "quick"}


@pytest.mark.parametrize(
    ("owner", "name", "content"),
    [
        (RunStore, "last_seq", "slow please"),  # just after its claim, before its work
        (RunExecutor, "_output", "hello again"),  # its work done, its output being read
    ],
    ids=["after-claim", "before-finish"],
)
async def test_a_cancel_that_reaches_a_run_between_its_claim_and_its_end_interrupts_it(
    client: LangGraphClient, monkeypatch: pytest.MonkeyPatch, owner: type, name: str, content: str
) -> None:
    """The run is held at one await outside its work (threading events: the server's loop runs in
    another thread) and cancelled there: it ends interrupted, and is not executed again."""
    reached, release = threading.Event(), threading.Event()
    original = getattr(owner, name)

    async def held(self: Any, *args: Any) -> Any:
        if not reached.is_set():
            reached.set()
            await asyncio.to_thread(release.wait, 30)
        return await original(self, *args)

    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "guide", input={"messages": [{"role": "user", "content": "hello"}]})
    monkeypatch.setattr(owner, name, held)
    held_run = await client.runs.create(tid, "guide", input={"messages": [{"role": "user", "content": content}]})
    assert await asyncio.to_thread(reached.wait, 30)
    quick = await client.runs.create(
        tid, "guide", input={"messages": [{"role": "user", "content": "quick"}]}, multitask_strategy="interrupt"
    )
    release.set()
    await asyncio.wait_for(client.runs.join(tid, quick["run_id"]), 20)  # not behind a 30 s rerun of the held one
    assert (await client.runs.get(tid, held_run["run_id"]))["status"] == "interrupted"
    assert (await client.runs.get(tid, quick["run_id"]))["status"] == "success"


async def test_a_run_whose_interrupted_status_could_not_be_written_is_not_executed_again(
    client: LangGraphClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database fails the executor's write of "interrupted" as the cancel reaches the run: the run stays
    active, and the thread's next driver takes it up again. The cancel was recorded before it was acted on,
    so that claim ends the run interrupted instead of executing it (its 30 s model call) a second time."""
    original = RunExecutor._interrupted
    failed = threading.Event()

    async def failing_once(self: RunExecutor, run_id: str) -> None:
        if not failed.is_set():
            failed.set()
            raise ConnectionError("the database went away")
        await original(self, run_id)

    monkeypatch.setattr(RunExecutor, "_interrupted", failing_once)
    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "guide", input={"messages": [{"role": "user", "content": "hello"}]})
    slow = await _slow_run(client, tid)
    quick = await client.runs.create(
        tid, "guide", input={"messages": [{"role": "user", "content": "quick"}]}, multitask_strategy="interrupt"
    )
    await asyncio.wait_for(client.runs.join(tid, quick["run_id"]), 20)  # not behind a 30 s rerun of the slow one
    assert failed.is_set()
    assert (await client.runs.get(tid, slow))["status"] == "interrupted"
    assert (await client.runs.get(tid, quick["run_id"]))["status"] == "success"


async def test_double_texting_rollback_deletes_the_active_run_and_its_state(client: LangGraphClient) -> None:
    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "guide", input={"messages": [{"role": "user", "content": "hello"}]})
    slow = await _slow_run(client, tid)
    quick = await client.runs.create(
        tid, "guide", input={"messages": [{"role": "user", "content": "quick"}]}, multitask_strategy="rollback"
    )
    await client.runs.join(tid, quick["run_id"])
    with pytest.raises(NotFoundError):
        await client.runs.get(tid, slow)
    state = await client.threads.get_state(tid)
    assert _said(state) == ["hello", "quick"] and state["values"]["messages"][-1]["content"] == ANSWER


async def test_rollback_before_the_run_noted_its_base_keeps_the_threads_state(
    client: LangGraphClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback that reaches a run between its claim and the note of the checkpoint it started from:
    the run changed nothing yet, so the thread keeps its state (it was deleted whole)."""
    noted = threading.Event()  # set from the test's loop, waited on in the server's (another thread)
    remember = RunExecutor._remember_base

    async def late(self: RunExecutor, run: Any, assistant: Any, instance_id: str) -> str:
        await asyncio.to_thread(noted.wait, 30)  # held until the rollback has been answered
        return await remember(self, run, assistant, instance_id)

    tid = (await client.threads.create())["thread_id"]
    await client.runs.wait(tid, "guide", input={"messages": [{"role": "user", "content": "hello"}]})
    monkeypatch.setattr(RunExecutor, "_remember_base", late)
    slow = await _slow_run(client, tid)
    quick = await client.runs.create(
        tid, "guide", input={"messages": [{"role": "user", "content": "quick"}]}, multitask_strategy="rollback"
    )
    noted.set()
    await client.runs.join(tid, quick["run_id"])
    with pytest.raises(NotFoundError):
        await client.runs.get(tid, slow)
    assert _said(await client.threads.get_state(tid)) == ["hello", "quick"]


async def test_checkpoint_id_goes_on_from_an_earlier_checkpoint(client: LangGraphClient) -> None:
    tid = (await client.threads.create())["thread_id"]
    for text in ("one", "two"):
        await client.runs.wait(tid, "guide", input={"messages": [{"role": "user", "content": text}]})
    [after_one] = [s for s in await client.threads.get_history(tid, limit=50) if _said(s) == ["one"] and not s["next"]]
    checkpoint_id = after_one["checkpoint"]["checkpoint_id"]
    await client.runs.wait(
        tid, "guide", input={"messages": [{"role": "user", "content": "three"}]}, checkpoint_id=checkpoint_id
    )
    assert _said(await client.threads.get_state(tid)) == ["one", "three"]
    with pytest.raises(UnprocessableEntityError):  # a journey's logged steps cannot be gone back on
        await client.runs.create(None, "structured", input=CONTENT_MIGRATION, checkpoint_id=checkpoint_id)


async def test_on_completion_delete_removes_the_thread_once_the_run_ended(client: LangGraphClient) -> None:
    # ``wait`` answers with the output in the request that made the run: a ``join`` sent after the run ended
    # would find its thread deleted already (404), as on the Agent Server.
    created: list[RunCreateMetadata] = []
    answer = await client.runs.wait(
        None, "guide", input=_guide_input(), on_completion="delete", on_run_created=created.append
    )
    assert isinstance(answer, dict) and answer["messages"][-1]["content"] == ANSWER
    (run,) = created
    with pytest.raises(NotFoundError):
        await client.threads.get(run["thread_id"])
    kept = await client.runs.create(None, "guide", input=_guide_input(), on_completion="keep")
    await client.runs.join(kept["thread_id"], kept["run_id"])
    assert (await client.threads.get(kept["thread_id"]))["status"] == "idle"


async def test_a_delayed_run_survives_a_restart_and_runs_when_due(durable_url: str) -> None:
    settings = Settings(database_url=durable_url, auth=False)
    delay = 4
    with serving(create_app(settings)) as first:
        async with get_client(url=first, api_key=None) as before:
            run = await before.runs.create(
                None,
                "structured",
                input={**CONTENT_MIGRATION, "user_id": "ana"},
                after_seconds=delay,
                on_completion="keep",  # its thread is read when it ended
            )
    due = datetime.fromisoformat(run["created_at"]) + timedelta(seconds=delay)
    with serving(create_app(settings)) as second:  # a new process on the same database takes it up
        async with get_client(url=second, api_key=None) as after:
            seen = (await after.runs.get(run["thread_id"], run["run_id"]))["status"]
            if datetime.now(UTC) < due - timedelta(seconds=0.5):  # a loaded box may restart past its due time
                assert seen == "pending"
            joined = await after.runs.join(run["thread_id"], run["run_id"])
            assert joined["current_step"] == "upload_content"
            ended = await after.runs.get(run["thread_id"], run["run_id"])
            assert ended["status"] == "success" and datetime.fromisoformat(ended["updated_at"]) >= due
