"""The guide agent at the graph level: real tool calls on the MVP orchestrator, token streaming in
``messages`` mode, the agent-call path for the tools that change a session, and the rule-based model's
understanding of what users say."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from pydantic import Field

from agents import AgentRequest
from agents.guide_model import DeterministicGuideModel
from graphs import JourneyRuntime
from graphs.guide import default_guide_model, guide_graph, mvp_pillars
from graphs.session.mvp import RECOMMENDED_FLOW

RULES = default_guide_model()


@pytest.mark.parametrize(
    ("said", "planned"),
    [
        ("what next?", [("recommend_next_pillar", {})]),
        ("What should I do now? Suggest something", [("recommend_next_pillar", {})]),
        ("where do I start?", [("recommend_next_pillar", {})]),
        ("what's left in insights?", [("explain_pillar", {"pillar_id": "insights"})]),
        ("What is still missing?", [("explain_pillar", {})]),
        ("how do I upload files?", [("explain_pillar", {"pillar_id": "content"})]),
        ("take me to operations", [("navigate_to_pillar", {"pillar_id": "operations"})]),
        ("Go to the business outcome pillar please", [("navigate_to_pillar", {"pillar_id": "business_outcome"})]),
        ("switch to ops", [("navigate_to_pillar", {"pillar_id": "operations"})]),
        ("I finished the content pillar", [("record_progress", {"pillar_id": "content", "pillar_complete": True})]),
        (
            "I uploaded and parsed the files",
            [("record_progress", {"pillar_id": "content", "updates": {"files_uploaded": True, "files_parsed": True}})],
        ),
        (
            "We generated the insights summary",
            [("record_progress", {"pillar_id": "insights", "updates": {"insights_summary_generated": True}})],
        ),
        (
            "I reviewed the summaries",
            [("record_progress", {"pillar_id": "business_outcome", "updates": {"summaries_reviewed": True}})],
        ),
        (
            "I created the coexistence blueprint and the SOP",
            [
                (
                    "record_progress",
                    {
                        "pillar_id": "operations",
                        "updates": {"sop_generated": True, "coexistence_blueprint_created": True},
                    },
                )
            ],
        ),
        ("start my MVP journey", [("recommend_next_pillar", {})]),
        ("let me begin", [("recommend_next_pillar", {})]),
        # A report without a person is a report too.
        ("files uploaded", [("record_progress", {"pillar_id": "content", "updates": {"files_uploaded": True}})]),
        (
            "the insights summary is generated",
            [("record_progress", {"pillar_id": "insights", "updates": {"insights_summary_generated": True}})],
        ),
        ("content is done", [("record_progress", {"pillar_id": "content", "pillar_complete": True})]),
        ("how far am I?", [("get_session_progress", {})]),
        ("show me my progress", [("get_session_progress", {})]),
    ],
)
def test_the_rules_map_what_users_say_to_tool_calls(said: str, planned: list[tuple[str, dict[str, Any]]]) -> None:
    assert RULES.plan(said) == planned


@pytest.mark.parametrize(
    ("said", "starts"),
    [
        ("hello", "Hello! I can tell you what to do next"),
        ("What is the capital of France?", "I can't answer that: I only know your MVP journey."),
        ("take me somewhere nice", "Which pillar shall I take you to? The pillars are Content Pillar, Insights"),
        ("I'm done!", "Which pillar did you finish?"),
        # What the guide cannot do is named, with what to do instead, not "I only know your MVP journey".
        ("roll back the content pillar", "I cannot roll back or undo what is recorded. The pillars are free"),
        ("undo that", "I cannot roll back or undo what is recorded."),
        ("approve my MVP journey", "I cannot approve or reject anything: a reviewer decides"),
        ("cancel my journey", "I cannot cancel or close your MVP journey: whoever runs your MVP closes"),
    ],
)
def test_the_rules_answer_without_tools_when_no_tool_helps(said: str, starts: str) -> None:
    answer = RULES.plan(said)
    assert isinstance(answer, str) and answer.startswith(starts)


@pytest.mark.parametrize(
    ("said", "planned"),
    [
        # Only what the user says is done is recorded: a clause that denies it records nothing.
        (
            "I uploaded the files but haven't parsed them",
            [("record_progress", {"pillar_id": "content", "updates": {"files_uploaded": True}})],
        ),
        (
            "I uploaded the files, the parsing failed",
            [("record_progress", {"pillar_id": "content", "updates": {"files_uploaded": True}})],
        ),
        ("I did not upload the files", [("explain_pillar", {"pillar_id": "content"})]),
        ("I haven\u2019t parsed the files yet", [("explain_pillar", {"pillar_id": "content"})]),
        ("we still need to parse the files", [("explain_pillar", {"pillar_id": "content"})]),
        ("I tried to upload the files but it failed", [("explain_pillar", {"pillar_id": "content"})]),
        ("I never selected a file", [("explain_pillar", {"pillar_id": "insights"})]),
        ("the roadmap is not generated", [("explain_pillar", {"pillar_id": "business_outcome"})]),
        ("I have not finished insights", [("explain_pillar", {"pillar_id": "insights"})]),
        ("I'm not done with operations", [("explain_pillar", {"pillar_id": "operations"})]),
        # "no" and "without" say how it went, not that it did not happen.
        (
            "I uploaded the files with no errors",
            [("record_progress", {"pillar_id": "content", "updates": {"files_uploaded": True}})],
        ),
    ],
)
def test_a_denied_report_records_nothing(said: str, planned: list[tuple[str, dict[str, Any]]]) -> None:
    """The rules read a report's words, not its sense: "I did not upload the files" recorded the files
    as uploaded, and "I have not finished insights" completed the pillar. A clause that denies (not,
    never, n't) or leaves undone (tried, failed, need to, will) now records nothing of what it names."""
    assert RULES.plan(said) == planned


def test_asked_not_to_move_the_guide_does_not_move() -> None:
    answer = RULES.plan("don't take me to insights")
    assert answer == "All right: I have not moved you."


async def test_a_denied_report_leaves_the_session_as_it_was_and_says_so(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as runtime:
        session_id = (await runtime.mvp.start_mvp_journey("ana"))["session"]["session_id"]
        graph = guide_graph(runtime)
        _turn, answer, _tokens = await _say(graph, "chat-n", "I did not upload the files", session_id=session_id)
        assert answer == (
            "I have recorded nothing: you said it is not done. In the Content Pillar, still to do: files uploaded "
            "and files parsed. Its actions: upload file, parse file, preview data and chat with content liaison."
        )
        _turn, answer, _tokens = await _say(graph, "chat-n", "I have not finished insights")
        assert answer.startswith("I have recorded nothing: you said it is not done. In the Insights Pillar")
        completion = await runtime.mvp.check_mvp_completion(session_id)
        assert completion["pillar_status"]["content"]["progress"] == {}
        assert not completion["pillar_status"]["insights"]["complete"]
        assert not [e for e in await runtime.history(session_id) if e.type == "agent.completed"]


async def _say(graph: Any, thread: str, text: str, **extra: Any) -> tuple[list[Any], str, list[str]]:
    """One turn, streamed in ``messages`` mode: the turn's messages, the answer, and the streamed tokens."""
    config = {"configurable": {"thread_id": thread}}
    tokens: list[str] = []
    async for message, metadata in graph.astream(
        {"messages": [HumanMessage(text)], **extra}, config, stream_mode="messages"
    ):
        if isinstance(message, AIMessageChunk) and message.content:
            assert metadata["langgraph_node"] == "agent"
            tokens.append(str(message.content))
    messages = (await graph.aget_state(config)).values["messages"]
    last_human = max(i for i, m in enumerate(messages) if isinstance(m, HumanMessage))
    return messages[last_human:], str(messages[-1].content), tokens


async def test_a_conversation_streams_tokens_and_moves_the_session(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as runtime:
        session_id = (await runtime.mvp.start_mvp_journey("ana"))["session"]["session_id"]
        graph = guide_graph(runtime)

        turn, answer, tokens = await _say(graph, "chat-1", "I uploaded and parsed the files", session_id=session_id)
        call, result, reply = turn[1:]
        assert isinstance(call, AIMessage) and call.tool_calls[0]["name"] == "record_progress"
        assert isinstance(result, ToolMessage) and result.tool_call_id == call.tool_calls[0]["id"]
        assert isinstance(reply, AIMessage) and not reply.tool_calls
        assert len(tokens) > 10 and "".join(tokens) == answer  # the answer arrived word by word
        assert (await runtime.mvp.get_recommended_next_pillar(session_id))["recommended_pillar"] == "insights"

        _turn, answer, _tokens = await _say(graph, "chat-1", "take me to operations")
        progress = await runtime.mvp.sessions.get_session_progress(session_id)
        assert progress["current_area"] == "operations" and answer.startswith("Done: you are now in the Operations")

        # Each change is one audit event on the session, made by the agent-call path.
        events = [e for e in await runtime.history(session_id) if e.type == "agent.completed"]
        assert [(e.payload["intent"], e.step) for e in events] == [
            ("guide.record_progress", "content"),
            ("guide.navigate_to_pillar", "operations"),
        ]


async def test_the_policy_path_refuses_a_tool_and_the_guide_says_so() -> None:
    async with JourneyRuntime.open("memory://") as runtime:
        session_id = (await runtime.mvp.start_mvp_journey("ana"))["session"]["session_id"]

        def record(request: AgentRequest) -> dict[str, Any]:
            raise AssertionError("a refused agent is never called")

        # An agent for the guide's intent that needs more than the guide grants.
        runtime.agents.register("guide.record_progress", record, permissions=("admin",))
        _turn, answer, _tokens = await _say(
            guide_graph(runtime), "chat-2", "I finished the content pillar", session_id=session_id
        )
        assert answer.startswith("I could not do that: agent 'record' needs permissions ['admin']")
        assert not (await runtime.mvp.check_mvp_completion(session_id))["pillar_status"]["content"]["complete"]


async def test_without_a_session_the_guide_reads_the_given_progress_and_changes_nothing() -> None:
    async with JourneyRuntime.open("memory://") as runtime:
        graph = guide_graph(runtime)
        _turn, answer, _tokens = await _say(graph, "chat-3", "what next?", progress={"content": True})
        assert answer.startswith("I suggest the Insights Pillar next")
        _turn, answer, _tokens = await _say(graph, "chat-3", "take me to operations")
        assert answer == "I could not do that: there is no MVP session to navigate: start one and pass its session_id"


async def test_a_replayed_tool_call_is_applied_once() -> None:
    """A retried run replays the same tool call id: the session changes once, the log says so once."""
    async with JourneyRuntime.open("memory://") as runtime:
        session_id = (await runtime.mvp.start_mvp_journey("ana"))["session"]["session_id"]
        calls = 0

        async def navigate(request: AgentRequest) -> dict[str, Any]:
            nonlocal calls
            calls += 1
            return await runtime.mvp.navigate_to_pillar(session_id, str(request.payload["pillar_id"]))

        runtime.agents.register("guide.navigate_to_pillar", navigate, permissions=("mvp.navigate",))
        graph = guide_graph(runtime)
        config: Any = {"configurable": {"thread_id": "chat-4"}}
        call = AIMessage(
            "", id="m1", tool_calls=[{"name": "navigate_to_pillar", "args": {"pillar_id": "insights"}, "id": "c1"}]
        )
        for _ in range(2):  # the model's tool call, checkpointed, then the run that executes it, twice
            update = {"messages": [HumanMessage("go to insights", id="h1"), call], "session_id": session_id}
            await graph.aupdate_state(config, update, as_node="agent")
            await graph.ainvoke(None, config)
            await runtime.store.saver.adelete_thread("chat-4")  # as if a crash lost the run's checkpoints
        assert calls == 1
        events = [e for e in await runtime.history(session_id) if e.type == "agent.completed"]
        assert len(events) == 1


class ProviderLikeModel(DeterministicGuideModel):
    """The rules, refusing a chat as chat model providers do (OpenAI, Anthropic): every tool call of an AI
    message must be answered by a tool message before the chat goes on."""

    def reply(self, messages: Sequence[BaseMessage], tool_names: Sequence[str] | None) -> AIMessage:
        open_calls: set[str] = set()
        for message in messages:
            if isinstance(message, ToolMessage):
                open_calls.discard(message.tool_call_id)
            elif open_calls:
                raise ValueError(f"tool calls {sorted(open_calls)} must be followed by tool messages")
            if isinstance(message, AIMessage):
                open_calls = {str(call["id"]) for call in message.tool_calls}
        return super().reply(messages, tool_names)


async def test_a_turn_cut_short_between_the_tool_call_and_the_tool_does_not_break_the_chat(store_url: str) -> None:
    """A run stopped after the model asked for a tool but before the tool ran (a double-texting interrupt,
    an ``interrupt_before``) leaves a tool call with no answer in the chat. The next turn handed the model
    that chat as it was, which a provider's model refuses: every later turn of the thread failed. The model
    now sees the unanswered call answered as not run, and the chat goes on."""
    model = ProviderLikeModel(pillars=mvp_pillars(), flow=list(RECOMMENDED_FLOW))
    async with JourneyRuntime.open(store_url, guide_model=lambda: model) as runtime:
        session_id = (await runtime.mvp.start_mvp_journey("ana"))["session"]["session_id"]
        graph = guide_graph(runtime)
        config: Any = {"configurable": {"thread_id": "chat-5"}}
        first = {"messages": [("user", "take me to operations")], "session_id": session_id}
        await graph.ainvoke(first, config, interrupt_before=["tools"])  # stopped before the tool ran
        assert (await graph.aget_state(config)).values["messages"][-1].tool_calls

        answered = await graph.ainvoke({"messages": [("user", "I uploaded and parsed the files")]}, config)
        assert answered["messages"][-1].content.startswith("Recorded in the Content Pillar")
        progress = await runtime.mvp.sessions.get_session_progress(session_id)
        assert progress["current_area"] == "content"  # the call that never ran moved nothing
        assert progress["areas"]["content"]["complete"]


class ScriptedToolModel(FakeMessagesListChatModel):
    """A tool-calling chat model as an LLM behaves: its first tool call has an argument of the wrong type; told
    so, it calls again correctly, then answers. It keeps what it is handed each time."""

    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.seen.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


async def test_a_tool_call_with_bad_arguments_is_told_to_the_model_which_calls_again(store_url: str) -> None:
    """An LLM's tool call whose arguments do not fit the tool (a flag 'definitely' for a boolean, a missing
    pillar) failed the whole turn with ToolInvocationError (the run 'error', logged with a traceback): the
    guide's tool-error handler passed only the runtime's own errors to the model. As LangGraph's ToolNode does
    by default, the model is now told what was wrong with its call, and can call again."""
    bad = {"pillar_id": "content", "updates": {"files_uploaded": "definitely"}}
    good = {"pillar_id": "content", "updates": {"files_uploaded": True, "files_parsed": True}}
    model = ScriptedToolModel(
        responses=[
            AIMessage("", tool_calls=[{"name": "record_progress", "args": bad, "id": "c1"}]),
            AIMessage("", tool_calls=[{"name": "navigate_to_pillar", "args": {"pillar": "insights"}, "id": "c2"}]),
            AIMessage("", tool_calls=[{"name": "record_progress", "args": good, "id": "c3"}]),
            AIMessage("Recorded: the content pillar is complete."),
        ]
    )
    async with JourneyRuntime.open(store_url, guide_model=lambda: model) as runtime:
        session_id = (await runtime.mvp.start_mvp_journey("ana"))["session"]["session_id"]
        config: Any = {"configurable": {"thread_id": "chat-6"}}
        turn = {"messages": [("user", "I uploaded and parsed the files")], "session_id": session_id}
        answered = await guide_graph(runtime).ainvoke(turn, config)
        assert answered["messages"][-1].content == "Recorded: the content pillar is complete."
        told = [m for m in answered["messages"] if isinstance(m, ToolMessage)]
        assert [(m.tool_call_id, m.status) for m in told] == [("c1", "error"), ("c2", "error"), ("c3", "success")]
        assert "updates.files_uploaded: Input should be a valid boolean" in str(told[0].content)
        assert "pillar_id: Field required" in str(told[1].content)
        assert any(isinstance(m, ToolMessage) and m.tool_call_id == "c1" for m in model.seen[1])
        progress = await runtime.mvp.sessions.get_session_progress(session_id)
        assert progress["areas"]["content"]["complete"] and progress["current_area"] == "content"
