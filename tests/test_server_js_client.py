"""The server driven from Node by the official JS client, ``@langchain/langgraph-sdk``, over real HTTP.

The npm package is installed by this test into a cache outside the repository
(``$JOURNEYS_JS_CACHE``, default ``~/.cache/journeys-js``), never committed; Node 20 or newer runs it."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from server.app import create_app
from server.settings import Settings
from tests.server_support import serving

pytestmark = pytest.mark.slow
SDK = "@langchain/langgraph-sdk@1.15.0"
SCRIPT = Path(__file__).resolve().parent / "js" / "drive_server.mjs"


def js_client_installed(node: str, cache: Path) -> bool:
    """Whether ``cache`` holds the pinned client, whole: its version, and Node can import it."""
    marker = cache / "node_modules" / "@langchain" / "langgraph-sdk" / "package.json"
    if not marker.exists() or json.loads(marker.read_text())["version"] != SDK.rsplit("@", 1)[1]:
        return False
    probe = [node, "--input-type=module", "-e", "await import('@langchain/langgraph-sdk')"]
    return subprocess.run(probe, cwd=cache, capture_output=True, timeout=60, check=False).returncode == 0


@pytest.fixture(scope="session")
def js_client() -> Path:
    """A directory whose node_modules holds the JS client (installed once, then reused)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("the JS client test needs Node 20+ and npm on the PATH", pytrace=False)
    cache = Path(os.environ.get("JOURNEYS_JS_CACHE") or Path.home() / ".cache" / "journeys-js")
    cache.mkdir(parents=True, exist_ok=True)
    # One install at a time: xdist workers (and other checkouts' runs) share the cache, and two npm installs
    # into one node_modules leave it half-written (a package whose dependencies are missing).
    with (cache / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not js_client_installed(node, cache):
            shutil.rmtree(cache / "node_modules", ignore_errors=True)
            install = [npm, "install", "--no-audit", "--no-fund", "--silent", SDK]
            subprocess.run(install, cwd=cache, check=True, timeout=300)
    # Node resolves packages from the script's directory upwards: the script runs from the cache.
    shutil.copy(SCRIPT, cache / SCRIPT.name)
    return cache


@pytest.fixture(scope="module")
def report(js_client: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the JS client saw, driving a real server on SQLite once for this module's tests."""
    database = tmp_path_factory.mktemp("js") / "journeys.db"
    with serving(create_app(Settings(database_url=f"sqlite:///{database}", auth=False))) as base:
        done = subprocess.run(["node", str(js_client / SCRIPT.name), base], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_the_js_client_creates_a_thread_and_starts_and_resumes_a_journey(report: dict[str, Any]) -> None:
    assert report["thread_id"]
    assert report["started_step"] == "upload_content" and report["interrupted"]
    assert report["resumed_step"] == "analyze_content"
    assert report["completed_steps"] == ["upload_content"]
    assert report["guide_events"].get("values", 0) >= 1


def test_the_js_client_streams_the_guides_tokens_in_messages_tuple_mode(report: dict[str, Any]) -> None:
    assert report["guide_events"].get("messages", 0) >= 1, report["guide_events"]
    assert "".join(report["guide_tokens"]).strip()
