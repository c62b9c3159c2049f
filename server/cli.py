"""The ``journeys`` command line."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import secrets
import socket
import sys
from collections.abc import Callable, Coroutine
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar, cast

import typer
from rich.console import Console

from checkpoints.errors import JourneyError
from checkpoints.url import DEFAULT_STORE_URL

# A command imports what it runs when it runs (its function's imports): `journeys --help`, `keys new` or a bad
# option does not pay for LangGraph, SQLAlchemy and the server.
if TYPE_CHECKING:
    from langgraph.types import Durability

    from server.runs.store import RunRow, RunStore

T = TypeVar("T")

DURABILITIES = ("exit", "async", "sync")
DURABILITY_HELP = (
    "exit: structured runs checkpoint when they stop (steps replay from the event log); "
    "async, sync: after every step too"
)
app = typer.Typer(help="Durable journey orchestration on LangGraph.", no_args_is_help=True)
keys = typer.Typer(help="API keys: the server's keys file holds only their digests.", no_args_is_help=True)
app.add_typer(keys, name="keys")
instances = typer.Typer(
    help="The journeys in a database, for an operator: list them, show one, retry a failed one, terminate one.",
    no_args_is_help=True,
)
app.add_typer(instances, name="instances")
GUIDE_MODEL_HELP = "module:factory returning a langchain-core chat model for the guide (default: deterministic)"
# Options `serve` and `worker` share (in distributed mode the workers execute the runs).
DurabilityOption = Annotated[str, typer.Option(help=DURABILITY_HELP)]
GuideModelOption = Annotated[str | None, typer.Option(envvar="JOURNEYS_GUIDE_MODEL", help=GUIDE_MODEL_HELP)]
RetentionOption = Annotated[
    str,
    typer.Option(
        "--retention",
        envvar="JOURNEYS_RETENTION",
        help="finished journeys' checkpoints: keep_latest, keep_all_for (--retention-days) or delete_after",
    ),
]
LOCK_TIMEOUT_S = 30.0  # checkpoints.locks.DEFAULT_LOCK_TIMEOUT_S, not imported: --help stays quick
# How long `journeys serve` keeps an idle connection open for its client's next request: longer than clients keep
# theirs pooled (httpx, so langgraph-sdk, 5 s; aiohttp 15 s) and than load balancers (60 s), so that the client
# drops one first. uvicorn's 5 s closed connections clients still held, and a request sent on one just as its
# close arrived failed (aiohttp's ServerDisconnectedError). 75 s as nginx's.
KEEP_ALIVE_S = 75
LockTimeoutOption = Annotated[
    float,
    typer.Option(
        min=0.1,
        envvar="JOURNEYS_LOCK_TIMEOUT_S",
        help="seconds a call waits for a journey another call (of this process or another) works on: a request then "
        "answers 409 ConcurrentUpdateError, and a worker gives a run taken from a worker whose heartbeat was late "
        "back to the queue, to be taken again later",
    ),
]
DatabaseOption = Annotated[str, typer.Option("--database-url", help="sqlite:///file.db (default) or postgresql://…")]
# An operator command that may run a journey's steps here: the agents they call, as serve and worker take them.
PluginOption = Annotated[
    str | None, typer.Option(help="module:function registering the agents its steps call (as serve and worker)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON (one object) instead of a table")]
RetentionDaysOption = Annotated[
    float, typer.Option("--retention-days", envvar="JOURNEYS_RETENTION_DAYS", help="days for keep_all_for/delete_after")
]


def event_loop_runner() -> Callable[[Coroutine[Any, Any, T]], T]:
    """What runs the event loop of journeys' commands (a worker's, the demo's): uvloop where it is installed
    (less CPU per query and per request than asyncio's loop), else asyncio's. The benchmarks measure on it."""
    try:
        import uvloop
    except ImportError:  # Windows: uvloop does not build there
        return asyncio.run
    return uvloop.run


def _run(main: Coroutine[Any, Any, object]) -> None:
    """Run ``main`` on :func:`event_loop_runner`'s loop; a :class:`JourneyError` it raises (a database not
    there, a bad setting) is reported as one line, and so is the database going away under it (a restart, a
    failover: the driver's error, not ours)."""
    from checkpoints.database import DATABASE_ERRORS, lost_database

    try:
        event_loop_runner()(main)
    except JourneyError as exc:
        _fail(exc)
    except DATABASE_ERRORS as exc:
        lost = lost_database(exc)
        if lost is None:
            raise
        _fail(lost)


def _run_quietly(main: Coroutine[Any, Any, object]) -> None:
    """:func:`_run` for a command that prints its own answer (maintenance, `instances`): the runtime's logs
    below errors are not shown."""
    _quiet_logs(verbose=False)
    _run(main)


def _durability(value: str) -> Durability:
    if value not in DURABILITIES:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(DURABILITIES)}", param_hint="--durability")
    return cast("Durability", value)


