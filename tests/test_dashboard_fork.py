"""Forking a journey from an earlier step over HTTP, on every backend: the JSON route
(``POST /journeys/{id}/fork``) and the dashboard's button, behind the same scopes and ownership as every
other action; two principals act at once, each on their own journeys only."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from graphs import READY_TO_START
from server.app import create_app
from server.settings import ApiKey, Settings

WORK = frozenset({"read", "runs", "journeys", "tasks"})
KEYS = {
    "key-ana": ApiKey("ana", WORK),
    "key-bob": ApiKey("bob", WORK),
    "key-rita": ApiKey("rita", frozenset({"read"})),
}
MIGRATION = ["upload_content", "analyze_content", "transform_data", "validate_results"]
ORIGIN = {"origin": "http://journeys"}


@asynccontextmanager
async def serving(url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(database_url=url, api_keys=dict(KEYS), run_timers=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://journeys") as http:
            yield http


def as_(key: str) -> dict[str, str]:
    return {"x-api-key": key}


def ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, (response.request.url, response.status_code, response.text)
    return response.json()


async def started(http: httpx.AsyncClient, key: str, user: str, steps: int) -> str:
    """A structured journey of ``user`` (through the JSON API, as ``key``), advanced ``steps`` steps."""
    designed = await http.post(
        "/journeys/structured/designs", json={"journey_type": "content_migration"}, headers=as_(key)
    )
    design = ok(designed)
    journey = design["journey_id"]
    run = ok(await http.post(f"/journeys/structured/{journey}/executions", json={"user_id": user}, headers=as_(key)))
    for step in MIGRATION[:steps]:
        advance = f"/journeys/structured/{journey}/users/{user}/advance"
        ok(await http.post(advance, json={"step_result": {"files": [step]}}, headers=as_(key)))
    return str(run["instance_id"])


async def test_a_journey_forks_over_http_for_its_owner_and_for_no_one_else(store_url: str) -> None:
    async with serving(store_url) as http:
        source = await started(http, "key-ana", "ana", 3)
        before = ok(await http.get(f"/journeys/{source}/status", headers=as_("key-ana")))

        # A stranger cannot fork it (or learn that it exists), nor can a key without the 'journeys' scope.
        body = {"step_id": "analyze_content"}
        refused = await http.post(f"/journeys/{source}/fork", json=body, headers=as_("key-bob"))
        assert refused.status_code == 404, refused.text
        assert (await http.post(f"/journeys/{source}/fork", json=body, headers=as_("key-rita"))).status_code == 403

        made = await http.post(f"/journeys/{source}/fork", json=body, headers=as_("key-ana"))
        assert made.status_code == 200, made.text
        fork = made.json()
        fork_id = fork["instance_id"]
        assert (fork["pattern"], fork["user_id"], fork["current_step"]) == ("structured", "ana", "transform_data")
        assert fork["completed_steps"] == MIGRATION[:2]
        assert (await http.get(f"/journeys/{fork_id}/status", headers=as_("key-bob"))).status_code == 404
        history = ok(await http.get(f"/journeys/{fork_id}/history", headers=as_("key-ana")))
        assert history[-1]["type"] == "journey.forked_from"

        # The fork goes on through the Agent Server API (a journey's id is its thread's) and completes.
        for step in MIGRATION[2:]:
            resumed = {"assistant_id": "structured", "command": {"resume": {"files": [step]}}}
            ok(await http.post(f"/threads/{fork_id}/runs/wait", json=resumed, headers=as_("key-ana")))
        done = ok(await http.get(f"/journeys/{fork_id}/status", headers=as_("key-ana")))
        assert (done["status"], done["completed_steps"]) == ("completed", MIGRATION)
        after = ok(await http.get(f"/journeys/{source}/status", headers=as_("key-ana")))
        assert after == before

        # Refusals name what is allowed: a step not completed, a pattern without steps in its log.
        early = await http.post(
            f"/journeys/{source}/fork", json={"step_id": "validate_results"}, headers=as_("key-ana")
        )
        assert early.status_code == 409 and early.json()["code"] == "ForkPointError"
        assert early.json()["details"]["allowed"] == MIGRATION[:3]
        lifecycle = ok(
            await http.post(
                "/journeys/lifecycle", json={"client_id": "c-1", "metrics": READY_TO_START}, headers=as_("key-ana")
            )
        )
        other = await http.post(
            f"/journeys/{lifecycle['journey_id']}/fork", json={"step_id": "sandbox"}, headers=as_("key-ana")
        )
        assert other.status_code == 409 and other.json()["code"] == "ForkUnsupportedError"


async def login(http: httpx.AsyncClient, key: str) -> None:
    response = await http.post("/ui/login", data={"api_key": key, "next": "/ui/journeys"})
    assert response.status_code == 303, response.text


def listed(page: httpx.Response) -> list[str]:
    assert page.status_code == 200, page.text
    return re.findall(r'<tr class="journey" data-instance="([^"]+)"', page.text)


async def test_two_users_on_the_dashboard_at_once_see_and_fork_only_their_own_journeys(store_url: str) -> None:
    async with serving(store_url) as server:
        transport = server._transport  # one app; each user has a client (a cookie jar) of their own
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://journeys") as ana,
            httpx.AsyncClient(transport=transport, base_url="http://journeys") as bob,
        ):
            anas, bobs = await asyncio.gather(
                asyncio.gather(*(started(server, "key-ana", "ana", 2) for _ in range(2))),
                asyncio.gather(*(started(server, "key-bob", "bob", 2) for _ in range(2))),
            )
            await asyncio.gather(login(ana, "key-ana"), login(bob, "key-bob"))

            async def fork_on_page(client: httpx.AsyncClient, instance_id: str) -> str:
                page = await client.get(f"/ui/journeys/{instance_id}")
                assert page.status_code == 200, page.text
                # The timeline offers a fork after each step's last completion.
                assert re.findall(r'data-step="([^"]+)"', page.text) == MIGRATION[:2]
                posted = await client.post(
                    f"/ui/journeys/{instance_id}/fork", data={"step_id": "upload_content"}, headers=ORIGIN
                )
                assert posted.status_code == 303, posted.text
                return posted.headers["location"].removeprefix("/ui/journeys/")

            # Both fork their own journeys at the same time.
            forks = await asyncio.gather(*(fork_on_page(ana, i) for i in anas), *(fork_on_page(bob, i) for i in bobs))
            anas_forks, bobs_forks = forks[:2], forks[2:]

            ana_list, bob_list = await asyncio.gather(ana.get("/ui/journeys"), bob.get("/ui/journeys"))
            assert sorted(listed(ana_list)) == sorted([*anas, *anas_forks])
            assert sorted(listed(bob_list)) == sorted([*bobs, *bobs_forks])
            page = await ana.get(f"/ui/journeys/{anas_forks[0]}")
            assert 'id="forked-from"' in page.text and anas[0] in page.text
            assert re.search(r'id="current-step">analyze_content<', page.text)

            # Neither reaches the other's journeys: the page, a fork or a cancel of one is "not found".
            for client, theirs in ((ana, bobs[0]), (bob, anas_forks[0])):
                assert (await client.get(f"/ui/journeys/{theirs}")).status_code == 404
                posted = await client.post(
                    f"/ui/journeys/{theirs}/fork", data={"step_id": "upload_content"}, headers=ORIGIN
                )
                assert posted.status_code == 404, posted.text
                assert "no journey instance" in posted.text
            assert sorted(listed(await bob.get("/ui/journeys"))) == sorted([*bobs, *bobs_forks])
