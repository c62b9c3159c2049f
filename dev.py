#!/usr/bin/env python3
"""Bootstrap and run the project with nothing but Python 3.11 (standard library only).

Usage:
    python3 dev.py setup               create .venv and install journeys[test] into it
    python3 dev.py demo [args]         ... then run `journeys demo [args]`
    python3 dev.py test [pytest args]  ... then run ruff, mypy and pytest, stopping at the first failure

The venv is reinstalled only when pyproject.toml changes: the sha256 of pyproject.toml is stamped in
`.venv/.journeys-installed` after a successful install, so later runs start instantly.
Set JOURNEYS_VENV to use another venv directory (relative paths are taken from the repository root).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PYPROJECT = ROOT / "pyproject.toml"
STAMP_NAME = ".journeys-installed"
REQUIRED_PYTHON = (3, 11)
PYTEST_NO_TESTS_COLLECTED = 5


def log(message: str) -> None:
    print(f"[dev.py] {message}", file=sys.stderr, flush=True)


def venv_dir() -> Path:
    return ROOT / (os.environ.get("JOURNEYS_VENV") or ".venv")  # an absolute override replaces ROOT


def venv_bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


def run(args: Sequence[str | Path]) -> int:
    """Run a command from the repository root and return its exit code."""
    return subprocess.run([str(arg) for arg in args], cwd=ROOT, check=False).returncode


def check(args: Sequence[str | Path], what: str) -> None:
    """Run a command; exit with its code and a message if it fails."""
    if (code := run(args)) != 0:
        log(f"{what} failed (exit code {code})")
        sys.exit(code)


def ensure_venv() -> Path:
    """Create the venv if missing and (re)install the project when pyproject.toml changed."""
    if sys.version_info[:2] != REQUIRED_PYTHON:
        found = ".".join(map(str, sys.version_info[:3]))
        log(f"journeys needs Python 3.11, but this is Python {found} ({sys.executable}).")
        log("Run it with a Python 3.11 interpreter, e.g. `python3.11 dev.py ...`.")
        sys.exit(2)

    venv = venv_dir()
    python = venv_bin(venv, "python")
    if not python.exists():
        log(f"creating virtualenv {venv}")
        check([sys.executable, "-m", "venv", venv], "creating the virtualenv")

    stamp = venv / STAMP_NAME
    digest = hashlib.sha256(PYPROJECT.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        return venv

    log("installing journeys[test] into the virtualenv (the first time takes a few minutes)")
    pip: list[str | Path] = [python, "-m", "pip", "--disable-pip-version-check"]
    check([*pip, "install", "--quiet", "--upgrade", "pip"], "upgrading pip")
    check([*pip, "install", "--quiet", "-e", ".[test]"], "pip install -e '.[test]'")
    stamp.write_text(digest + "\n")
    log("virtualenv ready")
    return venv


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
    # Two workers: the suite is mostly waiting on databases and child processes. A later `-n` overrides.
    code = run([venv_bin(venv, "python"), "-m", "pytest", "-n", "2", *pytest_args])
    if code == PYTEST_NO_TESTS_COLLECTED:
        log("pytest collected no tests: treating that as a failure")
        sys.exit(code)
    if code != 0:
        log(f"pytest failed (exit code {code})")
        sys.exit(code)
    log("all checks passed")


def main(argv: Sequence[str]) -> None:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    if command in {"-h", "--help", "help"}:
        print(__doc__)
        return
    if command not in {"setup", "demo", "test"}:
        print(__doc__, file=sys.stderr)
        sys.exit(2)

    venv = ensure_venv()
    if command == "demo":
        demo(venv, args)
    elif command == "test":
        test(venv, args)


if __name__ == "__main__":
    main(sys.argv[1:])
