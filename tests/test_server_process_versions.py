"""Process versions over real HTTP: a gradual rollout, an A/B test and the migration of waiting instances, as a
user of the server runs an upgrade, with two tenants' API keys, on memory, SQLite and PostgreSQL.

Before, none of it had a route: ``set_rollout``, ``ab_test`` and ``migrate`` were Python only, and a deploy over
HTTP gave the new version every new instance at once, so a server's user could not upgrade without writing
Python against the runtime."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from server.app import create_app
from server.settings import ApiKey, Settings
from tests.server_support import serving

WORK = frozenset({"read", "journeys", "tasks"})
KEYS = {
    "key-ana": ApiKey("ana", WORK, ("finance",), tenant="acme"),
    "key-bob": ApiKey("bob", WORK, ("finance",), tenant="globex"),
    "key-vic": ApiKey("vic", frozenset({"read"}), (), tenant="acme"),
}


def expense(version: int) -> dict[str, Any]:
    """v1: one review by finance. v2 renames it and wants the amount checked (a stricter response schema)."""
    if version == 1:
        task = {"type": "user_task", "id": "review", "title": "Review", "candidate_groups": ["finance"]}
    else:
        schema = {"type": "object", "required": ["amount"], "properties": {"amount": {"type": "number"}}}
        task = {
            "type": "user_task",
            "id": "check_amount",
            "title": "Check the amount",
            "candidate_groups": ["finance"],
            "response_schema": schema,
        }
    elements = [{"type": "start", "id": "start"}, task, {"type": "end", "id": "end"}]
    return {
        "name": "expense",
        "version": version,
        "elements": elements,
        "flows": [f"start -> {task['id']}", f"{task['id']} -> end"],
    }


def ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, (response.request.url, response.status_code, response.text)
    return response.json()


def refused(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.request.url, response.status_code, response.text)
    problem: dict[str, Any] = response.json()
    return problem


@pytest.fixture
def served(store_url: str) -> Iterator[tuple[str, FastAPI]]:
    app = create_app(Settings(database_url=store_url, api_keys=dict(KEYS)))
    with serving(app) as url:
        yield url, app


@pytest.fixture
def base(served: tuple[str, FastAPI]) -> str:
    return served[0]


def designs_stored(app: FastAPI, store_url: str) -> int:
    """How many journey designs the served app's database holds, read beside the server."""
    url = app.state.services.runtime.store.backend.engine.url
    query = "SELECT count(*) FROM journey_designs"
    if url.get_backend_name() == "sqlite":  # memory:// is a throwaway SQLite file
        with contextlib.closing(sqlite3.connect(str(url.database))) as conn:
            return int(conn.execute(query).fetchone()[0])
    with psycopg.connect(store_url) as pg:
        found = pg.execute(query).fetchone()
        assert found is not None
        return int(found[0])


def client(base: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, headers={"x-api-key": key}, timeout=60)


