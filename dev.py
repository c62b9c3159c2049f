#!/usr/bin/env python3
"""Bootstrap and run the project with nothing but Python 3.11, 3.12 or 3.13 (standard library only).

Usage:
    python3 dev.py setup               create .venv and install journeys[test] into it
    python3 dev.py demo [args]         ... then run `journeys demo [args]`
    python3 dev.py test [pytest args]  ... then run ruff, mypy and pytest, stopping at the first failure
    python3 dev.py compat [args]       ... then run only the README examples and the server tests
    python3 dev.py ci                  `test` on this interpreter, then `compat` on every other supported
                                       Python found (on PATH or under pyenv), each in its own .venv-3.X:
                                       each runs the README examples and its share of the server tests

The venv is reinstalled only when pyproject.toml changes: the sha256 of pyproject.toml is stamped in
`.venv/.journeys-installed` after a successful install, so later runs start instantly.
Set JOURNEYS_VENV to use another venv directory (relative paths are taken from the repository root).
Venvs are installed with `uv` (pip-installed from PyPI into .venv first): the same packages as pip would
install, resolved and installed in parallel, in a fraction of pip's minutes. JOURNEYS_UV names the uv binary a
venv is installed with (`ci` gives the other interpreters' .venv's); where uv cannot be had or fails, pip
installs the venv instead. `ci` installs the other interpreters' venvs in the background while this
interpreter's suite runs.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PYPROJECT = ROOT / "pyproject.toml"
STAMP_NAME = ".journeys-installed"
SUPPORTED_PYTHONS = ((3, 11), (3, 12), (3, 13))  # as pyproject.toml's requires-python and classifiers say
# What `compat` runs on the other interpreters: the README examples, the notebooks and everything the server
# serves. The schemathesis tests (tests/test_openapi_fuzz.py: the OpenAPI document against the server, mostly
# Hypothesis drawing examples) run once, in the whole suite.
#
# What differs between 3.11, 3.12 and 3.13 for us, and what CI found on them so far: asyncio (3.12 rebuilt
# wait_for on timeout(), which changed how a cancel lands; TaskGroup and timeout semantics), warnings the
# stdlib added under filterwarnings=error (3.12 deprecated sqlite3's default datetime adapter: a store TTL put on
# SQLite was a 500; 3.13 warns of an unclosed sqlite3 connection), typing evaluated when pydantic builds the
# models, and the C extensions' builds (psycopg, pydantic-core, google-re2, pgserver's fork on 3.13). Each of
# these shows the first time a code path runs on the interpreter, not once per volume or per scenario of it. So
# the compat run takes every server module, on the backends whose drivers differ between interpreters
# (sqlite3 is the interpreter's own, psycopg a wheel per interpreter), and leaves out:
COMPAT_SKIPPED = (
    # the quick benchmarks: a minute or two of parking journeys on a server and workers to check that
    # benchmarks/ still runs, with no bound on the figures; every route and process they drive is exercised
    # by the other server tests;
    "tests/test_server_benchmark.py",
    # the hostile fuzz pass: the input guard's refusals (deep nesting, lone surrogates, NaN, long identifiers,
    # bodies over the limit) at volume, several hundred of them with megabyte strings, against a probe's
    # latency; test_server_input_limits makes each kind of refusal on each backend on every interpreter;
    "tests/test_server_hostile.py",
    # 200 journeys through repeated SIGKILLs of a worker: what makes them finish is the database's (run
    # leases, procrastinate's stalled jobs), the same SQL on any interpreter; a worker and a server started,
    # stopped and taken over are in test_server_shutdown, _embedded_executor and _database_outage.
    "tests/test_server_crash.py",
)
# ... and of the store tests (store_url and durable_url, `--stores`/`--stores-in`, tests/conftest.py) runs each
# on SQLite, and on PostgreSQL only where psycopg and asyncio's cancels meet. The in-memory backend is plain dicts
# and asyncio primitives, every route and executor path of theirs run on SQLite by the same tests (12 % of the
# server tests' recorded seconds; the hostile pass and the crash test are another 11 %). SQLite is the
# interpreter's own sqlite3 (3.12's datetime adapter warning, 3.13's unclosed-connection one: both were CI
# failures on SQLite), so every server test runs on it. PostgreSQL's SQL is the same on any interpreter; what is
# the interpreter's there is psycopg's wheel (its adapters, which the modules below drive as much as the others)
# and its waits under asyncio: a cancel landing in a pool's or a lock's wait (3.11's wait_for dropped one as its
# wait completed; 3.12 rebuilt wait_for on timeout()). So the modules that cancel runs, cut or time out their
# waits on a database, or hold its connections through long waits run on PostgreSQL too (the modules that take
# postgres_url alone, _database_outage, _connections, _shutdown among them, always do); the others' PostgreSQL
# cases were 32 % of the compat run's recorded seconds.
COMPAT_STORES = "sqlite"
COMPAT_POSTGRES = (
    "tests/test_server_cancel_races.py",
    "tests/test_server_cancelled_branches.py",
    "tests/test_server_cancelled_flows.py",
    "tests/test_server_cancelled_steps.py",
    "tests/test_server_disconnect.py",
    "tests/test_server_embedded_executor.py",
    "tests/test_server_lock_timeout.py",
    "tests/test_server_process_cancel.py",
    "tests/test_server_runs_wait.py",
    "tests/test_server_status_while_busy.py",
    "tests/test_server_terminate.py",
    "tests/test_server_wait_keepalive.py",
)
COMPAT_TESTS = (
    "tests/test_docs.py",
    "tests/test_notebooks.py",
    "tests/test_package_hygiene.py",
    "tests/test_server_*.py",
)
# `ci` shares the server test modules and the notebooks out among the other interpreters
# (JOURNEYS_COMPAT_SHARE="i/n"), balanced by their recorded durations: 3.12 and 3.13 both carry the changes since
# 3.11 that touch us (asyncio, typing, the C extensions' builds), so every server test and notebook runs on a
# newer Python once and CI stays within its budget. Each interpreter runs every example of the README and docs/
# (tests/test_docs.py). `python3 dev.py compat` alone runs them all.
# test_package_hygiene imports every module of our packages (seconds): what a newer interpreter's typing or
# pydantic refuses at import, also in a module no server test imports, fails there.
COMPAT_SHARED = ("tests/test_docs.py", "tests/test_package_hygiene.py")
DURATIONS = ROOT / "tests" / "durations.json"
PYTEST_NO_TESTS_COLLECTED = 5
# Three xdist workers on two cores: the tests mostly wait on databases and child processes (two workers kept
# the cores about 53 % busy). A later `-n` in the arguments overrides.
XDIST_WORKERS = 3


def log(message: str) -> None:
    print(f"[dev.py] {message}", file=sys.stderr, flush=True)


def venv_dir() -> Path:
    return ROOT / (os.environ.get("JOURNEYS_VENV") or ".venv")  # an absolute override replaces ROOT


def venv_bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


def run(args: Sequence[str | Path], env: dict[str, str] | None = None) -> int:
    """Run a command from the repository root (in ``env``, else this environment) and return its exit code."""
    return subprocess.run([str(arg) for arg in args], cwd=ROOT, env=env, check=False).returncode


SYSTEM_CERTIFICATES = "/etc/ssl/certs"  # Debian's (ca-certificates): one file per authority, hashed


def pytest_environment() -> dict[str, str]:
    """This environment, less PYTHONDONTWRITEBYTECODE: the suite starts hundreds of Python processes (xdist
    workers, `journeys serve` and `worker` children, CLI commands), each importing the project and its
    dependencies. With the variable set (this machine's shells set it) none of them could cache bytecode, so each
    compiled every module it imported again: the project's own cost a child 0.6 CPU-s of its ~4, and a venv uv
    installed (uv compiles nothing at install, pip does) 5 more, on the 3.12 and 3.13 shares.

    And the system's certificate authorities as a directory (SSL_CERT_DIR), not a bundle file (SSL_CERT_FILE, or
    certifi's when unset), where the system has one: every HTTP client the suite makes (thousands: each test's
    langgraph-sdk client, each poll of a starting server) builds a TLS context, and a bundle is parsed whole each
    time (30-40 ms of CPU), a directory read only for a certificate asked for (~5 ms); the suite makes no TLS
    connection (it runs offline), and trusts the same authorities."""
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    if Path(SYSTEM_CERTIFICATES).is_dir():
        environment.pop("SSL_CERT_FILE", None)
        environment["SSL_CERT_DIR"] = SYSTEM_CERTIFICATES
    return environment


def check(args: Sequence[str | Path], what: str) -> None:
    """Run a command; exit with its code and a message if it fails."""
    if (code := run(args)) != 0:
        log(f"{what} failed (exit code {code})")
        sys.exit(code)


def version_name(version: Sequence[int]) -> str:
    return ".".join(map(str, version))


def supported(version: Sequence[int]) -> bool:
    return tuple(version[:2]) in SUPPORTED_PYTHONS


def ensure_venv() -> Path:
    """Create the venv if missing and (re)install the project when pyproject.toml changed."""
    if not supported(sys.version_info[:2]):
        names = ", ".join(version_name(v) for v in SUPPORTED_PYTHONS)
        found = version_name(sys.version_info[:3])
        log(f"journeys needs Python {names}, but this is Python {found} ({sys.executable}).")
        log("Run it with a supported interpreter, e.g. `python3.12 dev.py ...`.")
        sys.exit(2)

    venv = venv_dir()
    python = venv_bin(venv, "python")
    stamp = venv / STAMP_NAME
    digest = hashlib.sha256(PYPROJECT.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return venv

    uv = os.environ.get("JOURNEYS_UV")
    if not uv and not python.exists():
        log(f"creating virtualenv {venv}")
        check([sys.executable, "-m", "venv", venv], "creating the virtualenv")
    # uv installs the same packages as pip (the same versions, from the same PyPI) in a fraction of its time:
    # ~25 s against pip's ~6 minutes for journeys[test] on two loaded cores, which every fresh CI clone paid.
    uv = uv or ensure_uv(venv)
    if uv and install_with_uv(uv, venv, python):
        stamp.write_text(digest + "\n")
        log("virtualenv ready (uv)")
        return venv
    if not python.exists():
        log(f"creating virtualenv {venv}")
        check([sys.executable, "-m", "venv", venv], "creating the virtualenv")
    log("installing journeys[test] into the virtualenv with pip (the first time takes a few minutes)")
    pip: list[str | Path] = [python, "-m", "pip", "--disable-pip-version-check"]
    check([*pip, "install", "--quiet", "--upgrade", "pip"], "upgrading pip")
    check([*pip, "install", "--quiet", "-e", ".[test]"], "pip install -e '.[test]'")
    stamp.write_text(digest + "\n")
    log("virtualenv ready")
    return venv


def install_with_uv(uv: str, venv: Path, python: Path) -> bool:
    """Create ``venv`` for this interpreter and install journeys[test] into it with uv; False (and the
    venv left to pip) if uv fails."""
    log(f"installing journeys[test] into {venv} with uv")
    made = python.exists() or run([uv, "venv", "--quiet", "--seed", "--python", sys.executable, venv]) == 0
    if made and run([uv, "pip", "install", "--quiet", "--python", python, "-e", ".[test]"]) == 0:
        return True
    log("uv could not install the virtualenv: pip installs it instead")
    return False


def ensure_uv(venv: Path) -> str | None:
    """uv in ``venv`` (pip-installed there from PyPI the first time); None if it cannot be had."""
    uv = venv_bin(venv, "uv")
    if not uv.exists():
        python: str | Path = venv_bin(venv, "python")
        if run([python, "-m", "pip", "--disable-pip-version-check", "install", "--quiet", "uv"]) != 0:
            log("could not install uv: the venvs are installed with pip")
            return None
    return str(uv)


def demo(venv: Path, args: Sequence[str]) -> None:
    journeys = venv_bin(venv, "journeys")
    if not journeys.exists():
        log(f"{journeys} is missing: is the [project.scripts] entry installed? Try `python3 dev.py setup`.")
        sys.exit(1)
    sys.stderr.flush()
    os.chdir(ROOT)
    os.execv(journeys, [str(journeys), "demo", *args])


def test(venv: Path, pytest_args: Sequence[str]) -> None:
    log("ruff check .")
    check([venv_bin(venv, "ruff"), "check", "."], "ruff")
    log("mypy")
    check([venv_bin(venv, "mypy")], "mypy")
    log("pytest " + " ".join(pytest_args))
    pytest: list[str | Path] = [venv_bin(venv, "python"), "-m", "pytest", "-n", str(XDIST_WORKERS)]
    code = run([*pytest, *pytest_args], pytest_environment())
    if code == PYTEST_NO_TESTS_COLLECTED:
        log("pytest collected no tests: treating that as a failure")
        sys.exit(code)
    if code != 0:
        log(f"pytest failed (exit code {code})")
        sys.exit(code)
    log("all checks passed")


def compat(venv: Path, pytest_args: Sequence[str]) -> None:
    """The README examples and the server tests (this interpreter's share of them, in `ci`), here."""
    paths = sorted(
        {str(Path(p).relative_to(ROOT)) for pattern in COMPAT_TESTS for p in glob.glob(str(ROOT / pattern))}
        - set(COMPAT_SKIPPED)
    )
    share = os.environ.get("JOURNEYS_COMPAT_SHARE", "1/1")
    index, count = (int(part) for part in share.split("/"))
    shared = [p for p in paths if p in COMPAT_SHARED]
    paths = shared + compat_shares([p for p in paths if p not in COMPAT_SHARED], count)[index - 1]
    what = "the server tests" if count == 1 else f"share {share} of the server tests"
    log(f"pytest on Python {version_name(sys.version_info[:3])}: the README examples and {what}")
    python: str | Path = venv_bin(venv, "python")
    pytest = [python, "-m", "pytest", "-n", str(XDIST_WORKERS), *compat_stores(paths)]
    code = run([*pytest, *paths, *pytest_args], pytest_environment())
    if code != 0:
        log(f"pytest failed on Python {version_name(sys.version_info[:2])} (exit code {code})")
        sys.exit(code)


def compat_stores(paths: Sequence[str]) -> list[str]:
    """The pytest options that run the store tests of ``paths`` on COMPAT_STORES, and on PostgreSQL too in the
    modules of COMPAT_POSTGRES."""
    both = [f"--stores-in={path}={COMPAT_STORES},postgres" for path in paths if path in COMPAT_POSTGRES]
    return [f"--stores={COMPAT_STORES}", *both]


def compat_shares(paths: Sequence[str], count: int) -> list[list[str]]:
    """``paths`` (test modules) in ``count`` shares of about equal recorded duration: the longest first, each
    to the share with the least so far. The same on every interpreter: sorted, and from the one file."""
    try:
        recorded: dict[str, float] = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        recorded = {}
    length = {
        p: sum(t for test, t in recorded.items() if test.split("::")[0] == p and compat_runs(test)) for p in paths
    }
    # A module not recorded yet counts as an average one: at no length, every such module went to the same
    # share (the lightest stayed the lightest), which then ran twice as long as the other.
    known = [seconds for seconds in length.values() if seconds > 0]
    average = sum(known) / len(known) if known else 1.0
    length = {p: seconds or average for p, seconds in length.items()}
    shares: list[list[str]] = [[] for _ in range(count)]
    totals = [0.0] * count
    for path in sorted(paths, key=lambda p: (-length[p], p)):
        lightest = totals.index(min(totals))
        shares[lightest].append(path)
        totals[lightest] += length[path]
    return [sorted(share) for share in shares]


def compat_runs(test: str) -> bool:
    """Whether `compat` runs the test of node id ``test``: no store its module's tests are not run on there among
    its parameters (as in ``test_x[postgres-inbox]``; the recorded seconds of those would unbalance the shares)."""
    path, _, rest = test.partition("::")
    stores = set(COMPAT_STORES.split(",")) | ({"postgres"} if path in COMPAT_POSTGRES else set())
    parameters = set(rest.partition("[")[2].rstrip("]").split("-"))
    return not parameters & ({"memory", "sqlite", "postgres"} - stores)


def other_interpreters() -> dict[str, str]:
    """The supported Pythons other than this one that this machine has: on PATH (python3.12) or under
    pyenv's versions directory, by version name."""
    found: dict[str, str] = {}
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    for version in SUPPORTED_PYTHONS:
        name = version_name(version)
        if version == sys.version_info[:2]:
            continue
        candidates = [shutil.which(f"python{name}")]
        candidates += sorted(glob.glob(f"{pyenv_root}/versions/{name}.*/bin/python{name}"), reverse=True)
        for candidate in candidates:
            if candidate and interpreter_version(candidate) == version:
                found[name] = candidate
                break
    return found


def interpreter_version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    return int(out[0]), int(out[1])


def ci(venv: Path) -> None:
    """What `.ci/run` runs: the whole suite here, and the compatibility subset on every other Python found.

    The other interpreters' venvs are installed while the suite runs (one after the other, in the background):
    installing is network- and disk-bound, the suite CPU-bound, so the installs cost next to no wall time."""
    others = other_interpreters()
    uv = ensure_uv(venv) if others else None
    installs = BackgroundInstalls(others, uv)
    try:
        test(venv, [])
    except BaseException:  # the suite failed: no install is left running behind CI
        installs.stop()
        raise
    covered = [f"{version_name(sys.version_info[:2])} (the whole suite)"]
    for number, (name, python) in enumerate(others.items(), start=1):
        installs.wait(name)
        log(f"Python {name}: {python}")
        command = [python, str(ROOT / "dev.py"), "compat"]
        env = {**compat_env(name, uv), "JOURNEYS_COMPAT_SHARE": f"{number}/{len(others)}"}
        code = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
        if code != 0:
            log(f"Python {name} failed (exit code {code})")
            sys.exit(code)
        covered.append(f"{name} (README examples and share {number}/{len(others)} of the server tests)")
    installs.output.unlink(missing_ok=True)
    log("CI covered Python " + ", ".join(covered))


def compat_env(name: str, uv: str | None) -> dict[str, str]:
    """The environment of Python ``name``'s `dev.py`: its own venv, installed with ``uv`` when there is one."""
    return {**os.environ, "JOURNEYS_VENV": f".venv-{name}", **({"JOURNEYS_UV": uv} if uv else {})}


class BackgroundInstalls:
    """`dev.py setup` for each other interpreter, one after the other in a background thread (two editable
    builds at once would write the same egg-info). Their output goes to a temporary file, shown on failure."""

    def __init__(self, interpreters: dict[str, str], uv: str | None) -> None:
        self.done = {name: threading.Event() for name in interpreters}
        self.codes: dict[str, int] = {}
        self.output = Path(tempfile.mkstemp(prefix="journeys-venvs-", suffix=".log")[1])
        self.current: subprocess.Popen[bytes] | None = None
        self.stopped = False
        if interpreters:
            log(f"installing the venvs of Python {', '.join(interpreters)} in the background ({self.output})")
        threading.Thread(target=self._install, args=(interpreters, uv), daemon=True).start()

    def _install(self, interpreters: dict[str, str], uv: str | None) -> None:
        with self.output.open("ab") as sink:
            for name, python in interpreters.items():
                if not self.stopped:
                    setup = [python, str(ROOT / "dev.py"), "setup"]
                    self.current = subprocess.Popen(setup, cwd=ROOT, env=compat_env(name, uv), stdout=sink, stderr=sink)
                    self.codes[name] = self.current.wait()
                self.done[name].set()

    def wait(self, name: str) -> None:
        """Block until Python ``name``'s venv is installed; exit with the install's output if it failed."""
        self.done[name].wait()
        if (code := self.codes.get(name, 1)) != 0:
            sys.stderr.write(self.output.read_text(errors="replace"))
            log(f"installing the Python {name} venv failed (exit code {code})")
            sys.exit(code)

    def stop(self) -> None:
        self.stopped = True
        if self.current is not None and self.current.poll() is None:
            self.current.terminate()


def main(argv: Sequence[str]) -> None:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    if command in {"-h", "--help", "help"}:
        print(__doc__)
        return
    if command not in {"setup", "demo", "test", "compat", "ci"}:
        print(__doc__, file=sys.stderr)
        sys.exit(2)

    venv = ensure_venv()
    if command == "demo":
        demo(venv, args)
    elif command == "test":
        test(venv, args)
    elif command == "compat":
        compat(venv, args)
    elif command == "ci":
        ci(venv)


if __name__ == "__main__":
    main(sys.argv[1:])
