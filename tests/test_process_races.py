"""Races where two answers, or an answer and a change of the instance, meet on one process instance: each
interleaving is forced, and what the user sees afterwards (status, history, the message buffer) is checked.
Every test runs on memory, SQLite and Postgres, on a virtual clock."""

from __future__ import annotations

from typing import Any

import pytest

from tests.process_support import linear, runtime, waiting_elements


def payment_spec() -> dict[str, Any]:
    return linear(
        "invoice",
        {
            "type": "message",
            "id": "paid",
            "message": "payment.received",
            "correlation": "invoice_no",
            "outputs": ["amount"],
        },
    )


async def test_a_message_sent_while_its_wait_is_armed_is_taken_by_that_wait(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender found no subscription, then the instance armed its wait (and found the buffer empty), then
    the sender buffered the message. Before, the message sat in the buffer until it expired and the instance
    waited for ever, though the message had been accepted ("buffered") while the wait stood."""
    async with runtime(store_url) as rt:
        await rt.processes.deploy(payment_spec())
        messages = rt.processes.services.messages
        real_waiting = messages.waiting
        started: list[dict[str, Any]] = []

        async def waiting(name: str, key: str) -> list[Any]:
            found = await real_waiting(name, key)
            if not started:  # the wait is armed between the sender's look-up and its buffering
                started.append(await rt.processes.start("invoice", "cust-1", {"invoice_no": "INV-1"}))
                assert waiting_elements(started[0]) == ["paid"]
            return found

        monkeypatch.setattr(messages, "waiting", waiting)
        sent = await rt.processes.send_message("payment.received", "INV-1", {"amount": 7})
        monkeypatch.undo()

        view = await rt.processes.status(started[0]["instance_id"])
        assert (view["status"], view["variables"]["amount"]) == ("completed", 7)
        assert sent["correlated"] == [started[0]["instance_id"]] and sent["buffered"] is None
        [message] = await messages.find(name="payment.received")
        assert message.status == "consumed"
        completed = [e for e in await rt.processes.history(view["instance_id"]) if e.type == "wait.completed"]
        assert len(completed) == 1
