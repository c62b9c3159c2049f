"""The guide's chat models.

:class:`DeterministicGuideModel` is the default: a small rule-based chat model, offline and
deterministic, that maps what the user says (English) to the guide's tool calls and phrases the tools'
results. It supports ``bind_tools`` and streams its answers token by token, like a real LLM, so the
guide graph and its clients cannot tell the difference in shape.

Any other langchain-core chat model that supports tool calling can take its place: ``module:factory``,
a zero-argument factory returning a ``BaseChatModel`` (``--guide-model``, ``$JOURNEYS_GUIDE_MODEL``;
LangGraph's own tooling reads the variable too). :func:`load_guide_model` resolves and calls it once at
startup, so a bad value stops the server before it serves, not at the first guide run.
"""

from __future__ import annotations

import importlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from agents.errors import GuideModelError
from agents.guide import ModelFactory

ToolLike = dict[str, Any] | type | Callable[..., Any] | BaseTool
Call = tuple[str, dict[str, Any]]  # a tool call the rules chose: (tool name, arguments)

# Words of a completion flag that say nothing about which flag it is.
_GENERIC = frozenset({"file", "files", "generated", "complete", "created", "pillar"})
_COMPLETION = (
    "finished",
    "completed",
    "complete",
    "done with",
    "i'm done",
    "i am done",
    "is done",
    "are done",
    "wrapped up",
)
_NAVIGATE = ("take me", "go to", "navigate", "switch to", "move to", "bring me", "jump to", "open the", "let's go")
_LEFT = (
    "left",
    "remaining",
    "remain",
    "missing",
    "still to do",
    "to do",
    "todo",
    "explain",
    "what is in",
    "what's in",
    "need to",
    "how do i",
)
_NEXT = ("next", "recommend", "suggest", "should i", "what now", "where to start", "start with", "do i start")
_PROGRESS = ("progress", "status", "how far", "percent", "where am i", "how am i doing", "overview", "so far")
_GREETING = ("hello", "hi", "hey", "help", "what can you do", "who are you")
_QUESTION = ("what", "how", "where", "which", "why", "when", "can", "could", "should", "do", "does", "is", "are")
_START = ("start", "begin", "get started", "kick off")
# What users ask of a guide that it cannot do, and the answer that says so and what to do instead.
_CANNOT = (
    (
        ("roll back", "rollback", "undo", "revert", "reset", "unrecord"),
        "I cannot roll back or undo what is recorded. The pillars are free to visit in any order, so nothing "
        "needs undoing to go back to one: say, for example, 'take me to content'.",
    ),
    (
        ("approve", "approval", "reject", "sign off"),
        "I cannot approve or reject anything: a reviewer decides on a closed MVP session held for review.",
    ),
    (
        ("cancel", "close my", "close the", "delete", "abandon", "quit", "stop my"),
        "I cannot cancel or close your MVP journey: whoever runs your MVP closes the session.",
    ),
)
# Words that make a clause deny what it names ("I did not upload", "don't take me there"), and words that
# leave a reported action undone ("I tried to upload", "we need to parse"). A clause with either reports
# nothing done; only a denial cancels a request. Contractions are matched by their "n't" too.
_NEGATION = frozenset(
    {"not", "never", "nothing", "none", "neither", "nor", "cannot"}
    | {"dont", "didnt", "doesnt", "havent", "hasnt", "hadnt", "cant", "couldnt", "wont", "isnt", "arent", "wasnt"}
)
_UNDONE = _NEGATION | frozenset(
    {"forgot", "failed", "fail", "fails", "tried", "try", "trying", "unable", "need", "needs", "must", "will"}
    | {"going", "want", "wants", "plan", "planning"}
)
# Where one clause of a report ends and the next begins ("I uploaded the files but haven't parsed them").
_CLAUSE_BREAK = re.compile(r"[,;.!?]|\b(?:but|though|although|however|except|whereas)\b")
NOTHING_RECORDED = "I have recorded nothing: you said it is not done."