def _ttl_strategy(value: str) -> str:
    if value not in ("delete", "keep_latest"):
        raise typer.BadParameter(f"{value!r} is not delete or keep_latest", param_hint="--thread-ttl-strategy")
    return value


def _retention_cron(value: str, option: str = "--retention-cron") -> str:
    """A retention (or thread TTL sweep) schedule that falls due (a bad one crashed the worker's periodic jobs,
    timers' too), by the journey timers' check."""
    from nodes.errors import TimerDefinitionError
    from nodes.timer import check_cron

    try:
        check_cron(value)
    except TimerDefinitionError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None
    return value


def _retention(mode: str, days: float) -> Any:
    """The retention policy the options name (a RetentionPolicyError for a bad one, reported and exit 2)."""
    from checkpoints.retention import RetentionPolicy

    try:
        return RetentionPolicy(cast(Any, mode), days)
    except JourneyError as exc:
        _fail(exc)


def _quiet_logs(verbose: bool, quiet: int = logging.ERROR) -> None:
    from server.logs import configure_logging

    configure_logging(logging.INFO if verbose else quiet)  # plain tracebacks, bounded values: server/logs.py


def _fail(error: JourneyError) -> NoReturn:
    """Its message, not a traceback. Exit status 1 when something failed (a database not there), 2 when what
    was asked for is refused (a bad setting or name, as for a bad option)."""
    _fail_as(str(error), error.category)


def _fail_as(message: str, category: str) -> NoReturn:
    """:func:`_fail` of an error known by its message and category (one another process raised)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1 if category == "failed" else 2)


def _existing(database_url: str, command: str) -> None:
    """Refuse a SQLite database file that does not exist: a maintenance command on a mistyped path created
    it empty (its directories too) and reported on it, "0 instances read", as if it were the operator's."""
    from checkpoints.errors import DatabaseUnavailableError
    from checkpoints.url import parse_store_url

    try:
        url = parse_store_url(database_url)
    except JourneyError as exc:
        _fail(exc)
    if url.kind == "sqlite" and not Path(url.target).exists():
        _fail(
            DatabaseUnavailableError(
                f"no SQLite database at {url.target}: check the path (--database-url); journeys {command} works "
                "on an existing database (journeys serve and journeys demo create one)"
            )
        )


@app.command()
def demo(
    database_url: Annotated[
        str, typer.Option("--database-url", help="store URL: sqlite:///file.db (default), memory://, postgresql://…")
    ] = DEFAULT_STORE_URL,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show the runtime's logs")] = False,
) -> None:
    """Run every journey family offline (structured, session and MVP with the guide, saga, lifecycle, process)."""
    from server.demo import run_demo

    _quiet_logs(verbose)
    _run(run_demo(database_url, Console()))


