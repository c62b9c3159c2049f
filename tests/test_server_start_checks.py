"""One rule for what the API refuses when a run (a batch's, a cron's) or a process deployment is created, through
langgraph-sdk and real HTTP: whatever the start would refuse is refused there, storing nothing, the agents only
where this process holds them (embedded mode; in distributed mode the workers do, and check them as they run).

Before, a template naming an agent the runtime lacks and a ``process`` run naming a process that is not deployed
(or another tenant's, or a version it does not have) were queued and failed in the worker, and a distributed API
refused to deploy a process whose service tasks' agents only its workers hold."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError, UnprocessableEntityError

from server.app import create_app
from server.queues.procrastinate import ensure_schema
from server.settings import ApiKey, Settings
from tests.server_support import APPROVAL_PROCESS, serving

pytestmark = pytest.mark.slow

WORK = frozenset({"read", "runs", "journeys"})
KEYS = {  # the two_users_server fixture's keys: ana and bob, of two tenants
    "key-ana": ApiKey("ana", WORK, tenant="acme"),
    "key-bob": ApiKey("bob", WORK, tenant="globex"),
}
# A process whose one service task calls an agent the API process does not hold (its workers do).
WORKERS_ONLY = {
    "name": "billing",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "service_task", "id": "charge", "agent": "charge_card"},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> charge", "charge -> end"],
}


def _process(name: str, **extra: Any) -> dict[str, Any]:
    return {"process": name, "business_key": "order-1", **extra}


async def test_a_template_or_process_start_that_could_not_run_is_refused_when_its_run_is_created(
    store_url: str,
) -> None:
    """A server whose runtime registers no deterministic default agents (a deployment with real agents only,
    one forgotten): a run or cron of a catalog template whose agents it lacks, and a process run naming a
    process that is not deployed or a version it does not have, were each queued and failed as they ran
    ('error' runs, a cron failing every tick); each is now refused when created (422 naming the agent, 404
    naming the process; 422 for variables its schema refuses) and nothing is stored. A deployed process still
    starts."""
    app = create_app(Settings(database_url=store_url, auth=False), runtime_options={"default_agents": False})
    with serving(app) as base:
        async with get_client(url=base, api_key=None) as client:
            tid = (await client.threads.create())["thread_id"]
            template = {"journey_type": "content_migration", "user_id": "ana"}
            with pytest.raises(UnprocessableEntityError, match="upload_content"):
                await client.runs.create(tid, "structured", input=template)
            with pytest.raises(UnprocessableEntityError, match="upload_content"):
                await client.runs.create(tid, "saga", input=template)
            with pytest.raises(UnprocessableEntityError, match="upload_content"):
                await client.crons.create("structured", schedule="0 0 1 1 *", input=template)
            with pytest.raises(NotFoundError, match="no_such_process"):
                await client.runs.create(tid, "process", input=_process("no_such_process"))
            with pytest.raises(NotFoundError, match="no_such_process"):
                await client.crons.create("process", schedule="0 0 1 1 *", input=_process("no_such_process"))
            with pytest.raises(httpx.HTTPStatusError, match="no_such_process"):
                await client.runs.create_batch([{"assistant_id": "process", "input": _process("no_such_process")}])
            async with httpx.AsyncClient(base_url=base) as raw:
                assert (await raw.post("/processes", json=APPROVAL_PROCESS)).status_code == 200
            with pytest.raises(NotFoundError, match="has no version 9"):
                await client.runs.create(tid, "process", input=_process("approval", version=9))
            strict = {**APPROVAL_PROCESS, "name": "strict", "variables_schema": {"required": ["amount"]}}
            async with httpx.AsyncClient(base_url=base) as raw:
                assert (await raw.post("/processes", json=strict)).status_code == 200
            with pytest.raises(UnprocessableEntityError, match="variables_schema"):
                await client.runs.create(tid, "process", input=_process("strict"))
            assert await client.runs.list(tid) == [] and await client.crons.count() == 0
            started = await client.runs.wait(tid, "process", input=_process("approval"))
            assert started["status"] == "in_progress", started


async def test_a_process_run_naming_another_tenants_process_is_refused_when_created(
    ana: LangGraphClient, bob: LangGraphClient, two_users_server: str
) -> None:
    """ana (acme) deploys 'approval': bob (globex) cannot start it, as if none were deployed; his run of it
    was queued and failed in the worker. It is now refused when created, and his thread has no run."""
    async with httpx.AsyncClient(base_url=two_users_server, headers={"x-api-key": "key-ana"}) as raw:
        assert (await raw.post("/processes", json=APPROVAL_PROCESS)).status_code == 200
    tid = (await bob.threads.create())["thread_id"]
    with pytest.raises(NotFoundError, match="no process named 'approval'"):
        await bob.runs.create(tid, "process", input=_process("approval"))
    assert await bob.runs.list(tid) == []
    mine = (await ana.threads.create())["thread_id"]
    assert (await ana.runs.wait(mine, "process", input=_process("approval")))["status"] == "in_progress"


async def test_a_distributed_api_deploys_a_process_whose_agents_its_workers_hold(postgres_url: str) -> None:
    """An API process in distributed mode holds none of its workers' agents (it refuses no run for them since
    c46d026), yet it refused to deploy a process whose service task calls one: 422 'needs an agent for intent
    charge_card'. The deploy now takes it, as the run that starts it; a design error is still refused there,
    and an embedded server, whose runs call its own agents, still refuses the unknown agent."""
    ensure_schema(postgres_url)
    distributed = Settings(database_url=postgres_url, auth=False, execution="distributed")
    with serving(create_app(distributed)) as base:
        async with httpx.AsyncClient(base_url=base) as raw:
            deployed = await raw.post("/processes", json=WORKERS_ONLY)
            assert deployed.status_code == 200, deployed.text
            broken = {**WORKERS_ONLY, "name": "broken", "flows": ["start -> charge"]}
            refused = await raw.post("/processes", json=broken)
            assert refused.status_code == 422 and "charge_card" not in refused.text, refused.text
    with serving(create_app(Settings(database_url=postgres_url, auth=False))) as base:
        async with httpx.AsyncClient(base_url=base) as raw:
            refused = await raw.post("/processes", json={**WORKERS_ONLY, "name": "billing_here"})
            assert refused.status_code == 422 and "charge_card" in refused.text, refused.text
