"""An assistant deleted while an update of it commits leaves none of its versions behind.

An update reads the assistant under its row lock and adds a version in the same transaction. A delete that
removed the versions first and the assistant second ran its first statement past the update's uncommitted
version (one statement, one snapshot), then waited for the row lock: once the update committed, the assistant
went and its new version stayed, an orphan that an assistant created again under that id then listed among its
own versions (and could be set back to). PostgreSQL only: SQLite's transactions take turns on the saver's
connection, so no delete runs inside an update there.
"""

from __future__ import annotations

import asyncio
import time

import psycopg

from checkpoints.assistants import AssistantStore
from graphs.runtime import JourneyRuntime

_BLOCKED_DELETE = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "AND wait_event_type = 'Lock' AND query ILIKE '%DELETE FROM server_assistant%'"
)


async def _until_blocked(admin: psycopg.AsyncConnection[tuple[int]]) -> None:
    deadline = time.monotonic() + 30
    while (await (await admin.execute(_BLOCKED_DELETE)).fetchone() or (0,))[0] == 0:
        assert time.monotonic() < deadline, "the delete never waited for the update's row lock"
        await asyncio.sleep(0.01)


async def test_an_assistant_deleted_while_an_update_commits_leaves_no_version_behind(postgres_url: str) -> None:
    async with JourneyRuntime.open(postgres_url) as rt:
        store = AssistantStore(rt.store.backend, rt.store.clock)
        fields = {"graph_id": "g", "description": None, "config": {}, "context": {}, "owner": None}
        await store.create(assistant_id="a-1", name="first", metadata={}, **fields)
        async with (
            await psycopg.AsyncConnection.connect(postgres_url) as update,
            await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin,
        ):
            # An update under way, as AssistantStore.update makes it: the row locked, version 2 added.
            await update.execute("SELECT 1 FROM server_assistants WHERE assistant_id = 'a-1' FOR UPDATE")
            await update.execute(
                "INSERT INTO server_assistant_versions "
                "SELECT assistant_id, 2, graph_id, name, description, config, context, metadata, created_at "
                "FROM server_assistant_versions WHERE assistant_id = 'a-1' AND version = 1"
            )
            deleting = asyncio.ensure_future(store.delete("a-1"))
            await _until_blocked(admin)
            await update.commit()
            await deleting
            left = await (await admin.execute("SELECT version FROM server_assistant_versions")).fetchall()
        assert left == []
        again = await store.create(assistant_id="a-1", name="again", metadata={}, **fields)
        assert (again.name, again.version) == ("again", 1)
        assert [(v.name, v.version) for v in await store.versions("a-1")] == [("again", 1)]