@app.command()
def serve(
    database_url: Annotated[
        str, typer.Option("--database-url", help="sqlite:///file.db (default, embedded) or postgresql://…")
    ] = DEFAULT_STORE_URL,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to listen on")] = 8123,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="switch API keys off (local development only; loopback hosts only)")
    ] = False,
    allow_insecure: Annotated[
        bool, typer.Option("--allow-insecure", help="allow --no-auth on a host other machines can reach")
    ] = False,
    api_keys: Annotated[
        str | None, typer.Option("--api-keys", help="JSON file of API keys (default: $JOURNEYS_API_KEYS)")
    ] = None,
    auth: Annotated[
        str | None,
        typer.Option(
            "--auth",
            help="module:factory of your own authenticator (server.auth.Authenticator: a JWT or OIDC check), "
            "a factory taking the settings; the API and the dashboard authenticate through it",
        ),
    ] = None,
    distributed: Annotated[
        bool, typer.Option("--distributed", help="queue runs and timers for `journeys worker` (PostgreSQL only)")
    ] = False,
    plugin: Annotated[
        str | None, typer.Option(help="module:function registering agents (embedded mode runs them here)")
    ] = None,
    durability: DurabilityOption = "exit",
    guide_model: GuideModelOption = None,
    max_body_bytes: Annotated[
        int | None, typer.Option(min=1, envvar="JOURNEYS_MAX_BODY_BYTES", help="largest request body (413 past it)")
    ] = None,
    max_json_depth: Annotated[
        int | None, typer.Option(min=1, envvar="JOURNEYS_MAX_JSON_DEPTH", help="deepest JSON nesting (422 past it)")
    ] = None,
    max_string_chars: Annotated[
        int | None,
        typer.Option(min=1, envvar="JOURNEYS_MAX_STRING_CHARS", help="longest JSON string or key (422 past it)"),
    ] = None,
    max_header_bytes: Annotated[
        int | None,
        typer.Option(min=1, envvar="JOURNEYS_MAX_HEADER_BYTES", help="longest request line and headers (431 past it)"),
    ] = None,
    request_timeout: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            envvar="JOURNEYS_REQUEST_TIMEOUT",
            help="seconds a client has to send a whole request, from its connection or first byte (408 past it)",
        ),
    ] = None,
    max_streams: Annotated[
        int,
        typer.Option(
            min=1, envvar="JOURNEYS_MAX_STREAMS", help="event streams one caller may hold open at once (429 past it)"
        ),
    ] = 100,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            envvar="JOURNEYS_CORS_ORIGINS",
            help="a browser origin whose pages may call the API (CORS), repeatable; the variable lists them "
            "separated by spaces; default: none (CORS off)",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show the runtime's logs")] = False,
    retention: RetentionOption = "keep_latest",
    retention_days: RetentionDaysOption = 0.0,
    shutdown_grace: Annotated[
        int,
        typer.Option(
            min=0,
            envvar="JOURNEYS_SHUTDOWN_GRACE_S",
            help="seconds requests still under way may take after a stop signal (a client waiting on a run that "
            "does not end now, say) before they are cut off and the server stops",
        ),
    ] = 10,
    lock_timeout: LockTimeoutOption = LOCK_TIMEOUT_S,
    thread_ttl: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=52_596_000,
            envvar="JOURNEYS_THREAD_TTL",
            help="minutes a thread created without a ttl of its own lives after its last activity, then it is "
            "deleted with its runs and checkpoints (the Agent Server's checkpointer.ttl.default_ttl); default: none",
        ),
    ] = None,
    thread_ttl_strategy: Annotated[
        str,
        typer.Option(
            envvar="JOURNEYS_THREAD_TTL_STRATEGY",
            help="what --thread-ttl does to an expired thread: delete it, or keep_latest (prune it to its latest "
            "checkpoint, as threads.prune does)",
        ),
    ] = "delete",
    thread_ttl_sweep: Annotated[
        float,
        typer.Option(
            min=0,
            envvar="JOURNEYS_THREAD_TTL_SWEEP_MINUTES",
            help="minutes between two sweeps of the threads whose ttl has passed (the Agent Server's "
            "sweep_interval_minutes; 0: none; distributed mode: the workers' --thread-ttl-cron)",
        ),
    ] = 5.0,  # checkpoints.runs.TTL_SWEEP_MINUTES, not imported: --help stays quick
) -> None:
    """Serve the Agent Server API subset (langgraph-sdk) and the journey endpoints over HTTP."""
    import uvicorn

    from checkpoints.runs import ThreadTTL
    from checkpoints.store import check_store_key
    from nodes.telemetry import configure_tracing
    from server.app import create_app
    from server.connections import guarded_protocol
    from server.heap import freeze_startup_heap
    from server.plugins import plugin_registry
    from server.queues.embedded import check_sole_executor
    from server.settings import InputLimits, Settings, load_api_keys, no_auth_warning

    try:
        warning = no_auth_warning(host, no_auth=no_auth, allow_insecure=allow_insecure)
    except JourneyError as exc:
        _fail(exc)
    if warning:
        typer.echo(warning, err=True)
    # Warnings show, as the worker's: an embedded server runs the journeys, so its agents failing, its timers
    # held for want of an agent, the database going away are said here, or nowhere.
    _quiet_logs(verbose, quiet=logging.WARNING)
    try:
        api_keys_by_digest = {} if no_auth else load_api_keys(api_keys)
    except JourneyError as exc:
        _fail(exc)
    if not no_auth and not api_keys_by_digest and auth is None:
        typer.echo(
            "auth is on but no API keys are configured: every request will get 401 "
            "(pass --api-keys, set JOURNEYS_API_KEYS, or --no-auth for local development)",
            err=True,
        )
    configure_tracing()
    try:
        defaults = InputLimits()
        settings = Settings(
            database_url=database_url,
            auth=not no_auth,
            api_keys=api_keys_by_digest,
            authenticator=auth,
            execution="distributed" if distributed else "embedded",
            durability=_durability(durability),
            guide_model=guide_model,
            limits=InputLimits(  # min=1: an unset option (None) takes the default
                max_body_bytes or defaults.max_body_bytes,
                max_json_depth or defaults.max_depth,
                max_string_chars or defaults.max_string_chars,
                max_header_bytes or defaults.max_head_bytes,
                request_timeout or defaults.read_seconds,
            ),
            cors_origins=tuple(cors_origin or ()),
            max_streams_per_caller=max_streams,
            retention=_retention(retention, retention_days),
            lock_timeout=lock_timeout,
            thread_ttl=None if thread_ttl is None else ThreadTTL(thread_ttl, _ttl_strategy(thread_ttl_strategy)),
            thread_ttl_sweep_every=thread_ttl_sweep * 60,
        )
        _run(check_store_key(database_url))  # the key is the database's: say so here, not as a startup traceback
        if not distributed:  # and no other server executes its runs: likewise
            _run(check_sole_executor(database_url))
        served = create_app(settings, runtime_options={"agents": plugin_registry(plugin)})
    except JourneyError as exc:
        _fail(exc)
    freeze_startup_heap()  # a request allocating many objects no longer pays for traversing the startup's
    listening = _listening(host, port)  # before the address is shown: a port taken is said so, not shown then lost
    typer.echo(f"dashboard: http://{host}:{port}/ui", err=True)
    # Bounded connections (server/connections.py): uvicorn's own keep any header and wait for ever for a request.
    # A bounded shutdown: uvicorn otherwise waits for every request under way for ever after a stop signal (its port
    # closed), and a client waiting on a run that cannot end now (no worker, an outage) kept it alive until kill -9.
    config = uvicorn.Config(
        served,
        host=host,
        port=port,
        log_level="info" if verbose else "warning",
        http=guarded_protocol(settings.limits),
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=shutdown_grace,
    )
    server = uvicorn.Server(config)
    try:
        with suppress(KeyboardInterrupt):  # as uvicorn.run: the Ctrl+C it raises again once it has shut down
            server.run(sockets=listening)
    finally:
        for sock in listening:
            sock.close()
    if not server.started:  # its app's startup failed
        raise typer.Exit(3)  # uvicorn.run's status then (its STARTUP_FAILURE)


