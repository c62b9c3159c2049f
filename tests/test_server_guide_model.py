"""The served guide: the chat model named by --guide-model / $JOURNEYS_GUIDE_MODEL, and a conversation
with the default rule-based model through langgraph-sdk against a real `journeys serve` process."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from typer.testing import CliRunner

from agents.errors import GuideModelError
from server.app import create_app
from server.cli import app as cli
from server.settings import Settings
from tests.server_support import journeys_serve, serving

PROMPTS: list[list[BaseMessage]] = []
BOUND: list[list[str]] = []


class NoToolsChatModel(BaseChatModel):
    """A chat model that cannot call tools (langchain-core's default ``bind_tools``)."""

    @property
    def _llm_type(self) -> str:
        return "test-no-tools"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self.reply(messages))])

    def reply(self, messages: list[BaseMessage]) -> AIMessage:
        """The model's next message (what each test model says its own way)."""
        return AIMessage(content="hi")


class RecordingChatModel(NoToolsChatModel):
    """Stands in for a real LLM, offline: it keeps the prompts and tools it gets and answers in its own words."""

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: str | None = None, **kwargs: Any) -> Runnable[Any, Any]:
        BOUND.append([convert_to_openai_tool(t)["function"]["name"] for t in tools])
        return self

    def reply(self, messages: list[BaseMessage]) -> AIMessage:
        PROMPTS.append(messages)
        return AIMessage(content=f"(llm) you asked {messages[-1].content!r}")


def recording_model() -> BaseChatModel:
    return RecordingChatModel()


class SameCallIdChatModel(RecordingChatModel):
    """A deterministic tool-calling model as a user writes one: "go to <pillar>" and "done <pillar>: <flags>" are
    tool calls, each numbered from ``call_0`` within its message, so every turn's call has the same id."""

    def reply(self, messages: list[BaseMessage]) -> AIMessage:
        said = str(messages[-1].content)
        if isinstance(messages[-1], ToolMessage):
            return AIMessage(content=f"tool: {said}")
        if said.startswith("go to "):
            call = {"name": "navigate_to_pillar", "args": {"pillar_id": said.removeprefix("go to ")}, "id": "call_0"}
        else:
            pillar, flags = said.removeprefix("done ").split(": ")
            updates = dict.fromkeys(flags.split(", "), True)
            call = {"name": "record_progress", "args": {"pillar_id": pillar, "updates": updates}, "id": "call_0"}
        return AIMessage(content="", tool_calls=[call])


def same_call_id_model() -> BaseChatModel:
    return SameCallIdChatModel()


def no_tools_model() -> BaseChatModel:
    return NoToolsChatModel()


def not_a_model() -> str:
    return "gpt-5"


def failing_model() -> BaseChatModel:
    raise RuntimeError("OPENAI_API_KEY is not set")


NOT_A_FACTORY = 42


