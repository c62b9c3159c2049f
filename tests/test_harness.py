"""The fixtures in conftest.py do what every other test relies on them to do."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.conftest import UNSYNCED, with_database

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