def _listening(host: str, port: int) -> list[socket.socket]:
    """The sockets ``journeys serve`` listens on, one per address of ``host``, bound as uvicorn (asyncio) binds
    its own; handed to it as sockets, not descriptors: asyncio sets TCP_NODELAY on the connections of internet
    sockets only. A port taken, or an address not this host's, is one line naming it and the option to change."""
    bound: list[socket.socket] = []
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _name, address in dict.fromkeys(found):  # as asyncio: each address once
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart binds while old ones linger
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # its IPv4 address is its own socket
            sock.bind(address)
    except OSError as exc:
        for sock in bound:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            _fail(JourneyError(f"port {port} on {host} is in use (another server?); choose another with --port"))
        _fail(JourneyError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another with --host"))
    return bound


@app.command()
def worker(
    database_url: Annotated[str, typer.Option("--database-url", help="postgresql://… shared with the API")],
    concurrency: Annotated[int, typer.Option(help="runs executed at once")] = 8,
    heartbeat: Annotated[float, typer.Option(help="seconds between heartbeats")] = 2.0,
    stalled_after: Annotated[float, typer.Option(help="seconds without heartbeat before a worker's jobs retry")] = 10.0,
    plugin: Annotated[
        str | None, typer.Option(help="module:function registering this worker's agents on the registry")
    ] = None,
    durability: DurabilityOption = "exit",
    guide_model: GuideModelOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show the runtime's logs")] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=1, max=65535, help="serve this host's Prometheus counters on this port (workers on other hosts)"
        ),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="interface for --metrics-port")] = "127.0.0.1",
    retention: RetentionOption = "keep_latest",
    retention_days: RetentionDaysOption = 0.0,
    retention_cron: Annotated[
        str, typer.Option(envvar="JOURNEYS_RETENTION_CRON", help="when a retention pass runs (cron, seconds optional)")
    ] = "*/10 * * * *",
    thread_ttl_cron: Annotated[
        str,
        typer.Option(
            envvar="JOURNEYS_THREAD_TTL_CRON",
            help="when the threads whose ttl has passed are swept (cron, seconds optional; the Agent Server's "
            "sweep_interval_minutes)",
        ),
    ] = "*/5 * * * *",  # checkpoints.runs.TTL_SWEEP_CRON
    shutdown_grace: Annotated[
        float,
        typer.Option(
            min=0,
            envvar="JOURNEYS_SHUTDOWN_GRACE_S",
            help="seconds the runs under way may take to end after a stop signal; those still under way then "
            "are handed to another worker, which finishes them as after a crash",
        ),
    ] = 10.0,
    lock_timeout: LockTimeoutOption = LOCK_TIMEOUT_S,
) -> None:
    """Take runs, timers and checkpoint retention passes from PostgreSQL (procrastinate) and execute them."""
    from prometheus_client import start_http_server

    from nodes.telemetry import configure_tracing, process_registry
    from server.queues.worker import run_worker

    _quiet_logs(verbose, quiet=logging.WARNING)  # warnings show: the database going away and coming back
    configure_tracing()
    if metrics_port is not None:
        start_http_server(metrics_port, metrics_host, registry=process_registry())
    _run(
        run_worker(
            database_url,
            concurrency=concurrency,
            heartbeat=heartbeat,
            stalled_after=stalled_after,
            plugin=plugin,
            durability=_durability(durability),
            guide_model=guide_model,
            retention=_retention(retention, retention_days),
            retention_cron=_retention_cron(retention_cron),
            thread_ttl_cron=_retention_cron(thread_ttl_cron, "--thread-ttl-cron"),
            shutdown_grace=shutdown_grace,
            lock_timeout=lock_timeout,
        )
    )


