"""What a process pays to start.

The routes are built once per process, not again by each app's first request: FastAPI 0.165 includes a router
lazily and builds each of its routes again (dependants, ~1,100 pydantic TypeAdapters over our 111 routes) the
first time an app matches a request, a quarter to most of a CPU-second that every in-process server of the suite
and each production process's first request paid.

A ``journeys`` command imports what it runs: ``--help`` (or a refused option) imported LangGraph, SQLAlchemy and
the checkpoints package's store, about 1.9 CPU-seconds, before it said anything.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from unittest import mock

import fastapi.routing
import httpx
import pytest

from server.app import create_app
from server.problems import ApiError
from server.services import services
from server.settings import Settings


async def _get(app: fastapi.FastAPI, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://journeys") as client:
        return await client.get(path)


def test_a_new_apps_first_requests_build_no_route() -> None:
    app = create_app(Settings(database_url="memory://", auth=False))
    built = mock.Mock(wraps=fastapi.routing._populate_api_route_state)
    with mock.patch.object(fastapi.routing, "_populate_api_route_state", built):
        assert asyncio.run(_get(app, "/ok")).status_code == 200
        # A path of the last router (the dashboard's) and one no route serves: every route was matched.
        assert asyncio.run(_get(app, "/ui/login")).status_code in (200, 303)
        assert asyncio.run(_get(app, "/no/such/path")).status_code == 404
    assert built.call_count == 0


def test_each_app_answers_with_its_own_dependency_overrides() -> None:
    first = create_app(Settings(database_url="memory://", auth=False))
    second = create_app(Settings(database_url="memory://", auth=False))

    def overridden(name: str) -> object:
        async def refuse() -> None:
            raise ApiError(503, "Overridden", f"overridden in the {name} app")

        return refuse

    first.dependency_overrides[services] = overridden("first")
    second.dependency_overrides[services] = overridden("second")

    async def both() -> list[httpx.Response]:
        return list(await asyncio.gather(_get(first, "/threads/x"), _get(second, "/threads/x")))

    answers = asyncio.run(both())
    assert [(a.status_code, a.json()["detail"]) for a in answers] == [
        (503, "overridden in the first app"),
        (503, "overridden in the second app"),
    ]
    second.dependency_overrides.clear()
    with pytest.raises(AttributeError):  # the second app's own dependency again: it was never started
        asyncio.run(_get(second, "/threads/x"))


# What `journeys --help` needs no part of: the server, the store, LangGraph and the database drivers.
HEAVY = ("langgraph", "langchain_core", "sqlalchemy", "psycopg", "fastapi", "checkpoints.store", "server.app")


def test_journeys_help_imports_neither_langgraph_nor_the_store() -> None:
    probe = (
        "import sys\n"
        "from server.cli import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0, done.code\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert "Durable journey orchestration" in done.stdout
    assert done.stdout.splitlines()[-1] == "[]"
