"""``POST /processes/instances/{id}/cancel``: a process instance cancelled its own way (Camunda's cancel) over real
HTTP against a real ``journeys serve`` with an API keys file, two users in two tenants, on SQLite and PostgreSQL.

Before, the only way to stop a process over HTTP was ``/journeys/{id}/terminate``, though the README said
processes are cancelled their own way: ``ProcessOrchestrator.cancel`` had no route. Now its owner cancels it
(its tasks cancelled, ``process.cancelled`` logged with the reason), another tenant's caller gets 404 and changes
nothing, and a second cancel or a retry of it answers 409."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from graphs import JourneyRuntime
from server.settings import key_digest
from tests.process_support import linear, user_task
from tests.server_support import journeys_serve

WORK = ["read", "journeys", "tasks"]
KEYS = {
    "key-ana": {"principal": "ana", "scopes": WORK, "tenant": "acme"},
    "key-bob": {"principal": "bob", "scopes": WORK, "tenant": "globex"},
}
SIGN = linear("sign", user_task("signature"))


def ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, (response.request.url, response.status_code, response.text)
    return response.json()


def refused(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.request.url, response.status_code, response.text)
    return response.text


async def deploy_shared(url: str) -> None:
    async with JourneyRuntime.open(url) as rt:
        await rt.processes.deploy(SIGN)


async def cancel_over_http(base: str) -> None:
    async with (
        httpx.AsyncClient(base_url=base, headers={"x-api-key": "key-ana"}, timeout=60) as ana,
        httpx.AsyncClient(base_url=base, headers={"x-api-key": "key-bob"}, timeout=60) as bob,
    ):
        anas = ok(await ana.post("/processes/sign/instances", json={"business_key": "contract-1"}))["instance_id"]
        bobs = ok(await bob.post("/processes/sign/instances", json={"business_key": "contract-1"}))["instance_id"]
        cancel = f"/processes/instances/{anas}/cancel"

        # bob cannot cancel ana's instance (nor see it): not found, and nothing of it changes.
        refused(await bob.post(cancel, json={"reason": "not mine"}), 404)
        refused(await bob.post(cancel), 404)
        assert ok(await ana.get(f"/processes/instances/{anas}"))["status"] == "in_progress"
        [task] = ok(await ana.get("/tasks", params={"instance_id": anas}))
        refused(await ana.post("/processes/instances/no-such-instance/cancel"), 404)
        for hostile in (b'{"reason": ""}', b'{"reason": "\\ud800"}', b'{"reason": "ok", "also": 1}', b'{"reason": 7}'):
            refused(await ana.post(cancel, content=hostile, headers={"content-type": "application/json"}), 422)
        refused(await ana.post(cancel, json={"reason": "x" * 1001}), 422)

        view = ok(await ana.post(cancel, json={"reason": "the client withdrew"}))
        assert (view["instance_id"], view["status"], view["waiting"]) == (anas, "cancelled", [])
        assert ok(await ana.get(f"/processes/instances/{anas}")) == view
        history = ok(await ana.get(f"/journeys/{anas}/history"))
        assert history[-1]["type"] == "process.cancelled"
        assert history[-1]["payload"]["reason"] == "the client withdrew"
        assert ok(await ana.get(f"/tasks/{task['task_id']}"))["status"] == "cancelled"
        # Ended: cancelling it again and retrying it are refused (409), nothing logged.
        assert "finished" in refused(await ana.post(cancel, json={"reason": "again"}), 409)
        assert "JourneyFinishedError" in refused(await ana.post(f"/processes/instances/{anas}/retry"), 409)
        assert ok(await ana.get(f"/journeys/{anas}/history")) == history

        # bob's own instance was untouched by all that; he cancels it without a body.
        assert ok(await bob.get(f"/processes/instances/{bobs}"))["status"] == "in_progress"
        assert ok(await bob.post(f"/processes/instances/{bobs}/cancel"))["status"] == "cancelled"


def test_a_process_instance_is_cancelled_over_http_by_its_own_tenant_only(durable_url: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({key_digest(key): entry for key, entry in KEYS.items()}))
    asyncio.run(deploy_shared(durable_url))
    with journeys_serve(durable_url, tmp_path / "serve.log", "--api-keys", str(keys)) as base:
        asyncio.run(cancel_over_http(base))