@app.command("retention")
def retention_pass(
    database_url: DatabaseOption = DEFAULT_STORE_URL,
    retention: RetentionOption = "keep_latest",
    retention_days: RetentionDaysOption = 0.0,
    threads: Annotated[
        bool,
        typer.Option(
            "--threads",
            help="then sweep the threads whose ttl has passed once, as the server's schedule does (deleted, or "
            "pruned to their latest checkpoint: keep_latest); prints how many as threads_expired",
        ),
    ] = False,
) -> None:
    """Apply the checkpoint retention policy once to the journeys finished since the last pass; prints
    how many were pruned and deleted (their event logs are kept). With --threads, then the thread TTL sweep."""
    from graphs.runtime import JourneyRuntime
    from server.runs.store import RunStore
    from server.thread_ends import ThreadTTLSweep

    policy = _retention(retention, retention_days)
    _existing(database_url, "retention")

    async def run() -> None:
        async with JourneyRuntime.open(database_url, retention=policy) as runtime:
            answer = (await runtime.retention.run()).as_dict()
            if threads:
                store = runtime.store
                answer["threads_expired"] = await ThreadTTLSweep(
                    runtime, RunStore(store.backend, store.clock, store.sealer)
                ).run()
        typer.echo(json.dumps(answer))

    _run_quietly(run())


@app.command()
def rebuild(
    database_url: DatabaseOption = DEFAULT_STORE_URL,
) -> None:
    """Rebuild the views derived from the event log (the instance index, the client lifecycle tables and
    the user-task inbox); prints what it corrected."""
    from checkpoints.rebuild import rebuild_views
    from graphs.runtime import JourneyRuntime

    _existing(database_url, "rebuild")

    async def run() -> None:
        async with JourneyRuntime.open(database_url) as runtime:
            store = runtime.store
            rebuilt, lifecycle, inbox = await rebuild_views(store.backend, store.events, runtime.engine.exclusive)
        typer.echo(f"{rebuilt.instances} instances read, {len(rebuilt.corrected)} corrected")
        for instance_id in rebuilt.corrected:
            typer.echo(f"  {instance_id}")
        if rebuilt.underivable:  # logged before first events recorded their row
            typer.echo(f"{len(rebuilt.underivable)} instances logged before this release left as they are")
        if rebuilt.busy:  # appended to at every read: a later rebuild gets them
            typer.echo(f"{len(rebuilt.busy)} instances changing throughout left as they are; rebuild again later:")
            for instance_id in rebuilt.busy:
                typer.echo(f"  {instance_id}")
        for what, views in (("lifecycle journeys", lifecycle), ("processes' user tasks", inbox)):
            typer.echo(f"{views.instances} {what} read, {len(views.corrected)} views corrected")
            for name in views.corrected:
                typer.echo(f"  {name}")
            if views.underivable:  # tables of journeys logged before their events recorded these rows
                typer.echo(f"{len(views.underivable)} {what}' tables logged before this release left as they are")
            if views.busy:  # appended to at every read: a later rebuild gets them
                typer.echo(f"{len(views.busy)} {what} changing throughout left as they are; rebuild again later:")
                for instance_id in views.busy:
                    typer.echo(f"  {instance_id}")

    _run_quietly(run())


@instances.command("list")
def list_instances(
    database_url: DatabaseOption = DEFAULT_STORE_URL,
    status: Annotated[str | None, typer.Option(help="only journeys in this status: failed, in_progress, …")] = None,
    pattern: Annotated[str | None, typer.Option(help="only journeys of this pattern: saga, process, …")] = None,
    user: Annotated[str | None, typer.Option(help="only this user's (a process instance's business key)")] = None,
    incidents: Annotated[bool, typer.Option("--incidents", help="only journeys with a failed timer")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="at most this many, the newest first")] = 50,
    as_json: JsonOption = False,
) -> None:
    """The newest journeys first, with their pattern, status, user, when their status last changed (updated_at)
    and when they last logged anything (last_event_at: one that moved on, or stands mid-step, shows it), and
    incidents (failed timers a retry re-arms). `--status failed` lists what to retry."""
    from checkpoints.index import InstanceFilter
    from graphs.errors import InvalidInputError
    from graphs.kernel.patterns import get_pattern
    from graphs.runtime import JourneyRuntime
    from server.views.status import INDEX_STATUSES

    _existing(database_url, "instances list")

    async def run() -> None:
        if pattern is not None:
            get_pattern(pattern)  # an unknown one is refused, naming the registered patterns
        if status is not None and status not in INDEX_STATUSES:  # so is a mistyped status, which matched nothing
            raise InvalidInputError(f"no status {status!r}; statuses: {', '.join(INDEX_STATUSES)}", status=status)
        where = InstanceFilter(pattern=pattern, status=status, user_id=user, incidents=incidents)
        async with JourneyRuntime.open(database_url) as runtime:
            # One more than shown: whether more match, which the table and the JSON say (else a list cut at the
            # limit read as every journey there is: 50 failed shown of 300).
            found = await runtime.store.index.list_instances(limit=limit + 1, where=where, newest_first=True)
            more, found = len(found) > limit, found[:limit]
            failed_timers = await runtime.store.index.incidents([i.instance_id for i in found])
            last_events = await runtime.store.index.last_event_at([i.instance_id for i in found])
        rows = [
            {
                "instance_id": i.instance_id,
                "pattern": i.pattern,
                "status": i.status,
                "user_id": i.user_id,
                "updated_at": i.updated_at.isoformat(),
                "last_event_at": (last_events.get(i.instance_id) or i.updated_at).isoformat(),
                "incidents": failed_timers.get(i.instance_id, 0),
            }
            for i in found
        ]
        if as_json:
            typer.echo(json.dumps({"instances": rows, "more": more}))
            return
        _table(rows, empty="no journeys match")
        if more:
            typer.echo(f"the newest {limit} shown; more match (--limit, up to 1000, or narrow the filters)")

    _run_quietly(run())