async def test_a_rollout_and_an_ab_test_are_set_over_http_by_the_process_tenant_only(
    served: tuple[str, FastAPI], store_url: str
) -> None:
    base, app = served
    async with client(base, "key-ana") as ana, client(base, "key-bob") as bob, client(base, "key-vic") as vic:
        ok(await ana.post("/processes", json=expense(1)))
        # v2 takes a quarter of new instances from its deploy on, not all of them for a moment.
        deployed = ok(await ana.post("/processes", json=expense(2), params={"weight": 25}))
        assert (deployed["version"], deployed["weight"]) == (2, 25.0)
        versions = ok(await ana.get("/processes/expense/versions"))
        assert [(v["version"], v["weight"]) for v in versions] == [(1, 75.0), (2, 25.0)]
        rollout = ok(await ana.get("/processes/expense/rollout"))
        assert rollout == [
            {"version": 2, "weight": 25.0, "variant": None},
            {"version": 1, "weight": 75.0, "variant": None},
        ]
        assert ok(await vic.get("/processes/expense/rollout")) == rollout  # a reader of the tenant sees it

        path = "/processes/expense/rollout"
        bad = {
            "weights summing to 90": [{"version": 1, "weight": 40}, {"version": 2, "weight": 50}],
            "a version not deployed": [{"version": 1, "weight": 50}, {"version": 7, "weight": 50}],
            "a version twice": [{"version": 1, "weight": 50}, {"version": 1, "weight": 50}],
            "a variant twice": [
                {"version": 1, "weight": 50, "variant": "A"},
                {"version": 2, "weight": 50, "variant": "A"},
            ],
            "variants on some shares": [{"version": 1, "weight": 50, "variant": "A"}, {"version": 2, "weight": 50}],
        }
        for why, entries in bad.items():
            problem = refused(await ana.put(path, json={"entries": entries}), 422)
            assert problem["type"].endswith("RolloutError") or "Rollout" in str(problem), (why, problem)
        for hostile in ({"entries": []}, {"entries": [{"version": 1, "weight": -1}]}, {"weights": {"1": 100}}, {}):
            refused(await ana.put(path, json=hostile), 422)
        refused(await bob.put(path, json={"entries": [{"version": 1, "weight": 100}]}), 404)  # another tenant's
        refused(await bob.get("/processes/expense/versions"), 404)
        refused(await bob.get(path), 404)
        refused(await vic.put(path, json={"entries": [{"version": 1, "weight": 100}]}), 403)  # no journeys scope
        refused(await ana.get("/processes/nothing/rollout"), 404)
        assert ok(await ana.get(path)) == rollout  # nothing refused changed it

        half = ok(await ana.put(path, json={"entries": [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}]}))
        assert half == [
            {"version": 2, "weight": 50.0, "variant": None},
            {"version": 1, "weight": 50.0, "variant": None},
        ]
        started = [
            ok(await ana.post("/processes/expense/instances", json={"business_key": f"e-{n}"})) for n in range(16)
        ]
        assert {s["version"] for s in started} == {1, 2}
        # Sticky: the same key again at 100% of v2 moves only keys onto v2; a key on v2 stays there.
        on_v2 = {s["business_key"] for s in started if s["version"] == 2}
        ok(await ana.put(path, json={"entries": [{"version": 2, "weight": 100}, {"version": 1, "weight": 0}]}))
        again = [
            ok(await ana.post("/processes/expense/instances", json={"business_key": key})) for key in sorted(on_v2)
        ]
        assert {s["version"] for s in again} == {2}

        ab = [{"version": 1, "weight": 50, "variant": "A"}, {"version": 2, "weight": 50, "variant": "B"}]
        assert ok(await ana.put(path, json={"entries": ab})) == [{**e, "weight": 50.0} for e in ab]
        variants = [
            ok(await ana.post("/processes/expense/instances", json={"business_key": f"ab-{n}"})) for n in range(16)
        ]
        assert {(v["variant"], v["version"]) for v in variants} == {("A", 1), ("B", 2)}

        # A weighted deploy over the A/B test silently replaced it (its variants gone): now a 409 naming the
        # rollout, nothing deployed: not its design either, which was stored before the refusal, once per attempt.
        designs = designs_stored(app, store_url)
        problem = refused(await ana.post("/processes", json={**expense(2), "version": 3}, params={"weight": 10}), 409)
        assert "RolloutConflictError" in str(problem) and "A/B test" in str(problem), problem
        assert designs_stored(app, store_url) == designs
        assert ok(await ana.get(path)) == [{**e, "weight": 50.0} for e in ab]
        assert [v["version"] for v in ok(await ana.get("/processes/expense/versions"))] == [1, 2]

        # Weighted deploys made at once were last-writer-wins (each computed from the rollout it read), and each
        # replaced every share but its own and the default's: each now takes its share from the default.
        ok(await ana.put(path, json={"entries": [{"version": 2, "weight": 100}, {"version": 1, "weight": 0}]}))
        shares = {3: 10, 4: 20, 5: 30}
        deploys = (
            ana.post("/processes", json={**expense(2), "version": v}, params={"weight": w}) for v, w in shares.items()
        )
        for answer in await asyncio.gather(*deploys):
            ok(answer)
        assert {e["version"]: e["weight"] for e in ok(await ana.get(path)) if e["weight"]} == {
            5: 30.0,
            4: 20.0,
            3: 10.0,
            2: 40.0,
        }
        problem = refused(await ana.post("/processes", json={**expense(2), "version": 6}, params={"weight": 50}), 409)
        assert "holds less" in str(problem), problem  # v2, the default, has 40 %