@pytest.mark.slow
async def test_the_guide_answers_with_the_configured_model(sqlite_url: str) -> None:
    PROMPTS.clear()
    BOUND.clear()
    settings = Settings(database_url=sqlite_url, auth=False, guide_model=f"{__name__}:recording_model")
    with serving(create_app(settings)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            done = await http.post(
                "/runs/wait",
                json={
                    "assistant_id": "guide",
                    "input": {"progress": {"content": True}, "messages": [{"role": "user", "content": "what next?"}]},
                },
            )
    assert done.status_code == 200, done.text
    assert done.json()["messages"][-1]["content"] == "(llm) you asked 'what next?'"
    [prompt] = PROMPTS  # the model was told the pillars and given the guide's tools
    assert "content → insights → operations → business_outcome" in str(prompt[0].content)
    assert BOUND[-1:] == [  # after the startup check that the model binds tools at all
        ["get_session_progress", "recommend_next_pillar", "explain_pillar", "navigate_to_pillar", "record_progress"]
    ]


async def test_a_models_tool_calls_that_reuse_an_id_each_turn_are_each_applied_and_a_reviewed_one_runs(
    store_url: str,
) -> None:
    """A tool call id is unique only within its message for many models (a user's deterministic model, local
    model servers): every turn's call was keyed by it alone, so from the second turn on each navigation or
    recorded progress answered the first turn's result and changed nothing."""
    settings = Settings(database_url=store_url, auth=False, guide_model=f"{__name__}:same_call_id_model")
    with serving(create_app(settings)) as base:
        async with get_client(url=base, api_key=None) as sdk:
            session_id = (await sdk.http.post("/journeys/mvp", json={"user_id": "ana"}))["session"]["session_id"]
            thread_id = (await sdk.threads.create())["thread_id"]
            first = {"session_id": session_id}
            for said in ("go to insights", "go to operations", "done content: files_uploaded, files_parsed"):
                turn = {"messages": [{"role": "user", "content": said}], **first}
                done = await sdk.runs.wait(thread_id, "guide", input=turn)
                assert isinstance(done, dict) and done["messages"][-1]["type"] == "ai", done
                first = {}
            told = [json.loads(m["content"]) for m in done["messages"] if m["type"] == "tool"]
            assert [t["area"]["area_id"] for t in told[:2]] == ["insights", "operations"]
            assert told[2]["recorded"] == {"files_uploaded": True, "files_parsed": True}
            session = await sdk.http.get(f"/journeys/{session_id}/status")
            assert session["current_area"] == "operations" and session["areas"]["content"]["complete"]

            # A tool call reviewed before it runs (LangGraph's interrupt_before the tools): the run without input
            # that approves it runs the call, as LangGraph's run without input goes on from a breakpoint. It ran
            # a new turn instead, which told the model the call was never run.
            turn = {"messages": [{"role": "user", "content": "go to business_outcome"}]}
            await sdk.runs.wait(thread_id, "guide", input=turn, interrupt_before=["tools"])
            assert (await sdk.threads.get_state(thread_id))["next"] == ["tools"]
            done = await sdk.runs.wait(thread_id, "guide", input=None)
            assert isinstance(done, dict) and [m["type"] for m in done["messages"][-3:]] == ["ai", "tool", "ai"], done
            assert json.loads(done["messages"][-2]["content"])["area"]["area_id"] == "business_outcome"
            session = await sdk.http.get(f"/journeys/{session_id}/status")
            assert session["current_area"] == "business_outcome"
            assert await _audited(sdk, session_id) == [
                ("guide.navigate_to_pillar", "insights"),
                ("guide.navigate_to_pillar", "operations"),
                ("guide.record_progress", "content"),
                ("guide.navigate_to_pillar", "business_outcome"),
            ]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("no_colon_here", "expected module:factory"),
        ("no_such_module_xyz:factory", "cannot import 'no_such_module_xyz'"),
        (f"{__name__}:missing", f"module {__name__!r} has no 'missing'"),
        (f"{__name__}:NOT_A_FACTORY", "'NOT_A_FACTORY' is a int, not a factory"),
        (f"{__name__}:not_a_model", "the factory returned a str, not a langchain-core BaseChatModel"),
        (f"{__name__}:failing_model", "the factory failed: RuntimeError('OPENAI_API_KEY is not set')"),
        (f"{__name__}:no_tools_model", "NoToolsChatModel does not support tool calling"),
    ],
)
def test_a_bad_guide_model_stops_the_app_before_it_serves(path: str, expected: str) -> None:
    with pytest.raises(GuideModelError) as bad:
        create_app(Settings(auth=False, guide_model=path))
    assert expected in str(bad.value) and bad.value.category == "invalid"


