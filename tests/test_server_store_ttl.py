"""Store item TTLs over real HTTP with the official langgraph-sdk client, on every backend.

``put_item(..., ttl=…)`` was refused with a 422 on every store, though LangGraph's SQLite and PostgreSQL stores
keep TTLs: an item put with one now expires that long after it was last written or read (a read restarts it
unless ``refresh_ttl`` is false), and each process's sweeper deletes it. The ``memory://`` store
(``InMemoryStore``) has no TTLs: it still refuses one, saying what to do.

A TTL is whole minutes, so the tests let time pass by moving an item's expiry in the store's table."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from typing import Any

import psycopg
import pytest
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import UnprocessableEntityError

from checkpoints import savers
from checkpoints.url import parse_store_url

pytestmark = pytest.mark.slow
SWEEP = 0.005  # minutes: a sweep each 0.3 s


@pytest.fixture(autouse=True)
def _quick_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sweep often (before the server of ``sdk_client`` opens its store), so an item goes soon after it expires."""
    monkeypatch.setattr(savers, "TTL_SWEEP_MINUTES", SWEEP)


# The SQL of moments relative to now, in each dialect.
MOMENTS = {
    "postgres": {
        "{past}": "NOW() - interval '1 minute'",
        "{half}": "NOW() + interval '30 seconds'",
        "{most}": "NOW() + interval '45 seconds'",
    },
    "sqlite": {
        "{past}": "DATETIME(CURRENT_TIMESTAMP, '-1 minutes')",
        "{half}": "DATETIME(CURRENT_TIMESTAMP, '+30 seconds')",
        "{most}": "DATETIME(CURRENT_TIMESTAMP, '+45 seconds')",
    },
}


def _sql(store_url: str, statement: str, key: str) -> list[tuple[Any, ...]]:
    """Run ``statement`` on the store's row of ``key`` (``?``), as time passing would change it."""
    url = parse_store_url(store_url)
    dialect = "postgres" if url.kind == "postgres" else "sqlite"
    for moment, sql in MOMENTS[dialect].items():
        statement = statement.replace(moment, sql)
    if dialect == "postgres":
        with psycopg.connect(store_url, autocommit=True) as conn:
            cursor = conn.execute(statement.replace("?", "%s"), (key,))  # type: ignore[arg-type]  # a test's SQL
            return list(cursor.fetchall()) if cursor.description else []
    with closing(sqlite3.connect(url.target)) as conn, conn:  # closed (sqlite3's own block only commits)
        return list(conn.execute(statement, (key,)).fetchall())


def _expiring_soon(store_url: str, key: str) -> bool:
    """Whether the item expires within 45 seconds (it was put with a minute, or its TTL was restarted, since)."""
    [(soon,)] = _sql(store_url, "SELECT expires_at < {most} FROM store WHERE key = ?", key)
    return bool(soon)


async def _eventually(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "still there"
        await asyncio.sleep(0.2)


async def test_an_item_put_with_a_ttl_expires_unless_it_is_read(sdk_client: LangGraphClient, store_url: str) -> None:
    store = sdk_client.store
    if store_url == "memory://":
        with pytest.raises(UnprocessableEntityError) as refused:
            await store.put_item(["notes"], "k", {"x": 1}, ttl=5)
        said = refused.value.response.json()["detail"]
        assert "has no item TTLs" in said and "leave ttl out" in said and "sqlite" in said, said
        assert await store.search_items(["notes"]) == {"items": []}
        return
    for refused_ttl in (0, -1, 0.5, 10**12, True, "5"):  # a bool or a string is no number of minutes
        with pytest.raises(UnprocessableEntityError):
            await store.put_item(["notes"], "bad", {"x": 1}, ttl=refused_ttl)  # type: ignore[arg-type]
    # 2.0 is an integer to JSON Schema, as the document states ttl: taken as 2 minutes (it was refused).
    await store.put_item(["whole"], "two", {"x": 0}, ttl=2.0)  # type: ignore[arg-type]
    assert (await store.get_item(["whole"], "two") or {}).get("value") == {"x": 0}
    await store.put_item(["notes"], "lapses", {"x": 1}, ttl=1)
    await store.put_item(["notes"], "read", {"x": 2}, ttl=1)
    await store.put_item(["notes"], "kept", {"x": 3})
    assert _sql(store_url, "SELECT expires_at FROM store WHERE key = ?", "kept") == [(None,)]
    assert not _expiring_soon(store_url, "read")

    # Most of a minute passes: a read restarts the item's TTL, unless it asks not to.
    for key in ("lapses", "read"):
        _sql(store_url, "UPDATE store SET expires_at = {half} WHERE key = ?", key)
        assert _expiring_soon(store_url, key)
    assert (await store.get_item(["notes"], "lapses", refresh_ttl=False) or {}).get("value") == {"x": 1}
    assert _expiring_soon(store_url, "lapses")
    assert (await store.get_item(["notes"], "read") or {}).get("value") == {"x": 2}
    assert not _expiring_soon(store_url, "read")
    await store.search_items(["notes"], refresh_ttl=False)
    assert _expiring_soon(store_url, "lapses")

    # Its TTL passed: the item is gone (PostgreSQL's reads omit it at once, the sweeper deletes it).
    _sql(store_url, "UPDATE store SET expires_at = {past} WHERE key = ?", "lapses")

    async def lapsed() -> bool:
        return await store.get_item(["notes"], "lapses", refresh_ttl=False) is None

    await _eventually(lapsed)
    await _eventually(
        lambda: asyncio.to_thread(lambda: not _sql(store_url, "SELECT 1 FROM store WHERE key = ?", "lapses"))
    )
    found = await store.search_items(["notes"])
    assert sorted(item["key"] for item in found["items"]) == ["kept", "read"]
