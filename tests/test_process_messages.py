"""Message correlation (SPEC B7): send_message resumes every instance waiting for (name, key), starts
instances of processes with a message start, and buffers what nobody waits for, for a time-to-live.
Every test runs on memory, SQLite and Postgres, on a virtual clock."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, text

from checkpoints.clock import VirtualClock
from checkpoints.database import create_engine_for
from checkpoints.errors import ConcurrentUpdateError
from checkpoints.ownership import DEFAULT_TENANT, Owner, acting_as
from checkpoints.process.messages import EVERY_TENANT
from checkpoints.schema.migrations import migrate
from checkpoints.schema.tables import process_message_starts, schema_migrations
from checkpoints.url import parse_store_url
from graphs import InvalidInputError
from graphs.errors import MessageIdConflictError, UnmatchedMessageError
from graphs.process.orchestrator import MESSAGE_ID_CHARS, MESSAGE_ID_WINDOW
from server.app import create_app
from server.settings import Settings
from tests.process_support import T0, Calls, linear, payment_spec, runtime, table_dump, virtual_clock, waiting_elements
from tests.server_support import serving


async def test_a_message_resumes_every_instance_waiting_for_its_key_and_no_other(store_url: str) -> None:
    async with runtime(store_url) as rt:
        await rt.processes.deploy(payment_spec())
        first = await rt.processes.start("invoice", "cust-1", {"invoice_no": "INV-1"})
        second = await rt.processes.start("invoice", "cust-2", {"invoice_no": "INV-1"})
        other = await rt.processes.start("invoice", "cust-3", {"invoice_no": "INV-2"})

        sent = await rt.processes.send_message("payment.received", "INV-1", {"amount": 120})
        assert sent == {
            "correlated": sorted([first["instance_id"], second["instance_id"]]),
            "started": [],
            "buffered": None,
        }
        for view in (first, second):
            done = await rt.processes.status(view["instance_id"])
            assert done["status"] == "completed" and done["variables"]["amount"] == 120
        assert waiting_elements(await rt.processes.status(other["instance_id"])) == ["paid"]


async def test_a_tenants_message_reaches_and_is_kept_for_that_tenants_instances_only(store_url: str) -> None:
    """A message sent for a tenant resolves only the waits of that tenant's instances (one started outside any
    caller is the default tenant's), is buffered for them only, and its id is that tenant's; one sent with no
    tenant (the runtime's own) reaches and is kept for every tenant."""
    async with runtime(store_url) as rt:
        await rt.processes.deploy(payment_spec())

        async def invoice(customer: str, tenant: str | None) -> str:
            with acting_as(Owner(customer, tenant) if tenant else None):
                return str((await rt.processes.start("invoice", customer, {"invoice_no": "INV-1"}))["instance_id"])

        acme, plain = await invoice("ana", "acme"), await invoice("dan", None)
        sent = await rt.processes.send_message(
            "payment.received", "INV-1", {"amount": 1}, tenant="globex", message_id="m"
        )
        assert sent["correlated"] == [] and sent["buffered"] == "m"
        # acme's message with globex's id: its own message, neither a conflict nor globex's answer again.
        sent = await rt.processes.send_message(
            "payment.received", "INV-1", {"amount": 2}, tenant="acme", message_id="m"
        )
        assert sent == {"correlated": [acme], "started": [], "buffered": None}
        sent = await rt.processes.send_message("payment.received", "INV-1", {"amount": 3}, tenant=DEFAULT_TENANT)
        assert sent == {"correlated": [plain], "started": [], "buffered": None}
        late = await invoice("eve", "acme")  # globex's buffered message is not acme's to take
        assert waiting_elements(await rt.processes.status(late)) == ["paid"]
        globex = await invoice("bob", "globex")  # but globex's wait takes it
        assert (await rt.processes.status(globex))["variables"]["amount"] == 1

        kept = await rt.processes.send_message("payment.received", "INV-2", {"amount": 4})  # every tenant's
        assert kept["buffered"] is not None
        with acting_as(Owner("cara", "initech")):
            taker = await rt.processes.start("invoice", "cara", {"invoice_no": "INV-2"})
        assert taker["variables"]["amount"] == 4
        sent = await rt.processes.send_message("payment.received", "INV-1", {"amount": 5})
        assert sent["correlated"] == [late]
        for bad in ("", EVERY_TENANT, 7):
            with pytest.raises(InvalidInputError):
                await rt.processes.send_message("payment.received", "INV-1", {}, tenant=bad)  # type: ignore[arg-type]


@pytest.mark.fresh_database
async def test_messages_and_ids_kept_before_tenants_had_messages_are_every_tenants(durable_url: str) -> None:
    """Migration 25: a message buffered, and a message id claimed, before it keep their rows: a wait of any
    tenant's instance takes the message, and the id's repeat answers as its send did."""
    engine = create_engine_for(parse_store_url(durable_url))
    answered = {"correlated": ["proc-old"], "started": [], "buffered": None}
    try:
        assert await migrate(engine, upto=24) == list(range(1, 18)) + list(range(19, 25))
        async with engine.begin() as conn:
            at = {"at": T0, "until": T0 + timedelta(hours=1), "answered": json.dumps(answered)}
            await conn.execute(
                text(
                    "INSERT INTO process_messages (message_id, name, correlation_key, payload, status, received_at, "
                    "expires_at) VALUES ('kept', 'payment.received', 'INV-1', '{\"amount\": 9}', 'buffered', :at, "
                    ":until)"
                ),
                at,
            )
            await conn.execute(
                text(
                    "INSERT INTO process_message_ids (message_id, name, correlation_key, payload, outcome, claimed_at, "
                    "expires_at) VALUES ('sent', 'payment.received', 'INV-0', '{}', :answered, :at, :until)"
                ),
                at,
            )
    finally:
        await engine.dispose()
    async with runtime(durable_url) as rt:
        await rt.processes.deploy(payment_spec())
        with acting_as(Owner("ana", "acme")):
            taker = await rt.processes.start("invoice", "cust-1", {"invoice_no": "INV-1"})
        assert taker["status"] == "completed" and taker["variables"]["amount"] == 9
        assert await rt.processes.send_message("payment.received", "INV-0", {}, message_id="sent") == answered


async def test_a_message_starts_new_instances_of_processes_that_start_on_it(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        calls.register(rt, "review_pr", lambda r: {"approved": r.payload["variables"]["pr_number"] == "42"})
        spec = {
            "name": "pr_check",
            "elements": [
                {"type": "start", "id": "opened", "message": "github.pull_request.opened", "correlation": "pr_number"},
                {"type": "service_task", "id": "review", "agent": "review_pr", "outputs": ["approved"]},
                {"type": "end", "id": "end"},
            ],
            "flows": ["opened -> review", "review -> end"],
        }
        await rt.processes.deploy(spec)
        sent = await rt.processes.send_message("github.pull_request.opened", "42", {"title": "Fix", "author": "ana"})
        assert sent["correlated"] == [] and len(sent["started"]) == 1
        view = await rt.processes.status(sent["started"][0])
        assert view["business_key"] == "42" and view["status"] == "completed"
        assert view["variables"] == {
            "title": "Fix",
            "author": "ana",
            "pr_number": "42",
            "business_key": "42",
            "approved": True,
        }
        started = (await rt.processes.history(view["instance_id"]))[0]
        assert started.type == "process.started" and started.payload["start_event"] == "opened"


def message_start(name: str, message: str, *, version: int = 1, start: str = "received") -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "elements": [{"type": "start", "id": start, "message": message}, {"type": "end", "id": "end"}],
        "flows": [f"{start} -> end"],
    }


async def test_a_message_a_process_would_refuse_to_start_on_changes_nothing_and_its_id_stays_free(
    store_url: str,
) -> None:
    """A message whose payload broke the variables_schema of a process it starts was refused (422) only after it
    had resumed the instances waiting for it, and its id stayed claimed: a corrected resend was "being sent right
    now" (409) until the lease ran out. Now it is refused before it changes anything."""
    async with runtime(store_url) as rt:
        await rt.processes.deploy(payment_spec())
        waiting = await rt.processes.start("invoice", "inv-1", {"invoice_no": "INV-1"})
        strict = {**message_start("receipt", "payment.received"), "variables_schema": {"required": ["amount"]}}
        await rt.processes.deploy(strict)
        before = await table_dump(rt)
        with pytest.raises(InvalidInputError) as caught:
            await rt.processes.send_message("payment.received", "INV-1", {"amout": 10}, message_id="pay-1")
        assert "'receipt'" in str(caught.value) and "'amount' is a required property" in str(caught.value)
        assert await table_dump(rt) == before
        assert waiting_elements(await rt.processes.status(waiting["instance_id"])) == ["paid"]

        sent = await rt.processes.send_message("payment.received", "INV-1", {"amount": 10}, message_id="pay-1")
        assert sent["correlated"] == [waiting["instance_id"]] and len(sent["started"]) == 1
        assert (await rt.processes.status(waiting["instance_id"]))["status"] == "completed"


async def test_a_message_that_would_break_a_waiting_instances_variables_schema_is_refused(store_url: str) -> None:
    """A message put a wrongly typed variable into the instance waiting for it (a task's answer or an agent's
    output would have been refused), and the gateway relying on the schema then failed. Now the message is
    refused, naming the process, the instance and the path; nothing is delivered and its id stays free."""
    async with runtime(store_url) as rt:
        spec = payment_spec()
        spec["variables_schema"] = {"type": "object", "properties": {"amount": {"type": "integer", "minimum": 0}}}
        await rt.processes.deploy(spec)
        lenient = payment_spec()
        lenient["name"] = "ledger"
        await rt.processes.deploy(lenient)
        strict = await rt.processes.start("invoice", "cust-1", {"invoice_no": "INV-1"})
        other = await rt.processes.start("ledger", "cust-2", {"invoice_no": "INV-1"})
        before = await table_dump(rt)
        with pytest.raises(InvalidInputError) as caught:
            await rt.processes.send_message("payment.received", "INV-1", {"amount": "lots"}, message_id="pay-1")
        message = str(caught.value)
        assert "'invoice'" in message and strict["instance_id"] in message and "at amount" in message
        assert "'lots' is not of type 'integer'" in message
        assert await table_dump(rt) == before
        for view in (strict, other):
            assert waiting_elements(await rt.processes.status(view["instance_id"])) == ["paid"]

        sent = await rt.processes.send_message("payment.received", "INV-1", {"amount": 10}, message_id="pay-1")
        assert sorted(sent["correlated"]) == sorted([strict["instance_id"], other["instance_id"]])
        assert (await rt.processes.status(strict["instance_id"]))["variables"]["amount"] == 10

        # Sent before anyone waits, it is buffered; the instance that then waits does not take it.
        early = await rt.processes.send_message("payment.received", "INV-2", {"amount": -5})
        assert early["buffered"] is not None
        later = await rt.processes.start("invoice", "cust-3", {"invoice_no": "INV-2"})
        assert waiting_elements(later) == ["paid"]
        await rt.processes.send_message("payment.received", "INV-2", {"amount": 5})
        done = await rt.processes.status(later["instance_id"])
        assert (done["status"], done["variables"]["amount"]) == ("completed", 5)


async def test_message_starts_are_looked_up_by_index_not_by_reading_every_deployment(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with runtime(store_url) as rt:
        for i in range(5):
            await rt.processes.deploy(linear(f"other_{i}"))
        await rt.processes.deploy(message_start("orders", "order.placed"))
        await rt.processes.deploy(message_start("orders", "order.placed", version=2, start="placed"))
        await rt.processes.deploy(message_start("audit", "order.placed"))
        await rt.processes.deploy(message_start("refunds", "order.refunded"))
        assert await rt.processes.deployments.started_by("order.placed") == ["audit", "orders"]

        real_find = rt.processes.deployments.find

        async def find_one_name(name: str | None = None) -> Any:
            assert name is not None, "send_message read every deployment"
            return await real_find(name)

        monkeypatch.setattr(rt.processes.deployments, "find", find_one_name)
        sent = await rt.processes.send_message("order.placed", "o-1")
        started = [await rt.processes.status(i) for i in sent["started"]]
        assert sorted((v["process"], v["version"]) for v in started) == [("audit", 1), ("orders", 2)]


async def test_a_message_with_the_longest_id_starts_the_process_with_the_longest_name(store_url: str) -> None:
    """Before, the start key of the instance a message starts was ``message:<id>:<process>``: with an id and a
    name of 100 characters each it was longer than a start key may be, and the start was refused."""
    async with runtime(store_url) as rt:
        name, message_id = "p" * 100, "m" * MESSAGE_ID_CHARS
        await rt.processes.deploy(message_start(name, "order.placed"))
        sent = await rt.processes.send_message("order.placed", "o-1", message_id=message_id)
        assert len(sent["started"]) == 1
        assert await rt.processes.send_message("order.placed", "o-1", message_id=message_id) == sent


async def test_the_message_start_index_is_filled_for_deployments_made_before_it(store_url: str) -> None:
    async with runtime(store_url) as rt:
        await rt.processes.deploy(message_start("orders", "order.placed"))
        async with rt.store.engine.begin() as conn:  # back to the schema before the index existed
            await conn.run_sync(process_message_starts.drop)
            await conn.execute(delete(schema_migrations).where(schema_migrations.c.version == 6))
        assert await migrate(rt.store.engine) == [6]
        assert await rt.processes.deployments.started_by("order.placed") == ["orders"]
        assert len((await rt.processes.send_message("order.placed", "o-1"))["started"]) == 1


async def test_a_message_nobody_waits_for_is_buffered_and_taken_by_the_next_wait_within_its_ttl(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(payment_spec())
        sent = await rt.processes.send_message("payment.received", "INV-9", {"amount": 5}, ttl=timedelta(hours=2))
        assert sent["buffered"] is not None and sent["expires_at"] == (clock.now() + timedelta(hours=2)).isoformat()

        clock.advance(timedelta(hours=1))
        view = await rt.processes.start("invoice", "cust-9", {"invoice_no": "INV-9"})
        assert view["status"] == "completed" and view["variables"]["amount"] == 5
        [message] = await rt.processes.services.messages.find(name="payment.received")
        assert message.status == "consumed"
        # Taken once: the next instance waits for a message of its own.
        again = await rt.processes.start("invoice", "cust-10", {"invoice_no": "INV-9"})
        assert waiting_elements(again) == ["paid"]


async def test_an_expired_message_is_never_delivered(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(payment_spec())
        await rt.processes.send_message("payment.received", "INV-3", {"amount": 1}, ttl=timedelta(minutes=10))
        clock.advance(timedelta(minutes=10))
        view = await rt.processes.start("invoice", "cust-3", {"invoice_no": "INV-3"})
        assert waiting_elements(view) == ["paid"]
        await rt.processes.scheduler.run_due()
        [message] = await rt.processes.services.messages.find(name="payment.received")
        assert message.status == "expired"


async def test_an_unmatched_message_can_be_refused_instead_and_bad_input_writes_nothing(store_url: str) -> None:
    async with runtime(store_url) as rt:
        await rt.processes.deploy(payment_spec())
        before = await table_dump(rt)
        with pytest.raises(UnmatchedMessageError) as caught:
            await rt.processes.send_message("payment.received", "INV-404", {"amount": 1}, ttl=None)
        assert caught.value.category == "not_found" and "INV-404" in str(caught.value)
        with pytest.raises(InvalidInputError):
            await rt.processes.send_message("payment.received", "INV-1", ["not", "a", "mapping"])  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            await rt.processes.send_message("", "INV-1", {})
        assert await table_dump(rt) == before


async def test_a_wait_without_its_correlation_variable_fails_clearly(store_url: str) -> None:
    async with runtime(store_url) as rt:
        await rt.processes.deploy(payment_spec())
        view = await rt.processes.start("invoice", "cust-1")
        assert view["status"] == "failed"
        [failed] = [e for e in await rt.processes.history(view["instance_id"]) if e.type == "instance.failed"]
        assert (failed.payload["pattern"], failed.payload["cause"]) == ("process", "run")
        assert "correlates on variable 'invoice_no', which is not set" in failed.payload["error"]


async def test_a_correlation_key_longer_than_the_stores_keep_is_refused_alike_on_every_backend(
    store_url: str,
) -> None:
    """A correlation value over 300 characters failed its instance on PostgreSQL when the wait was armed (the
    column refused it: StringDataRightTruncation) and was kept on SQLite and in memory. It is now refused where it
    is given (a start's or set_variables' variables, a message sent), naming the variable and the limit, with
    nothing written; one that a service task's output sets fails the instance at the event saying so, and a
    shorter one set with the retry makes it wait."""
    async with runtime(store_url) as rt:
        await rt.processes.deploy(payment_spec())
        before = await table_dump(rt)
        with pytest.raises(InvalidInputError, match="'invoice_no' is the correlation key of message event 'paid'"):
            await rt.processes.start("invoice", "cust-1", {"invoice_no": "x" * 301})
        with pytest.raises(InvalidInputError, match="at most 300 characters, not 301"):
            await rt.processes.send_message("payment.received", "x" * 301, {})
        assert await table_dump(rt) == before
        longest = await rt.processes.start("invoice", "cust-1", {"invoice_no": "x" * 300})
        assert waiting_elements(longest) == ["paid"]
        with pytest.raises(InvalidInputError, match="is 301 characters long; a correlation key has at most 300"):
            await rt.processes.set_variables(longest["instance_id"], {"invoice_no": "y" * 301})
        sent = await rt.processes.send_message("payment.received", "x" * 300, {"amount": 5})
        assert sent["correlated"] == [longest["instance_id"]]

        rt.agents.register("numbering", lambda _request: {"no": "z" * 301})
        numbered = linear(
            "numbered",
            {"type": "service_task", "id": "number", "agent": "numbering", "outputs": {"invoice_no": "no"}},
            {"type": "message", "id": "paid", "message": "payment.received", "correlation": "invoice_no"},
        )
        await rt.processes.deploy(numbered)
        view = await rt.processes.start("numbered", "cust-2")
        assert (view["status"], view["failure"]["element"]) == ("failed", "paid")
        assert view["failure"]["error_type"] == "CorrelationError"
        assert "is 301 characters long; a correlation key has at most 300" in view["failure"]["error"]
        retried = await rt.processes.set_variables(view["instance_id"], {"invoice_no": "INV-2"}, retry=True)
        assert waiting_elements(retried) == ["paid"]


async def test_a_wait_the_database_refuses_fails_saying_what_the_database_said(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value longer than its column: PostgreSQL refuses to arm the wait. The instance's view said ``failure:
    None`` and its log kept SQLAlchemy's whole statement and parameters as the error; both now say what the
    database answered. (A long correlation key is refused before it reaches the database now: the checks of its
    length are lifted here to have the database refuse one.)"""
    for checked_in in ("nodes.waits", "graphs.process.orchestrator"):
        monkeypatch.setattr(f"{checked_in}.CORRELATION_KEY", 10_000)
    async with runtime(postgres_url) as rt:
        await rt.processes.deploy(payment_spec())
        view = await rt.processes.start("invoice", "cust-1", {"invoice_no": "x" * 400})
        assert view["status"] == "failed"
        [failed] = [e for e in await rt.processes.history(view["instance_id"]) if e.type == "instance.failed"]
        for said in (view["failure"], failed.payload):
            assert said["error_type"] == "StringDataRightTruncation", said
            assert "value too long for type character varying" in said["error"]
            assert "[SQL:" not in said["error"] and "x" * 300 not in said["error"]
        assert view["failure"]["element"] == "paid"


async def test_a_resolution_left_undelivered_is_delivered_by_the_next_scheduler_pass(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(payment_spec())
        view = await rt.processes.start("invoice", "cust-1", {"invoice_no": "INV-1"})
        [subscription] = await rt.processes.services.messages.waiting("payment.received", "INV-1", EVERY_TENANT)
        # A sender resolved the wait and died before resuming the thread.
        assert await rt.processes.services.waits.resolve(
            subscription.wait_id,
            {"option": "paid", "kind": "message", "payload": {"amount": 3}},
            keep_subscription=subscription.subscription_id,
        )
        assert (await rt.processes.scheduler.run_due()).redelivered == 0  # it may still be on its way
        clock.advance(timedelta(minutes=2))
        assert (await rt.processes.scheduler.run_due()).redelivered == 1
        done = await rt.processes.status(view["instance_id"])
        assert done["status"] == "completed" and done["variables"]["amount"] == 3
        assert (await rt.processes.services.waits.get(subscription.wait_id)).status == "done"  # type: ignore[union-attr]
        assert (await rt.processes.scheduler.run_due()).redelivered == 0


async def test_a_redelivery_that_fails_neither_ends_the_pass_nor_keeps_the_others_from_theirs(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        await rt.processes.deploy(payment_spec())
        views = [await rt.processes.start("invoice", f"cust-{n}", {"invoice_no": f"INV-{n}"}) for n in (1, 2)]
        for n in (1, 2):  # each sender resolved its wait and died before resuming the thread
            [subscription] = await rt.processes.services.messages.waiting("payment.received", f"INV-{n}", EVERY_TENANT)
            assert await rt.processes.services.waits.resolve(
                subscription.wait_id,
                {"option": "paid", "kind": "message", "payload": {"amount": n}},
                keep_subscription=subscription.subscription_id,
            )
        broken = views[0]["instance_id"]
        deliver = rt.processes.deliver

        async def deliver_but_one(instance_id: str, *args: Any, **kwargs: Any) -> bool:
            if instance_id == broken:
                raise RuntimeError("this instance's delivery is broken")
            return await deliver(instance_id, *args, **kwargs)

        monkeypatch.setattr(rt.processes, "deliver", deliver_but_one)
        clock.advance(timedelta(minutes=2))
        report = await rt.processes.scheduler.run_due()
        assert (report.redelivered, report.failed) == (1, 1)
        assert "this instance's delivery is broken" in report.errors[0]
        assert (await rt.processes.status(views[1]["instance_id"]))["status"] == "completed"
        monkeypatch.undo()
        clock.advance(timedelta(minutes=2))
        assert (await rt.processes.scheduler.run_due()).redelivered == 1  # the broken one, once it works again
        assert (await rt.processes.status(broken))["status"] == "completed"


# --- message ids: a sender's retry changes nothing ----------------------------------------------------


def booked_on_payment() -> dict[str, Any]:
    """An invoice that waits for its payment, then books it (an agent)."""
    paid = payment_spec()["elements"][1]
    return linear("invoice", paid, {"type": "service_task", "id": "book", "agent": "book"})


def started_by_order() -> dict[str, Any]:
    """A process that an ``order.placed`` message starts, and that then ships (an agent)."""
    return {
        "name": "fulfilment",
        "elements": [
            {"type": "start", "id": "placed", "message": "order.placed"},
            {"type": "service_task", "id": "ship", "agent": "ship"},
            {"type": "end", "id": "end"},
        ],
        "flows": ["placed -> ship", "ship -> end"],
    }


async def test_a_message_sent_again_with_its_id_answers_as_the_first_did_and_changes_nothing(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        calls.register(rt, "book")
        calls.register(rt, "ship")
        await rt.processes.deploy(booked_on_payment())
        await rt.processes.deploy(started_by_order())
        waiting = await rt.processes.start("invoice", "cust-1", {"invoice_no": "INV-1"})
        sends = [
            ("payment.received", "INV-1", {"amount": 120}, "pay-1"),  # correlated to the waiting invoice
            ("order.placed", "ORD-1", {"items": 3}, "order-1"),  # starts a fulfilment
            ("payment.received", "INV-2", {"amount": 7}, "pay-2"),  # nobody waits: buffered
        ]
        first = [await rt.processes.send_message(n, k, p, message_id=i) for n, k, p, i in sends]
        assert first[0]["correlated"] == [waiting["instance_id"]] and len(first[1]["started"]) == 1
        assert first[2]["buffered"] == "pay-2"
        assert sorted(calls.intents()) == ["book", "ship"]

        before = await table_dump(rt)
        again = [await rt.processes.send_message(n, k, p, message_id=i) for n, k, p, i in sends]
        assert again == first
        assert await table_dump(rt) == before  # nothing resumed, started or buffered twice
        assert sorted(calls.intents()) == ["book", "ship"]

        # The buffered one is taken once, by the next wait for it.
        taker = await rt.processes.start("invoice", "cust-2", {"invoice_no": "INV-2"})
        assert taker["status"] == "completed" and taker["variables"]["amount"] == 7
        assert (
            await rt.processes.send_message("payment.received", "INV-2", {"amount": 7}, message_id="pay-2") == first[2]
        )
        late = await rt.processes.start("invoice", "cust-3", {"invoice_no": "INV-2"})
        assert waiting_elements(late) == ["paid"]


async def test_a_message_id_sent_with_another_message_is_refused_and_changes_nothing(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        calls.register(rt, "book")
        await rt.processes.deploy(booked_on_payment())
        await rt.processes.start("invoice", "cust-1", {"invoice_no": "INV-1"})
        await rt.processes.start("invoice", "cust-2", {"invoice_no": "INV-2"})
        await rt.processes.send_message("payment.received", "INV-1", {"amount": 120}, message_id="pay-1")
        before = await table_dump(rt)
        for other in (
            ("payment.received", "INV-1", {"amount": 121}),
            ("payment.received", "INV-2", {"amount": 120}),
            ("payment.refunded", "INV-1", {"amount": 120}),
        ):
            with pytest.raises(MessageIdConflictError) as refused:
                await rt.processes.send_message(*other, message_id="pay-1")
            assert refused.value.category == "invalid" and refused.value.details["message_id"] == "pay-1"
        for bad in ("", "x" * 101, 7):
            with pytest.raises(InvalidInputError):
                await rt.processes.send_message("payment.received", "INV-2", {}, message_id=bad)  # type: ignore[arg-type]
        assert await table_dump(rt) == before
        assert calls.intents() == ["book"]


async def test_concurrent_sends_of_one_message_id_deliver_it_once(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        calls.register(rt, "book")
        await rt.processes.deploy(booked_on_payment())
        waiting = await rt.processes.start("invoice", "cust-1", {"invoice_no": "INV-1"})
        results = await asyncio.gather(
            *(
                rt.processes.send_message("payment.received", "INV-1", {"amount": 5}, message_id="pay-1")
                for _ in range(4)
            ),
            return_exceptions=True,
        )
        answered = {"correlated": [waiting["instance_id"]], "started": [], "buffered": None}
        assert all(r == answered or isinstance(r, ConcurrentUpdateError) for r in results), results
        assert answered in results
        assert calls.intents() == ["book"]  # delivered once: no second resume, nothing buffered for a later wait
        assert await rt.processes.services.messages.find(name="payment.received") == []
        again = await rt.processes.send_message("payment.received", "INV-1", {"amount": 5}, message_id="pay-1")
        assert again == answered


async def test_a_send_whose_sender_died_midway_is_taken_over_after_a_lease(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        calls.register(rt, "ship")
        await rt.processes.deploy(started_by_order())
        messages = rt.processes.services.messages
        # A sender claimed the id and died before its send did anything.
        assert (
            await messages.claim_id(EVERY_TENANT, "order-1", "order.placed", "ORD-1", {"items": 1}, timedelta(days=1))
            is None
        )
        with pytest.raises(ConcurrentUpdateError):
            await rt.processes.send_message("order.placed", "ORD-1", {"items": 1}, message_id="order-1")
        clock.advance(timedelta(minutes=2))
        sent = await rt.processes.send_message("order.placed", "ORD-1", {"items": 1}, message_id="order-1")
        assert len(sent["started"]) == 1 and calls.intents() == ["ship"]
        again = await rt.processes.send_message("order.placed", "ORD-1", {"items": 1}, message_id="order-1")
        assert again == sent and calls.intents() == ["ship"]


async def test_a_message_id_is_remembered_for_its_window_only(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        calls.register(rt, "ship")
        await rt.processes.deploy(started_by_order())
        first = await rt.processes.send_message("order.placed", "ORD-1", {}, message_id="order-1")
        clock.advance(MESSAGE_ID_WINDOW)
        second = await rt.processes.send_message("order.placed", "ORD-1", {}, message_id="order-1")
        assert second["started"] != first["started"] and calls.intents() == ["ship", "ship"]


async def test_the_message_route_passes_the_message_id_through(sqlite_url: str) -> None:
    with serving(create_app(Settings(database_url=sqlite_url, auth=False, run_timers=False))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            assert (await http.post("/processes", json=payment_spec())).status_code == 200
            started = await http.post(
                "/processes/invoice/instances", json={"business_key": "cust-1", "variables": {"invoice_no": "INV-1"}}
            )
            instance_id = started.json()["instance_id"]
            message = {"name": "payment.received", "correlation_key": "INV-1", "payload": {"amount": 9}}
            first = await http.post("/messages", json={**message, "message_id": "pay-1"})
            again = await http.post("/messages", json={**message, "message_id": "pay-1"})
            assert first.status_code == again.status_code == 200
            assert first.json() == again.json() == {"correlated": [instance_id], "started": [], "buffered": None}
            other = await http.post("/messages", json={**message, "payload": {"amount": 10}, "message_id": "pay-1"})
            assert (other.status_code, other.json()["code"]) == (422, "MessageIdConflictError")
            events = (await http.get(f"/journeys/{instance_id}/history")).json()
            assert [e["type"] for e in events].count("wait.completed") == 1


# A sender in a process of its own, SIGKILLed at a point of its send (``argv``: store URL, point): ``deliver``,
# once it resolved the waiting instance's wait (before resuming it), or ``settle_id``, once it kept the
# message in the buffer (before recording what the send answered).
SENDER = """
import asyncio, sys
sys.path.insert(0, ".")
from checkpoints.process.messages import MessageStore
from graphs.process.orchestrator import ProcessOrchestrator
from graphs.runtime import JourneyRuntime

url, point = sys.argv[1:3]
async def hold(*_args, **_kwargs):
    print("HOLD", flush=True)
    await asyncio.sleep(3600)
setattr(ProcessOrchestrator if point == "deliver" else MessageStore, point, hold)
async def main():
    async with JourneyRuntime.open(url) as rt:
        await rt.processes.send_message("payment.received", "INV-1", {"amount": 5}, message_id="pay-1")
asyncio.run(main())
"""


def killed_mid_send(url: str, point: str) -> None:
    """Run the sender until it holds at ``point``, and SIGKILL it there."""
    with subprocess.Popen(
        [sys.executable, "-c", SENDER, url, point], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1]
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "HOLD", "the sender exited before its hold"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)


@pytest.mark.parametrize("point", ["deliver", "settle_id"])
async def test_a_send_taken_over_after_its_sender_was_killed_delivers_its_message_once(
    durable_url: str, point: str
) -> None:
    """Before, the send taken over looked only for instances still waiting: the one its killed sender had
    resolved (or that took it from the buffer) was not listed, and the message was buffered a second time,
    for a later wait to take again. Now the waits a message id resolved are found by it."""
    clock = VirtualClock(datetime.now(UTC))  # the sender runs on the system clock
    async with runtime(durable_url, clock) as rt:
        await rt.processes.deploy(payment_spec())
        first = None
        if point == "deliver":
            first = await rt.processes.start("invoice", "cust-1", {"invoice_no": "INV-1"})
        await asyncio.to_thread(killed_mid_send, durable_url, point)
        if first is None:  # the message was kept: this instance takes it from the buffer
            first = await rt.processes.start("invoice", "cust-1", {"invoice_no": "INV-1"})
        clock.advance(timedelta(minutes=2))  # the killed sender's claim is older than a lease: taken over

        again = await rt.processes.send_message("payment.received", "INV-1", {"amount": 5}, message_id="pay-1")
        assert again == {"correlated": [first["instance_id"]], "started": [], "buffered": None}
        done = await rt.processes.status(first["instance_id"])
        assert done["status"] == "completed" and done["variables"]["amount"] == 5
        assert [m.status for m in await rt.processes.services.messages.find(name="payment.received")] == (
            ["consumed"] if point == "settle_id" else []
        )
        later = await rt.processes.start("invoice", "cust-2", {"invoice_no": "INV-1"})
        assert waiting_elements(later) == ["paid"]  # the message was delivered once, not kept for another
        assert await rt.processes.send_message("payment.received", "INV-1", {"amount": 5}, message_id="pay-1") == again


async def test_a_buffered_message_that_does_not_fit_does_not_hold_back_a_later_one_that_does(store_url: str) -> None:
    """Two messages for one key wait in the buffer, the older breaking the process's variables_schema. The wait
    looked at the oldest only, passed it over, and so sat waiting while the one that fits lay in the buffer, until
    the misfit expired. Now it takes the one that fits; its log says why it passed the other over, which stays
    buffered for a wait it fits (another process's)."""
    async with runtime(store_url) as rt:
        spec = payment_spec()
        spec["variables_schema"] = {"type": "object", "properties": {"amount": {"type": "integer", "minimum": 0}}}
        await rt.processes.deploy(spec)
        lenient = payment_spec()
        lenient["name"] = "ledger"
        await rt.processes.deploy(lenient)
        bad = await rt.processes.send_message("payment.received", "INV-9", {"amount": -5}, message_id="pay-bad")
        good = await rt.processes.send_message("payment.received", "INV-9", {"amount": 5}, message_id="pay-good")
        assert (bad["buffered"], good["buffered"]) == ("pay-bad", "pay-good")

        strict = await rt.processes.start("invoice", "cust-1", {"invoice_no": "INV-9"})
        assert (strict["status"], strict["variables"]["amount"]) == ("completed", 5)
        [passed] = [e for e in await rt.processes.history(strict["instance_id"]) if e.type == "message.passed_over"]
        assert passed.payload["message_id"] == "pay-bad"
        assert passed.payload["reason"].endswith("variables_schema at amount: it breaks minimum 0")  # not the value
        assert [m.message_id for m in await rt.processes.services.messages.find(status="buffered")] == ["pay-bad"]

        other = await rt.processes.start("ledger", "cust-2", {"invoice_no": "INV-9"})  # it fits there
        assert (other["status"], other["variables"]["amount"]) == ("completed", -5)


def reviewed_on(message: str) -> dict[str, Any]:
    """A process a message starts, which then waits for ana's review: it stays active until she answers."""
    return {
        "name": "pr_review",
        "elements": [
            {"type": "start", "id": "opened", "message": message, "correlation": "pr_number"},
            {"type": "user_task", "id": "review", "title": "review", "assignee": "ana"},
            {"type": "end", "id": "end"},
        ],
        "flows": ["opened -> review", "review -> end"],
    }


async def test_a_message_start_starts_no_second_active_instance_for_its_correlation_key(store_url: str) -> None:
    """A message sent again (a sender retrying without a message id) started a second instance for the same
    correlation key while the first was still running, where Camunda's message start events start none. Now
    the answer names the active one (``active``) and starts nothing, on any version; once it has finished, the
    message starts a new one."""
    async with runtime(store_url) as rt:
        await rt.processes.deploy(reviewed_on("pr.opened"))
        first = await rt.processes.send_message("pr.opened", "42", {"title": "Fix"})
        [instance_id] = first["started"]
        again = await rt.processes.send_message("pr.opened", "42", {"title": "Fix"})
        assert again == {"correlated": [], "started": [], "buffered": None, "active": [instance_id]}
        await rt.processes.deploy({**reviewed_on("pr.opened"), "version": 2})
        assert (await rt.processes.send_message("pr.opened", "42", {}, ttl=None))["active"] == [instance_id]
        other = await rt.processes.send_message("pr.opened", "43", {})  # another key: its own instance
        assert len(other["started"]) == 1 and "active" not in other
        assert len(await rt.processes.inbox.list_tasks(assignee="ana")) == 2

        task = next(t for t in await rt.processes.inbox.list_tasks(assignee="ana") if t["instance_id"] == instance_id)
        await rt.processes.inbox.complete(task["task_id"], user="ana", payload={})
        after = await rt.processes.send_message("pr.opened", "42", {"title": "Fix, again"})
        assert len(after["started"]) == 1 and after["started"] != [instance_id] and "active" not in after


async def test_concurrent_message_starts_for_one_key_start_one_instance(store_url: str) -> None:
    async with runtime(store_url) as rt:
        await rt.processes.deploy(reviewed_on("pr.opened"))
        sent = await asyncio.gather(*(rt.processes.send_message("pr.opened", "7", {"n": n}) for n in range(4)))
        started = [i for answer in sent for i in answer["started"]]
        assert len(started) == 1
        assert all(answer.get("active") == started for answer in sent if not answer["started"])
        assert [i["instance_id"] for i in await rt.processes.instances("pr_review")] == started


async def test_the_message_route_names_the_active_instance_a_message_start_did_not_repeat(sqlite_url: str) -> None:
    with serving(create_app(Settings(database_url=sqlite_url, auth=False, run_timers=False))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            assert (await http.post("/processes", json=reviewed_on("pr.opened"))).status_code == 200
            message = {"name": "pr.opened", "correlation_key": "42", "payload": {}}
            first = await http.post("/messages", json=message)
            again = await http.post("/messages", json=message)
            assert again.status_code == 200, again.text
            assert again.json() == {
                "correlated": [],
                "started": [],
                "buffered": None,
                "active": first.json()["started"],
            }
            assert "active" not in first.json()


async def test_an_instance_started_through_the_api_at_a_message_start_does_not_hold_off_the_message(
    store_url: str,
) -> None:
    """An instance started by hand at the message start event, with the correlation key as its business key,
    counted as message-started: the message then started nothing and answered it as ``active``. As Camunda 8's
    message start events (one active instance per key among those a message triggered), it no longer counts:
    the message starts its own instance, which a second send of it then does not repeat."""
    async with runtime(store_url) as rt:
        await rt.processes.deploy(reviewed_on("pr.opened"))
        by_hand = await rt.processes.start("pr_review", "42", {"pr_number": "42"}, start_event="opened")
        sent = await rt.processes.send_message("pr.opened", "42", {"title": "Fix"})
        assert len(sent["started"]) == 1 and sent["started"] != [by_hand["instance_id"]] and "active" not in sent
        again = await rt.processes.send_message("pr.opened", "42", {"title": "Fix"})
        assert again["active"] == sent["started"]
