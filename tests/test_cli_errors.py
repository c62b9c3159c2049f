"""A database that is not there, or a URL a command cannot use, is one line saying what to check: from the
``journeys`` commands as a user types them (real processes, exit status 1 or 2, no traceback, no password),
and as a typed error from ``JourneyRuntime.open`` in a notebook."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from checkpoints.errors import DatabaseUnavailableError, UnsupportedStoreURLError
from graphs import JourneyRuntime
from tests.forked import run_journeys
from tests.server_support import free_port

ROOT = Path(__file__).resolve().parent.parent


def journeys(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`journeys ARGS` run from ``cwd`` in a process of its own (forked from the forkserver, tests/forked.py)."""
    return run_journeys(list(args), cwd=cwd)


CASES = ("nothing listens there", "no such database", "a SQLite file under a file", "a file that is not SQLite's")


def refused_databases(postgres_url: str, tmp_path: Path) -> dict[str, tuple[str, str]]:
    """URLs that name no usable database, each with what its message must say."""
    server = urlsplit(postgres_url)
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "notes.txt").write_text("not a database, and it must stay as it is\n" * 10)
    return {
        "nothing listens there": (
            f"postgresql://journeys:s3cret-pw@127.0.0.1:{free_port()}/app",
            "Connection refused",
        ),
        "no such database": (
            server._replace(path="/no_such_database_here").geturl(),
            'database "no_such_database_here" does not exist',
        ),
        "a SQLite file under a file": (f"sqlite:///{tmp_path / 'a-file' / 'journeys.db'}", "a-file"),
        "a file that is not SQLite's": (f"sqlite:///{tmp_path / 'notes.txt'}", "file is not a database"),
    }


# serve meets every case; the other commands open the store the same way (JourneyRuntime.open), one case each.
COMMANDS = [
    *(("serve --no-auth", case) for case in CASES),
    ("retention", "no such database"),
    ("rebuild", "a file that is not SQLite's"),
    ("demo", "nothing listens there"),
]


@pytest.mark.parametrize(("command", "case"), COMMANDS)
def test_a_command_on_a_database_it_cannot_reach_says_so_in_one_line(
    command: str, case: str, postgres_url: str, tmp_path: Path
) -> None:
    url, reason = refused_databases(postgres_url, tmp_path)[case]
    done = journeys(*command.split(), "--database-url", url, cwd=tmp_path)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "╭" not in done.stderr, done.stderr
    [error] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: cannot reach the database ") and reason in error, error
    assert "--database-url" in error, error
    assert "s3cret-pw" not in done.stderr + done.stdout, done.stderr
    assert (tmp_path / "notes.txt").read_text().startswith("not a database, and it must stay as it is")