@instances.command("show")
def show_instance(
    instance_id: Annotated[str, typer.Argument(help="the journey's instance id (`journeys instances list`)")],
    database_url: DatabaseOption = DEFAULT_STORE_URL,
    events: Annotated[int, typer.Option(min=0, max=10_000, help="its last events shown, oldest first")] = 20,
    as_json: JsonOption = False,
) -> None:
    """One journey: its pattern, status, design, user, owner, incidents and its last events (the audit log)."""
    from graphs.errors import JourneyNotFoundError
    from graphs.runtime import JourneyRuntime

    _existing(database_url, "instances show")

    async def run() -> None:
        async with JourneyRuntime.open(database_url) as runtime:
            instance = await runtime.store.index.get_instance(instance_id)
            if instance is None:
                raise JourneyNotFoundError(f"no journey instance {instance_id!r}", instance_id=instance_id)
            log = await runtime.history(instance_id)
            failed_timers = await runtime.store.index.incidents([instance_id])
        shown = {
            "instance_id": instance.instance_id,
            "pattern": instance.pattern,
            "status": instance.status,
            "journey_id": instance.journey_id,
            "user_id": instance.user_id,
            "owner": instance.owner,
            "tenant": instance.tenant,
            "created_at": instance.created_at.isoformat(),
            "updated_at": instance.updated_at.isoformat(),  # its status last changed
            "last_event_at": (log[-1].created_at if log else instance.updated_at).isoformat(),
            "incidents": failed_timers.get(instance_id, 0),
            # What holds it back: agents no process serving it has (register them there, e.g. --plugin).
            "held": instance.held,
        }
        last = log[len(log) - events :] if events else []
        timeline = [
            {
                "seq": e.seq,
                "at": e.created_at.isoformat(),
                "type": e.type,
                "step": e.step,
                "payload": json.dumps(e.payload, ensure_ascii=False, default=str),
            }
            for e in last
        ]
        if as_json:
            typer.echo(json.dumps({**shown, "events": len(log), "last_events": timeline}))
            return
        _table([{"field": name, "value": _shown_value(value)} for name, value in shown.items()])
        typer.echo(f"{len(log)} events; the last {len(timeline)}:")
        _table(timeline, empty="no events")

    _run_quietly(run())


@instances.command("retry")
def retry_instance(
    instance_id: Annotated[str, typer.Argument(help="a failed journey's instance id")],
    database_url: DatabaseOption = DEFAULT_STORE_URL,
    plugin: PluginOption = None,
    by: Annotated[str | None, typer.Option(help="who retries it, for the audit (default: cli:<login>)")] = None,
    wait: Annotated[
        float, typer.Option(min=0.1, help="seconds to wait for the workers' answer, where they run the retry")
    ] = 300.0,
) -> None:
    """Run what a failed journey failed at again: its pattern's own retry (a step, a compensation, a process node
    and its failed timers, a lifecycle's task). Where `journeys worker` processes serve the PostgreSQL database,
    one of them runs it (with its agents) and this waits for how it ended; elsewhere it runs here and now, with
    the plugin's agents. Prints its status, and on stderr where it ran."""
    from checkpoints.url import parse_store_url
    from graphs.runtime import JourneyRuntime
    from server.plugins import plugin_registry
    from server.queues.procrastinate import retry_in_workers

    _existing(database_url, "instances retry")
    registry = plugin_registry(plugin)
    who = by or _operator()

    async def run() -> None:
        async with JourneyRuntime.open(database_url, agents=registry) as runtime:
            handed = None
            if parse_store_url(database_url).kind == "postgres":
                pool = runtime.store.pg_pool
                handed = await retry_in_workers(database_url, instance_id, who, pool=pool, wait=wait)
            if handed is None:
                answered = await runtime.retry(instance_id, by=who)
                ran = "retried in this process: no journeys worker serves this database"
            elif handed.outcome is None:
                answered = await runtime.status(instance_id)
                ran = (
                    f"handed to the workers (job {handed.job_id}), not done within {wait:g} s: it goes on there; "
                    f"journeys instances show {instance_id} tells how it ends"
                )
            elif (error := handed.outcome.get("error")) is not None:
                _fail_as(f"{error['message']} (retried by a worker, job {handed.job_id})", str(error["category"]))
            else:
                answered = await runtime.status(instance_id)
                ran = f"retried by a worker (job {handed.job_id})"
        typer.echo(json.dumps(answered, default=str))
        typer.echo(ran, err=True)

    _run_quietly(run())


