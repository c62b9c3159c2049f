"""Requests the Agent Server refuses, refused the same way here (langgraph-sdk over real HTTP, every backend):
``config.configurable`` together with ``context`` (a 400: which one a graph reads would be left to chance),
and a get_graph ``xray`` depth that is not positive (a 422, not the graph drawn without subgraphs)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import BadRequestError, NotFoundError, UnprocessableEntityError

pytestmark = pytest.mark.slow

JOURNEY = {"journey_type": "content_migration", "requirements": {"source": "a", "target": "b"}}
BOTH: dict[str, Any] = {"config": {"configurable": {"model": "a"}}, "context": {"model": "b"}}


def _said(error: BadRequestError) -> str:
    return str(error.response.json()["detail"])


async def test_configurable_and_context_together_are_refused_with_a_400(sdk_client: LangGraphClient) -> None:
    client = sdk_client
    with pytest.raises(BadRequestError) as created:
        await client.assistants.create("guide", **BOTH)
    assert "not both" in _said(created.value), created.value.response.json()
    assert [a["assistant_id"] for a in await client.assistants.search(graph_id="guide")] == ["guide"]
    alone = await client.assistants.create("guide", context={"model": "b"})  # either one alone is taken
    with pytest.raises(BadRequestError):
        await client.assistants.update(alone["assistant_id"], **BOTH)
    assert (await client.assistants.get(alone["assistant_id"]))["version"] == 1

    # A run refused so leaves nothing behind: not the thread it would have created.
    with pytest.raises(BadRequestError):
        await client.runs.create("t-both", "guide", input={}, if_not_exists="create", **BOTH)
    with pytest.raises(NotFoundError):
        await client.threads.get("t-both")
    with pytest.raises(httpx.HTTPStatusError) as waited:  # runs.wait raises httpx's own error
        await client.runs.wait(None, "guide", input={}, **BOTH)
    assert waited.value.response.status_code == 400
    with pytest.raises(BadRequestError):
        await client.crons.create("guide", schedule="0 * * * *", input={}, **BOTH)
    assert await client.crons.count() == 0


@pytest.mark.parametrize("xray", [0, -1])
async def test_get_graph_refuses_an_xray_depth_that_is_not_positive(sdk_client: LangGraphClient, xray: int) -> None:
    with pytest.raises(UnprocessableEntityError) as refused:
        await sdk_client.assistants.get_graph("guide", xray=xray)
    assert "xray" in str(refused.value.response.json()["detail"]), refused.value.response.json()
    for fine in (True, False, 1, 2):
        assert (await sdk_client.assistants.get_graph("guide", xray=fine))["nodes"]


async def test_configurable_or_context_alone_is_copied_into_the_other(sdk_client: LangGraphClient) -> None:
    """As the Agent Server does, ``config.configurable`` given alone is the context too, and ``context`` alone
    the configurable: a graph reading either finds what the client gave. Neither was copied, and a cron holding
    context that was then given config.configurable held both, which its runs were refused for."""
    client = sdk_client
    by_configurable = await client.assistants.create("guide", config={"configurable": {"model": "a"}})
    assert (by_configurable["config"]["configurable"], by_configurable["context"]) == ({"model": "a"}, {"model": "a"})
    by_context = await client.assistants.create("guide", config={"tags": ["x"]}, context={"model": "b"})
    assert by_context["config"] == {"tags": ["x"], "configurable": {"model": "b"}}
    changed = await client.assistants.update(by_context["assistant_id"], context={"model": "c"})
    assert (changed["config"]["configurable"], changed["context"]) == ({"model": "c"}, {"model": "c"})

    run = await client.runs.create(None, "guide", input={}, context={"tone": "dry"})
    assert run["kwargs"]["config"]["configurable"] == {"tone": "dry"} == run["kwargs"]["context"]

    cron = await client.crons.create("structured", schedule="0 9 * * *", input=JOURNEY, context={"tier": "gold"})
    assert cron["payload"]["config"] == {"configurable": {"tier": "gold"}}
    updated = await client.crons.update(cron["cron_id"], config={"configurable": {"tier": "silver"}})
    assert (updated["payload"]["config"], updated["payload"]["context"]) == (
        {"configurable": {"tier": "silver"}},
        {"tier": "silver"},
    )
