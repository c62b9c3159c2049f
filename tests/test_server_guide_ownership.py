"""The guide acts on an MVP session only for a caller who may act on it, over real HTTP with the official
langgraph-sdk client, two users, on SQLite and PostgreSQL.

The guide takes the session to guide as ``input.session_id``. Bob's guide thread, given Ana's session id,
used to read her progress, take her to another pillar and record progress in her session: any user could
change any other user's MVP journey. A session the caller may not act on is now not found (404) when the
run, a cron or a state update names it, and nothing of Ana's moves."""

from __future__ import annotations

import httpx
import pytest
from langgraph_sdk.client import LangGraphClient

from server.settings import ApiKey

pytestmark = pytest.mark.slow
WORK = frozenset({"read", "runs", "journeys", "tasks"})
KEYS = {"key-ana": ApiKey("ana", WORK, ()), "key-bob": ApiKey("bob", WORK, ())}


def _say(session_id: str, text: str) -> dict[str, object]:
    return {"session_id": session_id, "messages": [{"role": "user", "content": text}]}


async def test_a_guide_run_acts_only_on_a_session_its_caller_may_act_on(
    ana: LangGraphClient, bob: LangGraphClient
) -> None:
    anas = (await ana.http.post("/journeys/mvp", json={"user_id": "ana"}))["session"]["session_id"]
    before = await ana.http.get(f"/journeys/mvp/{anas}/completion")
    bobs_thread = str((await bob.threads.create())["thread_id"])
    for text in ("how far am I?", "I finished the content pillar", "go to insights"):
        with pytest.raises(httpx.HTTPStatusError) as refused:
            await bob.runs.wait(bobs_thread, "guide", input=_say(anas, text))
        assert refused.value.response.status_code == 404
    cron = {"assistant_id": "guide", "schedule": "0 9 * * *", "input": _say(anas, "I finished the content pillar")}
    with pytest.raises(httpx.HTTPStatusError) as refused:
        await bob.http.post("/runs/crons", json=cron)
    assert refused.value.response.status_code == 404
    # Bob's own guide thread, pointed at Ana's session by a state update instead, is refused too.
    await bob.runs.wait(bobs_thread, "guide", input={"messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(httpx.HTTPStatusError) as refused:
        await bob.threads.update_state(bobs_thread, {"session_id": anas})
    assert refused.value.response.status_code == 404
    assert await ana.http.get(f"/journeys/mvp/{anas}/completion") == before
    assert await bob.runs.list(bobs_thread) and all(r["status"] == "success" for r in await bob.runs.list(bobs_thread))

    # Ana guides her own session: her progress is recorded.
    anas_thread = str((await ana.threads.create())["thread_id"])
    await ana.runs.wait(anas_thread, "guide", input=_say(anas, "I finished the content pillar"))
    assert (await ana.http.get(f"/journeys/mvp/{anas}/completion"))["pillar_status"]["content"]["complete"] is True