def load_guide_model(path: str) -> ModelFactory:
    """The factory named by ``path`` (``package.module:factory``), checked by calling it once; the model
    it returned is the one the guide uses."""
    module_name, _, name = path.partition(":")
    if not module_name or not name:
        raise GuideModelError(f"guide model {path!r}: expected module:factory, e.g. my_models:chat_model")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise GuideModelError(f"guide model {path!r}: cannot import {module_name!r} ({exc})") from exc
    if not hasattr(module, name):
        raise GuideModelError(f"guide model {path!r}: module {module_name!r} has no {name!r}")
    factory = getattr(module, name)
    if not callable(factory):
        raise GuideModelError(f"guide model {path!r}: {name!r} is a {type(factory).__name__}, not a factory")
    try:
        model = factory()
    except Exception as exc:  # the user's code: any failure is reported as the setting's
        raise GuideModelError(f"guide model {path!r}: the factory failed: {exc!r}") from exc
    if not isinstance(model, BaseChatModel):
        raise GuideModelError(
            f"guide model {path!r}: the factory returned a {type(model).__name__}, not a langchain-core BaseChatModel"
        )
    try:
        model.bind_tools([_PROBE_TOOL])
    except NotImplementedError as exc:
        raise GuideModelError(
            f"guide model {path!r}: {type(model).__name__} does not support tool calling (bind_tools); "
            "the guide acts through tools"
        ) from exc
    return lambda: model


# A tool definition to check, at startup, that a configured model can bind tools at all.
_PROBE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "probe", "description": "checks tool binding", "parameters": {"type": "object"}},
}


def _stem(word: str) -> str:
    return word[:5]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("\u2019", "'"))


def _clauses(said: str, markers: frozenset[str]) -> tuple[str, str]:
    """The words of ``said``'s clauses without any of ``markers``, and of those with one, each as one text
    (clauses apart by a comma, so a phrase never spans two)."""
    plain: list[str] = []
    marked: list[str] = []
    for clause in _CLAUSE_BREAK.split(said.lower().replace("\u2019", "'")):
        words = _words(clause)
        has_marker = any(w in markers or w.endswith("n't") for w in words)
        (marked if has_marker else plain).append(" ".join(words))
    return " , ".join(plain), " , ".join(marked)


def _has(text: str, phrases: Sequence[str]) -> bool:
    """Whether ``text`` holds one of ``phrases`` as whole words."""
    return any(re.search(rf"(?<![a-z']){re.escape(p)}(?![a-z'])", text) for p in phrases)


def _human(name: str) -> str:
    """``files_uploaded == True`` (a missing criterion) or ``parse_file`` (an action), as words."""
    return name.removesuffix(" == True").replace("_", " ")


def _listing(items: Sequence[str]) -> str:
    items = [_human(i) for i in items]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


