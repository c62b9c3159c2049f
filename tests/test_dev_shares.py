"""`dev.py ci` shares the server test modules out among the other interpreters by their recorded durations
(tests/durations.json): the shares must come out about equal, or CI waits on the longer one. `dev.py compat`
runs the store tests there on SQLite, and on PostgreSQL where cancels meet psycopg. The suite's processes cache
the bytecode they compile."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

import dev


def test_modules_not_recorded_yet_are_spread_over_the_shares(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Modules added since durations.json was written all went to one share (at no length, the lightest share
    stayed the lightest): in CI, 3.12 ran 363 tests in 5:26 and 3.13 201 in 2:48."""
    lengths = {"a": 40.0, "b": 30.0, "c": 20.0, "d": 10.0}
    recorded = {f"tests/test_server_{name}.py::test_it": seconds for name, seconds in lengths.items()}
    durations = tmp_path / "durations.json"
    durations.write_text(json.dumps(recorded))
    monkeypatch.setattr(dev, "DURATIONS", durations)
    new = [f"tests/test_server_new_{i}.py" for i in range(6)]
    shares = dev.compat_shares(sorted({test.split("::")[0] for test in recorded} | set(new)), 2)
    assert sorted(path for share in shares for path in share) == sorted({t.split("::")[0] for t in recorded} | set(new))
    assert [len([p for p in share if p in new]) for share in shares] == [3, 3]


def collected(*options: str, modules: Sequence[str] = ("tests/test_server_watch.py",)) -> list[str]:
    """The node ids pytest collects from ``modules`` with ``options``."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly", *options, *modules],
        cwd=dev.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith(tuple(modules))]


# store_url tests and others, durable_url tests, and durable_url tests of a module where cancels meet psycopg
WATCHED = ("tests/test_server_watch.py", "tests/test_server_races.py", "tests/test_server_process_cancel.py")


def test_compat_runs_the_store_tests_on_sqlite_and_on_postgres_where_cancels_meet_psycopg() -> None:
    """`dev.py compat` runs a store_url or durable_url test on SQLite, and on PostgreSQL too in the modules of
    COMPAT_POSTGRES (a cancel landing in psycopg's waits), and every test without either fixture."""
    everything = collected(modules=WATCHED)
    compat = collected(*dev.compat_stores(WATCHED), modules=WATCHED)
    on = {store: [test for test in everything if test.endswith(f"[{store}]")] for store in ("memory", "postgres")}
    assert on["memory"] and all(test.replace("[memory]", "[sqlite]") in everything for test in on["memory"])
    where_cancels_meet = [test for test in on["postgres"] if test.startswith(dev.COMPAT_POSTGRES)]
    assert where_cancels_meet and len(where_cancels_meet) < len(on["postgres"])
    left_out = set(on["memory"]) | set(on["postgres"]) - set(where_cancels_meet)
    assert compat == [test for test in everything if test not in left_out]


def test_the_suites_processes_cache_their_bytecode_though_the_shell_says_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PYTHONDONTWRITEBYTECODE=1 in the shell (as on this machine), every process `dev.py test` and `compat`
    started compiled each module it imported again: 0.6 CPU-s of the project's own per `journeys serve` child,
    and 5 more where uv had installed the venv without bytecode. A process in the suite's environment writes it."""
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    (tmp_path / "imported.py").write_text("ANSWER = 42\n")
    command = [sys.executable, "-c", "import imported; print(imported.ANSWER)"]
    done = subprocess.run(command, cwd=tmp_path, env=dev.pytest_environment(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [p.name.split(".")[0] for p in (tmp_path / "__pycache__").glob("*.pyc")] == ["imported"]


def test_the_suites_http_clients_read_the_certificate_authorities_from_a_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every HTTP client the suite makes builds a TLS context, and one from a bundle file (SSL_CERT_FILE, set by
    this machine's shell, or certifi's) parses it whole: 30-40 ms of CPU, ~10 % of the in-process server tests'
    samples (py-spy). Where the system has a directory of authorities, the suite's processes read that."""
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    environment = dev.pytest_environment()
    if not Path(dev.SYSTEM_CERTIFICATES).is_dir():  # a system without one keeps what its shell says
        assert environment["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-certificates.crt"
        return
    assert "SSL_CERT_FILE" not in environment and environment["SSL_CERT_DIR"] == dev.SYSTEM_CERTIFICATES
