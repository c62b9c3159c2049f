"""Encryption at rest: with a key, a journey's values are in no raw table (checkpoints through LangGraph's
EncryptedSerializer; run inputs, commands, outputs, stream chunks and event payloads sealed), and read
back as they were; without one they are stored as before (which is what the scan would find)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, delete, inspect, select
from sqlalchemy.schema import MetaData
from typer.testing import CliRunner

from checkpoints.errors import EncryptionKeyError
from checkpoints.rebuild import rebuild_views
from checkpoints.schema.tables import encryption_canary
from checkpoints.store import check_store_key
from checkpoints.url import parse_store_url
from graphs import JourneyRuntime
from graphs.errors import MessageIdConflictError
from server.app import create_app
from server.cli import app as cli
from server.settings import Settings
from tests.lifecycle_support import lifecycle_runtime
from tests.process_support import FAST, linear, payment_spec, user_task, virtual_clock
from tests.server_support import serving
from tests.test_rebuild_views import mixed_workload, unit_and_rollback_workload

KEY = b"0123456789abcdef0123456789abcdef"
MARKER = "confidential-plan-Zeta"


def raw_cells(url: str) -> list[str]:
    """Every cell of every table of the database, as text (bytes as Latin-1, so any UTF-8 shows through)."""
    engine = create_engine(parse_store_url(url).sqlalchemy_url.replace("+aiosqlite", ""))
    cells: list[str] = []
    try:
        with engine.connect() as conn:
            tables = MetaData()
            tables.reflect(conn, only=[n for n in inspect(conn).get_table_names() if not n.startswith("procrastinate")])
            for table in tables.sorted_tables:
                for row in conn.execute(select(table)):
                    for cell in row:
                        if isinstance(cell, bytes | memoryview):
                            cells.append(bytes(cell).decode("latin-1"))
                        else:
                            cells.append(json.dumps(cell, default=str))
    finally:
        engine.dispose()
    return cells


def drive(url: str, key: bytes | None) -> dict[str, Any]:
    """A structured journey over HTTP with the marker in its input, a step result and a streamed resume."""
    app = create_app(Settings(database_url=url, auth=False), runtime_options={"encryption_key": key})
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        start = {"journey_type": "content_migration", "context": {"plan": MARKER}}
        first = {"assistant_id": "structured", "input": start, "on_completion": "keep"}  # resumed on its thread
        assert http.post("/runs/wait", json=first).status_code == 200
        [thread] = http.post("/threads/search", json={}).json()
        resume = {"assistant_id": "structured", "command": {"resume": {"note": MARKER}}}
        path = f"/threads/{thread['thread_id']}/runs"
        assert http.post(f"{path}/wait", json=resume).status_code == 200
        assert http.post(f"{path}/stream", json={**resume, "stream_mode": "values"}).status_code == 200
        state: dict[str, Any] = http.get(f"/threads/{thread['thread_id']}/state").json()
        return state


def test_with_a_key_no_table_holds_a_journeys_values_in_plaintext(durable_url: str) -> None:
    state = drive(durable_url, KEY)
    assert state["values"]["context"] == {"plan": MARKER}  # read back through the key
    cells = raw_cells(durable_url)
    assert len(cells) > 100  # the checkpoints, runs and events are there
    assert not [c for c in cells if MARKER in c]


def test_without_a_key_the_same_scan_finds_the_values(sqlite_url: str) -> None:
    drive(sqlite_url, None)
    assert [c for c in raw_cells(sqlite_url) if MARKER in c]


async def test_a_key_of_the_wrong_length_is_refused(sqlite_url: str) -> None:
    with pytest.raises(EncryptionKeyError, match="16, 24 or 32 bytes"):
        async with JourneyRuntime.open(sqlite_url, encryption_key=b"short"):
            pass


async def test_with_a_key_a_processs_answers_and_messages_are_sealed_and_read_back(durable_url: str) -> None:
    """A task's answer, a message's body (correlated, sent under an id, buffered) were kept in clear in the
    process tables (waits' resolutions, the inbox, the message buffer and ids) while the log and checkpoints
    were sealed. They are sealed now, and everything that reads them reads them back: the inbox, the instance
    the answer resumes, a repeat send under the same id, a wait that takes a buffered message, the rebuild."""
    async with JourneyRuntime.open(durable_url, encryption_key=KEY, clock=virtual_clock(), retry=FAST) as rt:
        processes = rt.processes
        await processes.deploy(linear("signing", user_task("sign")))
        await processes.deploy(payment_spec())
        signing = await processes.start("signing", "order-1")
        [task] = await processes.inbox.for_user("ana")
        await processes.inbox.complete(task["task_id"], user="ana", payload={"note": f"{MARKER}-answer"})
        await processes.start("invoice", "inv-1", {"invoice_no": "n1"})
        sent = await processes.send_message("payment.received", "n1", {"amount": f"{MARKER}-paid"}, message_id="m1")
        assert (
            await processes.send_message("payment.received", "n1", {"amount": f"{MARKER}-paid"}, message_id="m1")
            == sent
        )  # a repeat under the same id reads the sealed body back to compare it, and answers the same
        with pytest.raises(MessageIdConflictError):
            await processes.send_message("payment.received", "n1", {"amount": "other"}, message_id="m1")
        await processes.send_message("payment.received", "n2", {"amount": f"{MARKER}-early"})  # buffered
        late = await processes.start("invoice", "inv-2", {"invoice_no": "n2"})  # takes the buffered message

        cells = raw_cells(durable_url)
        assert not [c[:200] for c in cells if MARKER in c]
        assert (await processes.inbox.get_task(task["task_id"]))["result"] == {"note": f"{MARKER}-answer"}
        assert (await processes.status(signing["instance_id"]))["status"] == "completed"
        assert (await processes.status(late["instance_id"]))["variables"]["amount"] == f"{MARKER}-early"
        assert (await processes.status(sent["correlated"][0]))["variables"]["amount"] == f"{MARKER}-paid"
        # The inbox as the log derives it is the one kept: the rebuild corrects nothing, and writes no clear text.
        _index, _lifecycle, inbox = await rebuild_views(rt.store.backend, rt.store.events, rt.engine.exclusive)
        assert inbox.corrected == []
        assert not [c[:200] for c in raw_cells(durable_url) if MARKER in c]


async def test_with_a_key_a_client_lifecycles_rows_keep_nothing_in_clear(durable_url: str) -> None:
    """A journey's metadata, a rollback's reason and snapshot, a unit's task inputs and outputs were kept in
    clear in the lifecycle tables while the log and checkpoints were sealed. They are sealed now; the views
    read them back, and the rebuild from the log (which compares and writes them) corrects nothing."""
    async with lifecycle_runtime(durable_url, encryption_key=KEY) as (rt, clock):
        await mixed_workload(rt, clock)  # metadata {"tier": "gold"}, a rollback "asked by the client"
        journeys = await unit_and_rollback_workload(rt, clock)  # units with the default agents' outputs
        cleartexts = ['"tier"', "asked by the client", "a bad pilot", "dataset-healthcare-demo", "cohort-pilot"]
        assert not [(text, c[:120]) for c in raw_cells(durable_url) for text in cleartexts if text in c]

        rollbacks = await rt.lifecycle.rollback_history(journeys[2])
        assert [r["reason"] for r in rollbacks] == ["asked by the client"]
        units = await rt.lifecycle.units_of_work(journeys[1])
        outputs = [t["output_data"] for u in units for t in u["tasks"].values() if t.get("output_data")]
        assert {(o["cohort_id"], o["user_count"]) for o in outputs if "cohort_id" in o} == {("cohort-pilot", 25)}
        _index, lifecycle, _inbox = await rebuild_views(rt.store.backend, rt.store.events, rt.engine.exclusive)
        assert lifecycle.corrected == []


async def test_a_database_refuses_as_it_opens_another_key_or_none(
    durable_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened with another key, or none, an encrypted database answered every read with a bare
    ``ValueError: MAC check failed`` or ``NotImplementedError: Unknown serialization type`` (a 500 over
    HTTP), and a worker given the wrong key failed each run. It is refused as it opens now, saying why."""
    monkeypatch.delenv("JOURNEYS_ENCRYPTION_KEY", raising=False)
    async with JourneyRuntime.open(durable_url) as rt:  # a database kept in clear first: a key may be added
        await rt.structured.design_journey(journey_type="content_migration", requirements={})
    async with JourneyRuntime.open(durable_url, encryption_key=KEY) as rt:
        design = await rt.structured.design_journey(journey_type="content_migration", requirements={})
        await rt.structured.execute_journey(journey_id=design["journey_id"], user_id="ana", context={"p": MARKER})
    for key, refusal in ((b"another key, 16b", "not this database's"), (None, "this database is encrypted")):
        with pytest.raises(EncryptionKeyError, match=refusal):
            async with JourneyRuntime.open(durable_url, encryption_key=key):
                pass
        with pytest.raises(EncryptionKeyError, match=refusal):
            await check_store_key(durable_url, key)
    # A database encrypted before its key's proof was kept is judged by its latest event.
    engine = create_engine(parse_store_url(durable_url).sqlalchemy_url.replace("+aiosqlite", ""))
    with engine.begin() as conn:
        assert conn.execute(delete(encryption_canary)).rowcount == 1
    engine.dispose()
    with pytest.raises(EncryptionKeyError, match="not this database's"):
        await check_store_key(durable_url, b"another key, 16b")
    async with JourneyRuntime.open(durable_url, encryption_key=KEY) as rt:  # its own key reads it all back
        status = await rt.structured.get_journey_status(journey_id=design["journey_id"], user_id="ana")
        assert status["current_step"] == "upload_content"  # its checkpoint opened
        assert MARKER in json.dumps([e.payload for e in await rt.history(status["instance_id"])])


def test_serve_and_worker_refuse_another_key_with_a_message(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(check_store_key(postgres_url, KEY))  # the first key keeps its proof
    monkeypatch.setenv("JOURNEYS_ENCRYPTION_KEY", "another key, 16b")
    served = CliRunner().invoke(cli, ["serve", "--no-auth", "--database-url", postgres_url])
    worker = CliRunner().invoke(cli, ["worker", "--database-url", postgres_url])
    for result in (served, worker):
        assert result.exit_code == 2 and "the encryption key is not this database's" in result.output, result.output
        assert "Traceback" not in result.output
