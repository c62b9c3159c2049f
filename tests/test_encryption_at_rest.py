"""Encryption at rest: with a key, a journey's values are in no raw table (checkpoints through LangGraph's
EncryptedSerializer; run inputs, commands, outputs, stream chunks and event payloads sealed), and read
back as they were; without one they are stored as before (which is what the scan would find)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.schema import MetaData

from checkpoints.errors import EncryptionKeyError
from checkpoints.url import parse_store_url
from graphs import JourneyRuntime
from server.app import create_app
from server.settings import Settings
from tests.server_support import serving

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
        assert http.post("/runs/wait", json={"assistant_id": "structured", "input": start}).status_code == 200
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