async def test_a_waiting_instance_is_migrated_over_http_and_its_task_takes_the_new_versions_schema(base: str) -> None:
    async with client(base, "key-ana") as ana, client(base, "key-bob") as bob:
        ok(await ana.post("/processes", json=expense(1)))
        moving = ok(await ana.post("/processes/expense/instances", json={"business_key": "e-1"}))
        staying = ok(await ana.post("/processes/expense/instances", json={"business_key": "e-2"}))
        ok(await ana.post("/processes", json=expense(2)))
        migrate = f"/processes/instances/{moving['instance_id']}/migrate"
        before = ok(await ana.get(f"/processes/instances/{moving['instance_id']}"))

        refused(await bob.post(migrate, json={"to_version": 2, "mapping": {"review": "check_amount"}}), 404)
        refused(await ana.post(migrate, json={"to_version": 9}), 404)
        refused(await ana.post("/processes/instances/nobody/migrate", json={"to_version": 2}), 404)
        problem = refused(await ana.post(migrate, json={"to_version": 2}), 422)
        assert "waiting node 'review' has no mapping" in str(problem)
        problem = refused(await ana.post(migrate, json={"to_version": 2, "mapping": {"review": "end"}}), 422)
        assert "is a user_task but its mapping 'end' is a end" in str(problem)
        for hostile in ({"to_version": 0}, {"to_version": "2"}, {"to_version": 2, "mapping": {"review": 7}}, {}):
            refused(await ana.post(migrate, json=hostile), 422)
        assert ok(await ana.get(f"/processes/instances/{moving['instance_id']}")) == before  # nothing changed

        moved = ok(await ana.post(migrate, json={"to_version": 2, "mapping": {"review": "check_amount"}}))
        assert (moved["version"], moved["status"]) == (2, "in_progress")
        [wait] = moved["waiting"]
        assert (wait["element"], wait["title"]) == ("check_amount", "Check the amount")
        assert wait["response_schema"]["required"] == ["amount"]
        task = ok(await ana.get(f"/tasks/{wait['wait_id']}"))
        assert (task["element"], task["title"], task["response_schema"]) == (
            "check_amount",
            "Check the amount",
            wait["response_schema"],
        )
        # Its answer is checked against v2's schema, which the rest of v2 relies on.
        complete = f"/tasks/{wait['wait_id']}/complete"
        assert "amount" in str(refused(await ana.post(complete, json={"payload": {"approved": True}}), 422))
        done = ok(await ana.post(complete, json={"payload": {"amount": 120}}))
        assert (done["status"], done["version"]) == ("completed", 2)
        refused(await ana.post(migrate, json={"to_version": 1, "mapping": {"check_amount": "review"}}), 409)

        # The instance left alone is still on v1 and finishes there.
        [left] = ok(await ana.get("/tasks", params={"instance_id": staying["instance_id"]}))
        assert (left["element"], left["response_schema"]) == ("review", None)
        finished = ok(await ana.post(f"/tasks/{left['task_id']}/complete", json={"payload": {}}))
        assert (finished["status"], finished["version"]) == ("completed", 1)
        history = ok(await ana.get(f"/journeys/{moving['instance_id']}/history"))
        assert [(e["type"], e["payload"]["by"]) for e in history if e["type"].startswith("process.migrat")] == [
            ("process.migrating", "ana"),  # who migrated it, as its other events name their actor
            ("process.migrated", "ana"),
        ]


async def test_the_version_routes_are_in_the_openapi_document(base: str) -> None:
    async with client(base, "key-ana") as ana:
        paths = ok(await ana.get("/openapi.json"))["paths"]
    assert {"get"} <= set(paths["/processes/{name}/versions"])
    assert {"get", "put"} <= set(paths["/processes/{name}/rollout"])
    assert {"post"} <= set(paths["/processes/instances/{instance_id}/migrate"])
    assert "weight" in {p["name"] for p in paths["/processes"]["post"]["parameters"]}


async def test_a_user_task_sla_beyond_a_century_is_refused_not_a_server_error(base: str) -> None:
    """``sla_hours`` was bounded below only: 1e307 hours overflowed to infinity seconds, and the deploy answered
    500 (found by the schema fuzz). It is at most a century, as every duration, and the document says so."""
    async with client(base, "key-ana") as ana:
        for hours, status in ((9.58e307, 422), (876_601, 422), (876_600, 200)):
            task = {"type": "user_task", "id": "review", "candidate_groups": ["finance"], "sla_hours": hours}
            task["on_timeout"] = {"action": "reassign", "candidate_groups": ["leads"]}  # no default notify agent here
            spec = {**expense(1), "name": f"sla-{status}-{int(min(hours, 1e9))}"}
            spec["elements"] = [spec["elements"][0], task, spec["elements"][2]]
            answer = await ana.post("/processes", json=spec)
            assert answer.status_code == status, answer.text
        schema = ok(await ana.get("/openapi.json"))["components"]["schemas"]
        assert "876600" in json.dumps(schema)
