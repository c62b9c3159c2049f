"""The served guide phrases its answers with the chat model named by --guide-model / $JOURNEYS_GUIDE_MODEL."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from typer.testing import CliRunner

from agents.errors import GuideModelError
from server.app import create_app
from server.cli import app as cli
from server.settings import Settings
from tests.server_support import serving

PROMPTS: list[list[BaseMessage]] = []


class RecordingChatModel(BaseChatModel):
    """Stands in for a real LLM, offline: it keeps the prompts it gets and answers in its own words."""

    @property
    def _llm_type(self) -> str:
        return "test-recording"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        PROMPTS.append(messages)
        answer = f"(llm) you asked {messages[-1].content!r}"
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=answer))])


def recording_model() -> BaseChatModel:
    return RecordingChatModel()


def not_a_model() -> str:
    return "gpt-5"


def failing_model() -> BaseChatModel:
    raise RuntimeError("OPENAI_API_KEY is not set")


NOT_A_FACTORY = 42


@pytest.mark.slow
async def test_the_guide_answers_with_the_configured_model(sqlite_url: str) -> None:
    PROMPTS.clear()
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
    [prompt] = PROMPTS  # the model was given the recommendation to phrase: insights follows content
    assert '"recommended_pillar": "insights"' in str(prompt[0].content)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("no_colon_here", "expected module:factory"),
        ("no_such_module_xyz:factory", "cannot import 'no_such_module_xyz'"),
        (f"{__name__}:missing", f"module {__name__!r} has no 'missing'"),
        (f"{__name__}:NOT_A_FACTORY", "'NOT_A_FACTORY' is a int, not a factory"),
        (f"{__name__}:not_a_model", "the factory returned a str, not a langchain-core BaseChatModel"),
        (f"{__name__}:failing_model", "the factory failed: RuntimeError('OPENAI_API_KEY is not set')"),
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