def test_serve_and_worker_refuse_a_bad_guide_model_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    served = CliRunner().invoke(cli, ["serve", "--no-auth", "--guide-model", f"{__name__}:not_a_model"])
    assert served.exit_code == 2 and "not a langchain-core BaseChatModel" in served.output
    monkeypatch.setenv("JOURNEYS_GUIDE_MODEL", "no_such_module_xyz:factory")
    from_env = CliRunner().invoke(cli, ["serve", "--no-auth"])
    assert from_env.exit_code == 2 and "cannot import 'no_such_module_xyz'" in from_env.output
    # A worker executes guide runs in distributed mode: it refuses too, before it touches the database.
    worker = CliRunner().invoke(cli, ["worker", "--database-url", "postgresql://nowhere.invalid/db"])
    assert worker.exit_code == 2 and "cannot import 'no_such_module_xyz'" in worker.output
    assert "Traceback" not in served.output + from_env.output + worker.output


@pytest.fixture(params=["sqlite", "postgres"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A real `journeys serve --no-auth` process on the backend, on the default guide model."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    env = {k: v for k, v in os.environ.items() if k != "JOURNEYS_GUIDE_MODEL"}
    with journeys_serve(url, tmp_path / "serve.log", "--no-auth", env=env) as base:
        yield base


async def _audited(sdk: LangGraphClient, session_id: str) -> list[tuple[str, str]]:
    """The guide's changes to the session, as its event log audits them: (intent, pillar), in order."""
    events = await sdk.http.get(f"/journeys/{session_id}/history")
    return [(e["payload"]["intent"], e["step"]) for e in events if e["type"] == "agent.completed"]


def _turn_calls(messages: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The tool calls the guide made since the user's last message."""
    last_human = max(i for i, m in enumerate(messages) if m["type"] == "human")
    return [(c["name"], c["args"]) for m in messages[last_human:] if m["type"] == "ai" for c in m["tool_calls"]]


@pytest.mark.slow
async def test_a_five_turn_conversation_through_the_sdk_moves_the_session(served: str) -> None:
    async with get_client(url=served, api_key=None) as sdk:
        mvp = await sdk.http.post("/journeys/mvp", json={"user_id": "ana"})
        session_id = mvp["session"]["session_id"]
        guide = (await sdk.threads.create())["thread_id"]

        async def say(text: str, **extra: Any) -> tuple[list[tuple[str, dict[str, Any]]], str, dict[str, Any]]:
            done = await sdk.runs.wait(guide, "guide", input={"messages": [{"role": "user", "content": text}], **extra})
            assert isinstance(done, dict) and done["messages"][-1]["type"] == "ai", done
            session = (await sdk.http.get(f"/journeys/{session_id}/status")) or {}
            return _turn_calls(done["messages"]), done["messages"][-1]["content"], session

        calls, answer, session = await say("What should I do next?", session_id=session_id)
        assert calls == [("recommend_next_pillar", {})]
        assert "I suggest the Content Pillar next" in answer and session["completed_areas"] == 0

        calls, answer, session = await say("I uploaded and parsed the files")
        assert calls == [
            ("record_progress", {"pillar_id": "content", "updates": {"files_parsed": True, "files_uploaded": True}})
        ]
        assert "The Content Pillar is complete" in answer and "I suggest the Insights Pillar next" in answer
        assert session["areas"]["content"]["complete"] and session["completion_percent"] == 25

        calls, answer, session = await say("what's left in insights?")
        assert calls == [("explain_pillar", {"pillar_id": "insights"})]
        assert "still to do: file selected, analysis complete and insights summary generated" in answer
        assert session["current_area"] == "content"

        # This turn streams its graph updates as they happen: the model's tool call, the tool, the answer.
        said = {"messages": [{"role": "user", "content": "take me to operations"}]}
        streamed = [
            list(part.data)
            async for part in sdk.runs.stream(guide, "guide", input=said, stream_mode="updates")
            if part.event == "updates"
        ]
        assert streamed == [["agent"], ["tools"], ["agent"]]
        messages = (await sdk.threads.get_state(guide))["values"]["messages"]
        calls, answer = _turn_calls(messages), messages[-1]["content"]
        session = await sdk.http.get(f"/journeys/{session_id}/status")
        assert calls == [("navigate_to_pillar", {"pillar_id": "operations"})]
        assert (
            answer.startswith("Done: you are now in the Operations Pillar") and session["current_area"] == "operations"
        )

        calls, answer, session = await say("I finished the insights pillar")
        assert calls == [("record_progress", {"pillar_id": "insights", "pillar_complete": True})]
        assert "I suggest the Operations Pillar next" in answer
        assert session["areas"]["insights"]["complete"] and session["completion_percent"] == 50

        # Every change went through the agent-call path: one audit event per tool call, on the session.
        assert await _audited(sdk, session_id) == [
            ("guide.record_progress", "content"),
            ("guide.navigate_to_pillar", "operations"),
            ("guide.record_progress", "insights"),
        ]
        # A call held for review that a person answers in its place (update_state as the tools node, LangGraph's
        # way to edit a tool's result): the guide says what they answered, and nothing moves. The default model
        # read every tool result as JSON and failed the run (JSONDecodeError).
        said = {"messages": [{"role": "user", "content": "take me to business outcome"}]}
        await sdk.runs.wait(guide, "guide", input=said, interrupt_before=["tools"])
        [call] = (await sdk.threads.get_state(guide))["values"]["messages"][-1]["tool_calls"]
        refusal = {"type": "tool", "content": "Not yet: finish operations first.", "tool_call_id": call["id"]}
        await sdk.threads.update_state(guide, {"messages": [{**refusal, "name": call["name"]}]}, as_node="tools")
        done = await sdk.runs.wait(guide, "guide", input=None)
        assert isinstance(done, dict) and done["messages"][-1]["content"] == "Not yet: finish operations first."
        assert (await sdk.http.get(f"/journeys/{session_id}/status"))["current_area"] == "operations"

        # The thread keeps the whole chat: six user messages, each with its tool call and answer.
        state = await sdk.threads.get_state(guide)
        kinds = [m["type"] for m in state["values"]["messages"]]
        assert kinds == ["human", "ai", "tool", "ai"] * 6


async def test_the_guide_takes_content_blocks_as_agent_chat_ui_sends_them(sqlite_url: str) -> None:
    """LangGraph's Agent Chat UI (and any multimodal client) sends a message's content as a list of content
    blocks. The guide refused them ("each message must be a string or an object with a string content");
    now it answers them as the same words sent as a string, keeps them as sent, and refuses a malformed
    block with a typed error."""
    app = create_app(Settings(database_url=sqlite_url, auth=False))
    with serving(app) as base:
        async with get_client(url=base, api_key=None) as sdk:
            session_id = (await sdk.http.post("/journeys/mvp", json={"user_id": "ana"}))["session"]["session_id"]
            blocks = [
                {"type": "text", "text": "What should I do "},
                {"type": "text", "text": "next?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ]
            answers = []
            as_text = {"role": "user", "content": "What should I do next?"}
            for message in ({"type": "human", "content": blocks}, as_text):
                thread_id = (await sdk.threads.create())["thread_id"]
                done = await sdk.runs.wait(thread_id, "guide", input={"messages": [message], "session_id": session_id})
                assert isinstance(done, dict) and done["messages"][-1]["type"] == "ai", done
                answers.append(done["messages"][-1]["content"])
                assert done["messages"][0]["content"] == message["content"]  # kept as sent
            assert answers[0] == answers[1] and "I suggest the Content Pillar next" in answers[0]

            for bad in ([1], [{"text": "no type"}], [{"type": "text", "text": 5}], {"type": "text"}):
                thread_id = (await sdk.threads.create())["thread_id"]
                said = {"messages": [{"type": "human", "content": bad}]}
                done = await sdk.runs.wait(thread_id, "guide", input=said, raise_error=False)
                assert isinstance(done, dict) and done["__error__"]["error"] == "InvalidInputError", (bad, done)
                assert "content blocks" in done["__error__"]["message"]