@instances.command("run-on")
def run_on_instance(
    instance_id: Annotated[str, typer.Argument(help="the instance id of a journey in progress that nothing runs")],
    database_url: DatabaseOption = DEFAULT_STORE_URL,
    plugin: PluginOption = None,
    wait: Annotated[
        float, typer.Option(min=0.1, help="seconds to wait for the workers to run it on, where they do")
    ] = 300.0,
) -> None:
    """Run on a journey left in progress with nothing running it (its process killed mid-step): its step in flight
    is finished, a first run cut short runs from its first event, a process's answers not yet delivered are
    delivered. One that another process holds (it is running there) is refused, nothing done. Where `journeys
    worker` processes serve the PostgreSQL database one of them runs it on (with its agents) and this waits for how
    it ended; elsewhere it runs here, with the plugin's agents. Prints its status, and on stderr where it ran."""
    from checkpoints.url import parse_store_url
    from graphs.runtime import JourneyRuntime
    from server.plugins import plugin_registry
    from server.queues.base import queue_run_on
    from server.queues.procrastinate import workers_enqueuer, workers_serving
    from server.runs.store import RunStore

    _existing(database_url, "instances run-on")
    registry = plugin_registry(plugin)

    async def run() -> None:
        async with JourneyRuntime.open(database_url, agents=registry) as runtime:
            handed: list[RunRow] = []
            runs = RunStore(runtime.store.backend, runtime.store.clock, runtime.store.sealer)
            if parse_store_url(database_url).kind == "postgres" and await workers_serving(database_url):
                enqueue = workers_enqueuer(database_url)

                async def hand_off(handed_id: str) -> None:
                    instance = await runtime.store.index.get_instance(handed_id)
                    assert instance is not None  # read by run_on just before
                    handed.append(await queue_run_on(runs, instance, enqueue))

                runtime.processes.hand_off = hand_off
            answered = await runtime.run_on(instance_id)
            ran = "run on in this process: no journeys worker serves this database"
            if handed:
                ended = await _ended(runs, handed[0].run_id, wait)
                if ended is None:
                    ran = (
                        f"handed to the workers (run {handed[0].run_id}), not done within {wait:g} s: it goes on "
                        f"there; journeys instances show {instance_id} tells how it ends"
                    )
                elif ended.status == "error" and ended.error is not None:
                    error = ended.error
                    message = f"{error.get('message')} (run on by a worker, run {ended.run_id})"
                    _fail_as(message, str(error.get("category", "failed")))
                else:
                    ran = f"run on by a worker (run {ended.run_id})"
                answered = await runtime.status(instance_id)
        typer.echo(json.dumps(answered, default=str))
        typer.echo(ran, err=True)

    _run_quietly(run())


async def _ended(runs: RunStore, run_id: str, wait: float) -> RunRow | None:
    """The run once it has ended, read every 0.2 s for ``wait`` seconds at most; None if it has not by then."""
    import asyncio

    from server.runs.store import TERMINAL

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        found = await runs.get_run(run_id)
        if found is not None and found.status in TERMINAL:
            return found
        if loop.time() >= deadline:
            return None
        await asyncio.sleep(0.2)


@instances.command("terminate")
def terminate_instance(
    instance_id: Annotated[str, typer.Argument(help="an unfinished journey's instance id")],
    reason: Annotated[str, typer.Option(help="why, kept in its log (required)")],
    database_url: DatabaseOption = DEFAULT_STORE_URL,
) -> None:
    """End an unfinished journey for good where it stands, compensating nothing (Temporal's terminate): its
    tasks, timers and waits are cancelled and its history kept. A run moving it, which the workers or an embedded
    server execute, is stopped first (its step in flight with it), as the API's terminate stops one. Prints its
    status."""
    import functools

    from graphs.runtime import JourneyRuntime
    from server.queues.procrastinate import stop_runs_elsewhere

    _existing(database_url, "instances terminate")

    async def run() -> None:
        async with JourneyRuntime.open(database_url) as runtime:
            runtime.stop_runs = functools.partial(stop_runs_elsewhere, runtime, database_url)
            answered = await runtime.terminate(instance_id, reason)
        typer.echo(json.dumps(answered, default=str))

    _run_quietly(run())


