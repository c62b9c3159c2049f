"""The fixtures in conftest.py do what every other test relies on them to do."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.conftest import (
    UNKNOWN_DURATION,
    UNKNOWN_SLOW_DURATION,
    UNSYNCED,
    known_durations,
    slowest_first,
    unit_of,
    with_database,
)
from tests.durations import node_id

# Databases handed out so far in this module, to prove isolation across tests.
_seen_databases: list[str] = []


def _public_tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
        ).fetchall()
    return [row[0] for row in rows]


def test_postgres_server_answers(postgres_server_url: str) -> None:
    with psycopg.connect(postgres_server_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_the_throwaway_server_does_not_wait_on_the_disk(postgres_url: str) -> None:
    """Our own pgserver skips fsync and synchronous commit (see conftest); a $DATABASE_URL server is left as it is."""
    with psycopg.connect(postgres_url) as conn:
        settings = {name: str(conn.execute(f"SHOW {name}").fetchone()[0]) for name in UNSYNCED}  # type: ignore[index]
    assert settings == UNSYNCED or "DATABASE_URL" in os.environ, settings


@pytest.mark.fresh_database
@pytest.mark.parametrize("run", ["first", "second"])
def test_each_postgres_url_is_a_fresh_isolated_database(postgres_url: str, postgres_server_url: str, run: str) -> None:
    name = urlsplit(postgres_url).path.lstrip("/")
    assert name.startswith("t_")
    assert name not in _seen_databases

    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (name,)
    # Empty on arrival: the other run's table must not be visible here.
    assert _public_tables(postgres_url) == []
    with psycopg.connect(postgres_url) as conn:
        conn.execute(f"CREATE TABLE marker_{run} (id int)")
    assert _public_tables(postgres_url) == [f"marker_{run}"]

    # Databases from earlier tests have been dropped.
    with psycopg.connect(postgres_server_url) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'").fetchall()
    assert [row[0] for row in rows] == [name]
    _seen_databases.append(name)


def _contents(url: str) -> dict[str, object]:
    """What a database holds that a runtime's open could have made: its tables and columns, indexes, functions
    and types (public schema), and how many rows each table has."""
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type, column_default, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY 1, 2"
        ).fetchall()
        indexes = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1").fetchall()
        routines = conn.execute(
            "SELECT p.proname, t.typname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "JOIN pg_type t ON t.oid = p.prorettype WHERE n.nspname = 'public' ORDER BY 1, 2"
        ).fetchall()
        rows = {table: conn.execute(f'SELECT count(*) FROM "{table}"').fetchone() for table in _public_tables(url)}
    return {"columns": columns, "indexes": indexes, "routines": routines, "rows": rows}


def test_a_postgres_url_holds_what_opening_an_empty_database_makes(postgres_url: str, postgres_server_url: str) -> None:
    """The test databases are copies of a template a runtime opened once: each holds exactly what a runtime
    opening an empty database makes (today's schema, the rows the migrations write), so no test starts from more."""
    import asyncio

    from graphs.runtime import JourneyRuntime

    async def opened(url: str) -> None:
        async with JourneyRuntime.open(url):
            pass

    name = f"t_empty_{os.getpid()}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        fresh = with_database(postgres_server_url, name)
        asyncio.run(opened(fresh))
        assert _contents(postgres_url) == _contents(fresh)
        assert "journeys_schema_migrations" in _public_tables(postgres_url)
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_store_url_shapes(store_url: str, request: pytest.FixtureRequest) -> None:
    expected_prefix = {"memory": "memory://", "sqlite": "sqlite:///", "postgres": "postgresql://"}
    kind = request.node.callspec.id
    assert store_url.startswith(expected_prefix[kind])
    if kind == "memory":
        assert store_url == "memory://"
    elif kind == "sqlite":
        assert store_url.endswith("/journeys.db")
        assert store_url.removeprefix("sqlite:///").startswith("/")  # absolute path
    else:
        assert urlsplit(store_url).path.startswith("/t_")
        with psycopg.connect(store_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_memory_and_sqlite_do_not_start_postgres(store_url: str, request: pytest.FixtureRequest) -> None:
    if request.node.callspec.id != "postgres":
        assert {"postgres_url", "postgres_server_url"}.isdisjoint(request.fixturenames)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres:@/postgres?host=/tmp/pg", "postgresql://postgres:@/t_x?host=/tmp/pg"),
        ("postgresql://u:p@db.example:5433/app", "postgresql://u:p@db.example:5433/t_x"),
        ("postgresql://u@localhost", "postgresql://u@localhost/t_x"),
        ("postgresql://u@h/app?dbname=app&sslmode=disable", "postgresql://u@h/t_x?sslmode=disable"),
    ],
    ids=["unix-socket", "tcp", "no-database", "dbname-param"],
)
def test_with_database(url: str, expected: str) -> None:
    assert with_database(url, "t_x") == expected


@pytest.fixture(scope="module")
def shared_by_the_module() -> str:
    return "set up once for this module's tests"


@pytest.mark.parametrize("n", [1, 2])
def test_tests_sharing_a_module_fixture_are_ordered_as_one_unit(
    shared_by_the_module: str, n: int, request: pytest.FixtureRequest
) -> None:
    mine = [i for i in request.session.items if i.path == request.node.path]
    sharing = [i for i in mine if "shared_by_the_module" in getattr(i, "fixturenames", ())]
    alone = [i for i in mine if i not in sharing]
    assert len(sharing) == 2 and alone
    # Each of the sharing tests alone is shorter than the longest other test, but the two together are longer.
    durations = {i.nodeid: 1.0 for i in alone} | {alone[-1].nodeid: 3.0} | {i.nodeid: 2.0 for i in sharing}
    ordered = slowest_first(mine, durations)
    assert ordered[:3] == [*sharing, alone[-1]]
    assert sorted(ordered, key=mine.index) == mine  # nothing lost or repeated


def test_xdist_workers_take_the_slowest_tests_first(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    assert request.config.option.maxschedchunk == 1  # one at a time, not a quarter of a worker's share
    # This module's tests with no module-wide fixture are units of their own, and none is marked slow.
    mine = [i for i in items if i.path == request.node.path and unit_of(i) == i.nodeid]
    assert slowest_first(mine, {}) == mine  # all unknown (UNKNOWN_DURATION each): the order is kept
    last = mine[-1]
    assert slowest_first(mine, {last.nodeid: UNKNOWN_DURATION + 1})[0] is last
    assert slowest_first(mine, {i.nodeid: UNKNOWN_SLOW_DURATION for i in mine} | {last.nodeid: 0.5})[-1] is last
    if hasattr(request.config, "workerinput"):  # the order this worker (and every other) collected in
        assert known_durations()  # tests/durations.json is there
        assert items == slowest_first(items, known_durations())


@pytest.mark.parametrize(
    ("classname", "name", "expected"),
    [
        ("tests.test_harness", "test_with_database[a]", "tests/test_harness.py::test_with_database[a]"),
        ("tests.test_harness.TestX", "test_y", "tests/test_harness.py::TestX::test_y"),
    ],
)
def test_a_junit_testcase_names_its_pytest_node(classname: str, name: str, expected: str) -> None:
    assert node_id(ET.Element("testcase", classname=classname, name=name)) == expected
