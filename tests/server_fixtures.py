"""The ``app`` and ``sdk`` fixtures: an in-process server on the test's database and the official SDK client of it.

Apart from tests/server_support.py so that the benchmarks, which import that module's helpers, need no pytest."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from fastapi import FastAPI
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient

from server.app import create_app
from server.settings import Settings
from tests.server_support import serving


@pytest.fixture(name="app")
def served_app(store_url: str) -> Iterator[tuple[FastAPI, str]]:
    """Fixture ``app``: a server without auth on the test's database (memory, SQLite or PostgreSQL) and its base
    URL, for a test that reaches into the app (its runtime, its agents) while it is served. A module takes it
    (and ``sdk``) with ``from tests.server_fixtures import served_app, served_sdk``."""
    served = create_app(Settings(database_url=store_url, auth=False))
    with serving(served) as url:
        yield served, url


@pytest.fixture(name="sdk")
async def served_sdk(app: tuple[FastAPI, str]) -> AsyncIterator[LangGraphClient]:
    """Fixture ``sdk``: the official async langgraph-sdk client of the ``app`` fixture's server."""
    async with get_client(url=app[1], api_key=None) as client:
        yield client