def _shown_value(value: Any) -> str:
    """A field's value in a table: a mapping as JSON, nothing for None."""
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, dict) else str(value)


def _operator() -> str:
    """Who an operator's command acts as, for the audit: ``cli:`` and their login."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container's anonymous uid)
        return "cli"


def _table(rows: list[dict[str, Any]], *, empty: str = "") -> None:
    """``rows`` as a plain table (their keys the columns), or ``empty`` when there are none."""
    from rich.table import Table
    from rich.text import Text

    if not rows:
        typer.echo(empty)
        return
    table = Table(*rows[0], box=None, pad_edge=False)
    for row in rows:  # Text: a value is shown as it is, never read as rich markup ("[red]" in a payload)
        table.add_row(*(Text(_printable("" if value is None else str(value))) for value in row.values()))
    Console(width=200).print(table)


# Control characters as Python writes them in a literal (ESC as \x1b): a stored value (a user id, an event's
# step) is anyone's input, and its terminal escapes printed as they are rewrote the operator's terminal.
_CONTROLS_SHOWN = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}


def _printable(value: str) -> str:
    """``value`` with its control characters written out, so that a table shows it rather than obeys it."""
    return value.translate(_CONTROLS_SHOWN)


@keys.command("new")
def new_key(
    principal: Annotated[str, typer.Option(help="who calls with the key (the user tasks are completed by)")],
    scope: Annotated[
        list[str],
        typer.Option(
            help="a scope to grant, repeatable: read, runs, journeys, tasks, messages, impersonate, metrics, admin"
        ),
    ],
    group: Annotated[list[str] | None, typer.Option(help="a group of the caller, repeatable")] = None,
    tenant: Annotated[
        str | None, typer.Option(help="the tenant whose objects the caller sees and creates (default: the default)")
    ] = None,
    share_with: Annotated[
        str | None, typer.Option(help="a group what the caller creates is shared with (default: none)")
    ] = None,
) -> None:
    """Generate an API key: print it once, and the keys file entry, which holds only its digest."""
    from server.settings import api_key, key_digest

    entry: dict[str, object] = {"principal": principal, "scopes": scope, "groups": group or []}
    entry |= {name: value for name, value in (("tenant", tenant), ("share_with", share_with)) if value is not None}
    try:
        api_key(entry, "the new key")
    except JourneyError as exc:
        _fail(exc)
    key = secrets.token_urlsafe(32)  # 256 random bits: a fast digest is then as good as a slow one
    console = Console()
    console.print("API key (shown only now, store it safely):", style="bold")
    console.print(key, markup=False, highlight=False, soft_wrap=True)
    console.print("Add this entry to the server's keys file (--api-keys or $JOURNEYS_API_KEYS):", style="bold")
    console.print(json.dumps({key_digest(key): entry}), markup=False, highlight=False, soft_wrap=True)


@keys.command("digest")
def digest(
    key: Annotated[str, typer.Option(prompt=True, hide_input=True, help="the key (asked for if not given)")],
) -> None:
    """Print a key's digest: the name a keys file gives it, in place of a plain key."""
    from server.settings import key_digest

    typer.echo(key_digest(key))


@app.command()
def templates() -> None:
    """List the ready process templates, one line each (start one with `journeys new TEMPLATE`)."""
    from rich.table import Table

    from server.scaffold import list_templates

    table = Table("template", "what it does", box=None, pad_edge=False)
    for line in list_templates():
        table.add_row(line.name, line.description)
    Console(width=160).print(table)


@app.command()
def new(
    template: Annotated[str, typer.Argument(help="a template `journeys templates` lists")],
    name: Annotated[str | None, typer.Option(help="the project's name (default: the template's)")] = None,
    directory: Annotated[Path, typer.Option("--dir", help="where to write the files")] = Path("."),
) -> None:
    """Write TEMPLATE as a spec file (NAME.json) and an agents module to edit and run (NAME_agents.py)."""
    from server.scaffold import new_project

    try:
        written = new_project(template, directory, name)
    except JourneyError as error:
        _fail(error)
    for path in written:
        typer.echo(f"wrote {path}")
    typer.echo(f"run it: cd {directory} && python {written[1].name}")
    serve = f"journeys serve --no-auth --plugin {written[1].stem}"
    typer.echo(f"serve it: cd {directory} && {serve}, then POST {written[0].name} to /processes")


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as installed

    typer.echo(installed("journeys"))


def main() -> None:
    """The console script. An argument that is not UTF-8 (bytes of another encoding, which Python keeps as lone
    surrogates) is refused here, once for every command: no store can keep it, nor any filter match it."""
    for argument in sys.argv[1:]:
        try:
            argument.encode()
        except UnicodeEncodeError:
            typer.echo(f"error: argument {argument!r} is not valid UTF-8; give it in UTF-8", err=True)
            raise SystemExit(2) from None
    app()