def test_a_worker_on_a_database_it_cannot_reach_says_so_in_one_line(tmp_path: Path) -> None:
    url = f"postgresql://journeys:s3cret-pw@127.0.0.1:{free_port()}/app"
    done = journeys("worker", "--database-url", url, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: cannot reach the database postgresql://journeys:***@127.0.0.1:"), done.stderr
    assert "s3cret-pw" not in done.stderr


@pytest.mark.parametrize("command", ["worker", "serve --no-auth --distributed"])
def test_distributed_execution_on_sqlite_is_refused_before_it_starts(command: str, tmp_path: Path) -> None:
    done = journeys(*command.split(), "--database-url", f"sqlite:///{tmp_path / 'j.db'}", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    [error] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "needs a postgresql:// database URL" in error, error
    assert not (tmp_path / "j.db").exists()


@pytest.mark.parametrize("option", [["serve", "--no-auth", "--port", "99999"], ["worker", "--metrics-port", "0"]])
def test_a_port_out_of_range_is_a_usage_error(option: list[str], tmp_path: Path) -> None:
    done = journeys(*option, "--database-url", "postgresql://nobody@127.0.0.1:1/x", cwd=tmp_path)
    assert done.returncode == 2 and "port" in done.stderr, done.stderr


async def test_a_runtime_opened_on_a_database_it_cannot_reach_raises_a_typed_error(
    postgres_url: str, tmp_path: Path
) -> None:
    for case, (url, reason) in refused_databases(postgres_url, tmp_path).items():
        with pytest.raises(DatabaseUnavailableError, match="cannot reach the database") as raised:
            async with JourneyRuntime.open(url):
                pass
        assert reason in str(raised.value) and "s3cret-pw" not in str(raised.value), case
        assert raised.value.category == "failed"


def test_distributed_settings_refuse_a_store_workers_cannot_share() -> None:
    from server.settings import Settings

    with pytest.raises(UnsupportedStoreURLError, match="needs a postgresql://"):
        Settings(database_url="sqlite:///journeys.db", execution="distributed")


JOURNEYS = Path(sys.executable).with_name("journeys")  # the console script, as a user runs it


def test_a_plugin_in_the_current_directory_is_found_and_a_missing_one_is_one_line(tmp_path: Path) -> None:
    """`journeys serve --plugin my_agents:register`, run from the directory holding my_agents.py, failed with
    a page of rich traceback ending in ModuleNotFoundError: the console script does not put the current
    directory on the path (python -m and uvicorn do). A module there is now found; a module found nowhere,
    or a function it lacks, is one line saying where it looked and what to do (exit status 2)."""
    (tmp_path / "my_agents.py").write_text(
        "def register(registry):\n    registry.register('mine', lambda request: {'ok': True})\n"
    )
    database = f"sqlite:///{tmp_path}/journeys.db"
    port = free_port()
    serve = [str(JOURNEYS), "serve", "--no-auth", "--database-url", database, "--port", str(port)]
    for plugin, says in (
        ("not_there_agents:register", "no module named 'not_there_agents'"),
        ("my_agents:missing", "has no function 'missing'"),
    ):
        refused = subprocess.run(
            [*serve, "--plugin", plugin], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )
        assert refused.returncode == 2, refused.stderr
        assert "Traceback" not in refused.stderr and says in refused.stderr, refused.stderr
        assert refused.stderr.splitlines()[-1].startswith("error: --plugin"), refused.stderr
    server = subprocess.Popen(
        [*serve, "--plugin", "my_agents:register"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=2) as http:  # one for every poll: a client builds a TLS context, tens of ms of CPU
            while True:
                assert server.poll() is None, server.communicate()[1]
                try:
                    if http.get(f"http://127.0.0.1:{port}/ok").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the server with the plugin never answered"
                time.sleep(0.2)
            # A second server on its port (its own database) printed the dashboard's address, then uvicorn's
            # "[Errno 98] ... address already in use": it now binds first, and says which port and what to do.
            other = [*serve[:4], f"sqlite:///{tmp_path}/other.db", *serve[5:]]
            taken = subprocess.run(other, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
            assert taken.returncode == 1, taken.stderr
            assert taken.stderr.splitlines()[-1] == (
                f"error: port {port} on 127.0.0.1 is in use (another server?); choose another with --port"
            ), taken.stderr
            assert "dashboard" not in taken.stderr and "Traceback" not in taken.stderr, taken.stderr
            assert http.get(f"http://127.0.0.1:{port}/ok").status_code == 200  # the first one serves on
    finally:
        server.terminate()
        server.communicate(timeout=30)


@pytest.mark.parametrize("command", ["rebuild", "retention"])
def test_a_maintenance_command_on_a_mistyped_sqlite_path_creates_nothing(command: str, tmp_path: Path) -> None:
    """`journeys rebuild --database-url sqlite:///jorneys.db` (a typo), or in a directory without the
    database, created an empty database there (and the directories of its path) and printed "0 instances
    read", as if it had rebuilt the operator's. It now says there is no database at that path (exit 1)."""
    typo = tmp_path / "no-such-dir" / "jorneys.db"
    ran = journeys(command, "--database-url", f"sqlite:///{typo}", cwd=tmp_path)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert ran.stderr.strip() == (
        f"error: no SQLite database at {typo}: check the path (--database-url); journeys {command} works on an "
        "existing database (journeys serve and journeys demo create one)"
    )
    assert not (tmp_path / "no-such-dir").exists()
    default = journeys(command, cwd=tmp_path)  # the default, sqlite:///journeys.db, where there is none
    assert default.returncode == 1 and "no SQLite database at journeys.db" in default.stderr, default.stderr
    assert not (tmp_path / "journeys.db").exists()


MALFORMED_URLS = {
    "an unclosed IPv6 host": "postgresql://journeys:s3cret-pw@[::1/app",
    "a port that is no number": "postgresql://journeys:s3cret-pw@localhost:pg/app",
    "a port out of range": "postgresql://journeys:s3cret-pw@localhost:99999/app",
}


@pytest.mark.parametrize("command", ["instances list", "serve --no-auth"])
@pytest.mark.parametrize("url", MALFORMED_URLS.values(), ids=MALFORMED_URLS.keys())
def test_a_database_url_that_does_not_parse_is_one_line(command: str, url: str, tmp_path: Path) -> None:
    """`--database-url postgresql://…@[::1/app` (or a port "pg", or 99999) ended in a page of rich traceback:
    urllib's ValueError ("Invalid IPv6 URL", "Port out of range 0-65535"). It is refused as a URL the store cannot
    use, saying why, without its password (exit status 2)."""
    done = journeys(*command.split(), "--database-url", url, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "╭" not in done.stderr, done.stderr
    [error] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "is not a URL the store can use" in error and "--database-url" in error, error
    assert "s3cret-pw" not in done.stderr + done.stdout, done.stderr


async def opened_once(url: str) -> None:
    async with JourneyRuntime.open(url):
        pass


def test_an_argument_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    """An argument holding bytes that are not UTF-8 (a file name or a user id in another encoding) reached the
    commands as a lone surrogate, and `journeys instances list --user` ended in a page of rich traceback (a
    UnicodeEncodeError where the filter met the database). It is refused as a usage error naming the argument."""
    database = tmp_path / "journeys.db"
    asyncio.run(opened_once(f"sqlite:///{database}"))
    command = [str(JOURNEYS).encode(), b"instances", b"list", b"--database-url", f"sqlite:///{database}".encode()]
    done = subprocess.run(
        [*command, b"--user", b"ana\xff"], cwd=tmp_path, capture_output=True, timeout=120, check=False
    )
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 2, stderr
    assert "Traceback" not in stderr and "╭" not in stderr, stderr
    assert stderr.strip() == "error: argument 'ana\\udcff' is not valid UTF-8; give it in UTF-8", stderr