class DeterministicGuideModel(BaseChatModel):
    """The guide's default model: rules, not a network. Built for a set of pillars (``{pillar_id:
    {"area_name", "actions", "completion"}}``) in a recommended ``flow``; the same chat, the same answer.

    It reads the user's last message and answers with a tool call (report progress, navigate, explain a
    pillar, recommend, read progress) or, once the tools answered, phrases their results. A question it
    cannot map to a tool gets an answer that says what it can do instead.
    """

    pillars: dict[str, dict[str, Any]] = Field(default_factory=dict)
    flow: list[str] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "journeys-deterministic-guide"

    def bind_tools(
        self, tools: Sequence[ToolLike], *, tool_choice: str | None = None, **kwargs: Any
    ) -> Runnable[LanguageModelInput, AIMessage]:
        names = [convert_to_openai_tool(t)["function"]["name"] for t in tools]
        return self.bind(tool_names=names, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self.reply(messages, kwargs.get("tool_names")))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from _chunks(self.reply(messages, kwargs.get("tool_names")))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in _chunks(self.reply(messages, kwargs.get("tool_names"))):
            yield chunk

    def reply(self, messages: Sequence[BaseMessage], tool_names: Sequence[str] | None) -> AIMessage:
        """The next message: the next tool call of the plan for the user's last message, or the answer."""
        turn = _current_turn(messages)
        # Its text blocks' words, however the client sent them (a string, or content blocks).
        said = str(turn[0].text) if turn and isinstance(turn[0], HumanMessage) else ""
        plan, denied = self._understand(said)
        if isinstance(plan, str):
            return AIMessage(content=plan)
        calls_made = sum(1 for m in turn if isinstance(m, AIMessage) and m.tool_calls)
        if calls_made < len(plan):
            name, args = plan[calls_made]
            if tool_names is not None and name not in tool_names:
                return AIMessage(content=f"I cannot {_human(name)} here: that tool is not available to me.")
            call_id = f"call_{uuid.uuid4().hex[:20]}"
            return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": call_id, "type": "tool_call"}])
        results = [m for m in turn if isinstance(m, ToolMessage)]
        preface = [NOTHING_RECORDED] if denied else []
        return AIMessage(content=" ".join([*preface, *(self._phrase(m) for m in results)]))

    # -- understanding --------------------------------------------------------------------------------

    def plan(self, said: str) -> list[Call] | str:
        """The tool calls that answer ``said``, or a direct answer when no tool is needed."""
        return self._understand(said)[0]

    def _understand(self, said: str) -> tuple[list[Call] | str, bool]:
        """The plan for ``said``, and whether it is a report of something not done (nothing is recorded then;
        what is left in the pillar it names is explained instead)."""
        text = " ".join(_words(said))
        if not text or (_has(text, _GREETING) and len(_words(said)) <= 6):
            return self._capabilities("Hello!"), False
        question = said.strip().endswith("?") or text.split()[0] in _QUESTION
        pillar = self._mentioned_pillar(text)
        done, denied = _clauses(said, _UNDONE)
        if _has(text, _NAVIGATE):
            if not _has(_clauses(said, _NEGATION)[0], _NAVIGATE):  # "don't take me to insights"
                return "All right: I have not moved you.", False
            if pillar is None:
                return f"Which pillar shall I take you to? {self._pillar_names()}.", False
            return [("navigate_to_pillar", {"pillar_id": pillar})], False
        for phrases, answer in _CANNOT:
            if _has(text, phrases):
                return self._capabilities(answer), False
        flagged_pillar, flags = self._reported_flags(done, pillar)
        completes = _has(done, _COMPLETION)
        first_person = _has(text, ("i", "we", "i've", "we've"))
        # "the files are uploaded", "files uploaded": a report without a person, told by its participle.
        participle = any(w.endswith("ed") for w in done.split())
        if not question and (first_person or completes or (participle and flags)):
            if flags and flagged_pillar is not None:
                updates = dict.fromkeys(flags, True)
                return [("record_progress", {"pillar_id": flagged_pillar, "updates": updates})], False
            if completes and pillar is not None:
                return [("record_progress", {"pillar_id": pillar, "pillar_complete": True})], False
            if completes:
                return f"Which pillar did you finish? {self._pillar_names()}.", False
        denied_pillar, denied_flags = self._reported_flags(denied, pillar)
        if not question and (denied_flags or _has(denied, _COMPLETION)):
            target = pillar or denied_pillar
            return [("explain_pillar", {"pillar_id": target} if target else {})], True
        return self._answer(text, question, pillar, *self._reported_flags(text, pillar)), False

    def _answer(
        self, text: str, question: bool, pillar: str | None, flagged_pillar: str | None, flags: list[str]
    ) -> list[Call] | str:
        """The plan for a question or request that reports nothing: explain, recommend, progress."""
        if _has(text, _LEFT) or (question and (pillar is not None or flags)):
            target = pillar or flagged_pillar
            return [("explain_pillar", {"pillar_id": target} if target else {})]
        if _has(text, _NEXT) or _has(text, _START):  # a journey to start is under way: where to start in it
            return [("recommend_next_pillar", {})]
        if _has(text, _PROGRESS):
            return [("get_session_progress", {})]
        return self._capabilities("I can't answer that: I only know your MVP journey.")

    def _pillar_names(self) -> str:
        return "The pillars are " + _listing([self._name(p) for p in self.flow or list(self.pillars)])

    def _capabilities(self, opening: str) -> str:
        return (
            f"{opening} I can tell you what to do next, what is left in a pillar, how far you are, take you to "
            "a pillar, and record what you have done (for example: 'I uploaded and parsed the files')."
        )

    def _mentioned_pillar(self, text: str) -> str | None:
        words = text.split()
        for pillar in self.flow or list(self.pillars):
            stems = [_stem(w) for w in pillar.split("_") if len(w) > 2]
            aliases = {"operations": ["ops"]}.get(pillar, [])
            if any(w.startswith(s) for w in words for s in stems) or any(a in words for a in aliases):
                return pillar
        return None

    def _reported_flags(self, text: str, pillar: str | None) -> tuple[str | None, list[str]]:
        """The pillar whose completion flags ``text`` names most, and those flags (within ``pillar`` if given)."""
        words = text.split()
        best: tuple[int, str | None, list[str]] = (0, None, [])
        for candidate in [pillar] if pillar is not None else self.flow or list(self.pillars):
            own = set(candidate.split("_"))
            scored = []
            total = 0
            for flag in self.pillars.get(candidate, {}).get("completion") or {}:
                stems = [_stem(t) for t in flag.split("_") if t not in _GENERIC and t not in own]
                hits = sum(1 for s in stems if any(w.startswith(s) for w in words))
                if hits:
                    scored.append(flag)
                    total += hits
            if total > best[0]:
                best = (total, candidate, scored)
        return best[1], best[2]

    # -- phrasing -------------------------------------------------------------------------------------

    def _name(self, pillar: str | None) -> str:
        if pillar is None:
            return "no pillar"
        return str(self.pillars.get(pillar, {}).get("area_name") or _human(pillar).title())

    def _phrase(self, result: ToolMessage) -> str:
        text = str(result.content)
        if result.status == "error" or text.startswith("Error"):
            return f"I could not do that: {text.removeprefix('Error: ')}"
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, Mapping):  # not a tool's answer: a person's, put in its place (update_state)
            return text
        phrase = {
            "get_session_progress": self._progress,
            "recommend_next_pillar": self._recommendation,
            "explain_pillar": self._pillar,
            "navigate_to_pillar": self._navigated,
            "record_progress": self._recorded,
        }.get(str(result.name))
        return phrase(data) if phrase else text

    def _progress(self, data: Mapping[str, Any]) -> str:
        areas: Mapping[str, Any] = data.get("areas") or {}
        order = [p for p in self.flow if p in areas] + [p for p in areas if p not in self.flow]
        done = [self._name(p) for p in order if areas[p].get("complete")]
        open_ = [self._name(p) for p in order if not areas[p].get("complete")]
        parts = []
        if "completion_percent" in data:
            where = f", in the {self._name(data['current_area'])}" if data.get("current_area") else ""
            parts.append(f"You are {data['completion_percent']}% through your MVP journey{where}.")
        parts.append(f"Complete: {_listing(done)}." if done else "No pillar is complete yet.")
        if open_:
            parts.append(f"Still open: {_listing(open_)}.")
        return " ".join(parts)

    def _recommendation(self, data: Mapping[str, Any]) -> str:
        pillar = data.get("recommended_pillar")
        if pillar is None:
            return "Every pillar is complete: your MVP journey is done. Review the business outcome with your team."
        info = data.get("pillar_info") or {}
        missing = [str(m) for m in info.get("missing") or []]
        actions = [str(a) for a in info.get("actions") or []]
        text = f"I suggest the {self._name(pillar)} next: it is the {data.get('reason') or 'next pillar'}."
        if missing:
            text += f" Still to do there: {_listing(missing)}."
        if actions:
            text += f" You can start with: {_listing(actions[:3])}."
        return text

    def _pillar(self, data: Mapping[str, Any]) -> str:
        name = self._name(data.get("pillar_id"))
        actions = f" Its actions: {_listing(data['actions'])}." if data.get("actions") else ""
        if data.get("complete"):
            return f"The {name} is complete; nothing is left there.{actions}"
        return f"In the {name}, still to do: {_listing(data.get('missing') or data.get('criteria') or [])}.{actions}"

    def _navigated(self, data: Mapping[str, Any]) -> str:
        name = self._name(data.get("current_area"))
        before = data.get("previous_area")
        came = f" (from the {self._name(before)})" if before and before != data.get("current_area") else ""
        actions = list((data.get("area") or {}).get("actions") or [])
        there = f" There you can {_listing(actions[:3])}." if actions else ""
        return f"Done: you are now in the {name}{came}.{there}"

    def _recorded(self, data: Mapping[str, Any]) -> str:
        pillar = data.get("area_id")
        name = self._name(pillar)
        recorded = sorted(data.get("recorded") or {})
        text = f"Recorded in the {name}: {_listing(recorded)}." if recorded else f"Recorded in the {name}."
        percent = (data.get("progress") or {}).get("completion_percent")
        if data.get("area_complete"):
            text += f" The {name} is complete ({percent}% of your MVP journey)."
        else:
            missing = ((data.get("progress") or {}).get("areas") or {}).get(pillar, {}).get("missing") or []
            text += f" Still to do there: {_listing(missing)}." if missing else ""
        nxt = data.get("next")
        return f"{text} {self._recommendation(nxt)}" if isinstance(nxt, Mapping) else text


def _current_turn(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """The user's last message and everything after it (the tool calls and results of this turn)."""
    for index in range(len(messages) - 1, -1, -1):
        if isinstance(messages[index], HumanMessage):
            return list(messages[index:])
    return []


def _chunks(message: AIMessage) -> Iterator[ChatGenerationChunk]:
    """``message`` as a stream: a tool call in one chunk, text word by word."""
    if message.tool_calls:
        calls = [
            tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
            for i, c in enumerate(message.tool_calls)
        ]
        yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=calls))
        return
    for token in re.findall(r"\S+\s*", str(message.content)):
        yield ChatGenerationChunk(message=AIMessageChunk(content=token))
