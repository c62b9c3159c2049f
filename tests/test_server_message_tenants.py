"""Messages are a tenant's (as Camunda 8's are), over real HTTP against a real ``journeys serve`` with an API keys
file: ana's tenant (acme) and bob's (globex) send at once. A message reaches only its sender's tenant's waiting
instances, is buffered for that tenant only, and its id is unique within it; an instance it starts is its
sender's. An admin's message reaches every tenant, as before tenants had messages.

Before, bob's message resumed ana's instance (his payload in her variables, her instance id in his answer), took
or was taken by the other tenant's buffered message, and his message id collided with hers (a 422 naming her
message, or her answer replayed)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from graphs import JourneyRuntime
from server.settings import key_digest
from tests.process_support import linear
from tests.server_support import journeys_serve

WORK = ["read", "journeys", "messages"]
KEYS = {
    "key-ana": {"principal": "ana", "scopes": WORK, "tenant": "acme"},
    "key-bob": {"principal": "bob", "scopes": WORK, "tenant": "globex"},
    "key-root": {"principal": "root", "scopes": ["admin"], "tenant": "acme"},
}
# Waits for its payment, correlated on its business key; the payment says who paid.
EXPENSE = linear(
    "expense",
    {"type": "message", "id": "paid", "message": "payment", "correlation": "business_key", "outputs": ["paid_by"]},
)
# Started by an invoice arriving.
INTAKE = {
    "name": "intake",
    "elements": [{"type": "start", "id": "received", "message": "invoice.received"}, {"type": "end", "id": "end"}],
    "flows": ["received -> end"],
}


def ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, (response.request.url, response.status_code, response.text)
    return response.json()


@asynccontextmanager
async def callers(base: str) -> AsyncIterator[tuple[httpx.AsyncClient, ...]]:
    """ana (acme), bob (globex) and root (an admin), each a client of the server at ``base``."""
    async with (
        httpx.AsyncClient(base_url=base, headers={"x-api-key": "key-ana"}, timeout=60) as ana,
        httpx.AsyncClient(base_url=base, headers={"x-api-key": "key-bob"}, timeout=60) as bob,
        httpx.AsyncClient(base_url=base, headers={"x-api-key": "key-root"}, timeout=60) as root,
    ):
        yield ana, bob, root


async def start(caller: httpx.AsyncClient, key: str) -> str:
    return str(ok(await caller.post("/processes/expense/instances", json={"business_key": key}))["instance_id"])


async def pay(caller: httpx.AsyncClient, key: str, paid_by: str, message_id: str | None = None) -> httpx.Response:
    body = {"name": "payment", "correlation_key": key, "payload": {"paid_by": paid_by}, "message_id": message_id}
    return await caller.post("/messages", json={k: v for k, v in body.items() if v is not None})


async def state(caller: httpx.AsyncClient, instance_id: str) -> tuple[str, Any]:
    """The instance's status and who paid it (None while it waits)."""
    view = ok(await caller.get(f"/processes/instances/{instance_id}"))
    return view["status"], view["variables"].get("paid_by")


async def deploy_shared(url: str) -> None:
    """The processes, deployed by the runtime itself (as a plugin does): shared, so both tenants start them."""
    async with JourneyRuntime.open(url) as rt:
        await rt.processes.deploy(EXPENSE)
        await rt.processes.deploy(INTAKE)


async def tenants_send_at_once(base: str) -> None:
    async with callers(base) as (ana, bob, root):
        # Both tenants wait on the same key, and both pay at once: each payment reaches its own tenant's instance.
        anas, bobs = await asyncio.gather(start(ana, "exp-1"), start(bob, "exp-1"))
        sent = await asyncio.gather(pay(ana, "exp-1", "ana"), pay(bob, "exp-1", "bob"))
        assert [ok(r) for r in sent] == [
            {"correlated": [anas], "started": [], "buffered": None},
            {"correlated": [bobs], "started": [], "buffered": None},
        ]
        assert await state(ana, anas) == ("completed", "ana")
        assert await state(bob, bobs) == ("completed", "bob")

        # Nobody of their tenant waits yet: each message is buffered for its own tenant, under the same id, at once.
        sent = await asyncio.gather(pay(ana, "exp-2", "ana", "m-1"), pay(bob, "exp-3", "bob", "m-1"))
        for response, other_key in zip(sent, ("exp-3", "exp-2"), strict=True):
            assert ok(response)["buffered"] == "m-1" and other_key not in response.text
        # A wait of the other tenant never takes it; a wait of the sender's does.
        assert await state(bob, await start(bob, "exp-2")) == ("in_progress", None)
        assert await state(ana, await start(ana, "exp-3")) == ("in_progress", None)
        assert await state(ana, await start(ana, "exp-2")) == ("completed", "ana")
        assert await state(bob, await start(bob, "exp-3")) == ("completed", "bob")

        # bob sending ana's very message with her id is his own message, not a replay of hers: both are taken.
        first, second = ok(await pay(ana, "exp-4", "x", "m-2")), ok(await pay(bob, "exp-4", "x", "m-2"))
        assert first["buffered"] == second["buffered"] == "m-2"
        taken = await asyncio.gather(start(ana, "exp-4"), start(bob, "exp-4"))
        assert [await state(c, i) for c, i in zip((ana, bob), taken, strict=True)] == [("completed", "x")] * 2
        # ... and each one's repeat answers as its own first send did.
        assert ok(await pay(bob, "exp-4", "x", "m-2")) == second and ok(await pay(ana, "exp-4", "x", "m-2")) == first

        # A process a message starts belongs to its sender: bob sees his instance, ana does not.
        [started] = ok(await bob.post("/messages", json={"name": "invoice.received", "correlation_key": "inv-1"}))[
            "started"
        ]
        assert ok(await bob.get(f"/processes/instances/{started}"))["status"] == "completed"
        assert (await ana.get(f"/processes/instances/{started}")).status_code == 404

        # An admin's message reaches every tenant's instances.
        both = sorted(await asyncio.gather(start(ana, "exp-5"), start(bob, "exp-5")))
        assert ok(await pay(root, "exp-5", "root"))["correlated"] == both


def test_a_message_reaches_is_buffered_for_and_has_its_id_within_its_senders_tenant(
    durable_url: str, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({key_digest(key): entry for key, entry in KEYS.items()}))
    asyncio.run(deploy_shared(durable_url))
    with journeys_serve(durable_url, tmp_path / "serve.log", "--api-keys", str(keys)) as base:
        asyncio.run(tenants_send_at_once(base))
