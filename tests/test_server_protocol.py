"""HTTP protocol details over real HTTP: a 405 names the methods the resource has (RFC 9110 ``Allow``), and
``journeys serve --no-auth`` says what it means, and refuses to expose an open server beyond loopback. That no
operation refuses input its OpenAPI schema allows is checked in ``test_openapi_fuzz.py``."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from server.app import create_app
from server.cli import app as cli
from server.settings import Settings, is_loopback
from tests.forked import JourneysProcess
from tests.server_support import ROOT, free_port, serving, start_serving, stop_worker

pytestmark = pytest.mark.slow
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@pytest.fixture
def base(sqlite_url: str) -> Iterator[str]:
    with serving(create_app(Settings(database_url=sqlite_url, auth=False))) as url:
        yield url


def served_pattern(template: str, served: dict[str, str]) -> re.Pattern[str]:
    """What paths ``template`` (an OpenAPI path) matches as the server routes it: a parameter the route takes as a
    path (``{user_id:path}``: a user id may hold "/"; the document does not say so) matches several segments."""
    route = served.get(template, template)
    return re.compile(re.sub(r"\{[^}:]+\}", "[^/]+", re.sub(r"\{[^}:]+:path\}", ".+", route)) + "$")


def test_every_405_names_the_methods_its_resource_has(base: str, sqlite_url: str) -> None:
    """For every path of the OpenAPI document, a method it lacks gets 405 with ``Allow`` listing exactly the
    methods the document gives the paths that match it (``/assistants/search`` is also an assistant's path; and
    ``/journeys/structured/p1/users/p1/advance`` a status read's, of user "p1/advance")."""
    app = create_app(Settings(database_url=sqlite_url, auth=False))
    served = {r.path_format: r.path for r in app.routes if isinstance(getattr(r, "path", None), str)}
    with httpx.Client(base_url=base, timeout=30) as http:
        paths = http.get("/openapi.json").json()["paths"]
        patterns = {template: served_pattern(template, served) for template in paths}
        checked = 0
        for template in paths:
            path = re.sub(r"\{[^}]+\}", "p1", template)
            documented = {m.upper() for t, operations in paths.items() if patterns[t].match(path) for m in operations}
            for method in sorted(set(METHODS) - documented):
                response = http.request(method, path)
                assert response.status_code == 405, (method, path, response.text)
                assert response.headers["content-type"] == "application/problem+json"
                allowed = {m.strip() for m in response.headers["allow"].split(",")}
                assert allowed == documented, (method, path)
                checked += 1
    assert checked > 100  # every path, every method it lacks


def test_405_on_a_path_two_routes_share_lists_both(base: str) -> None:
    # GET/PATCH/DELETE /assistants/{assistant_id} and POST /assistants/search all match /assistants/search.
    refused = httpx.put(f"{base}/assistants/search")
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, POST, PATCH, DELETE"


def test_no_operation_is_shadowed_by_one_matched_before_it(base: str) -> None:
    """Routes are tried in the order the document lists their paths (the runs' first: the path every journey
    takes, see server/app.py): an operation whose path an earlier path of the same method also matches would
    never be reached (``/threads/{thread_id}/runs/wait`` behind a ``/threads/{thread_id}/runs/{run_id}``)."""
    paths = httpx.get(f"{base}/openapi.json", timeout=30).json()["paths"]  # built on the first ask: slow on a busy box
    order = list(paths)
    assert order[0].startswith("/threads/{thread_id}/runs")
    shadowed = []
    for i, template in enumerate(order):
        path = re.sub(r"\{[^}]+\}", "p1", template)
        for method in paths[template]:
            shadowed += [
                (method, template, earlier)
                for earlier in order[:i]
                if method in paths[earlier] and re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", earlier), path)
            ]
    assert shadowed == []
    assert sum(len(operations) for operations in paths.values()) > 80  # every operation was looked at


@pytest.mark.parametrize("host", ["0.0.0.0", "example.org"])
def test_no_auth_refuses_a_non_loopback_host_without_allow_insecure(tmp_path: Path, host: str) -> None:
    # In a process of its own with a deadline: a server that starts anyway must fail the test, not hang it.
    command = [sys.executable, "-c", "from server.cli import app; app()", "serve", "--no-auth", "--host", host]
    command += ["--database-url", f"sqlite:///{tmp_path}/j.db", "--port", str(free_port())]
    refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2, (host, refused.stderr)
    assert f"--no-auth on --host {host}" in refused.stderr and "--allow-insecure" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_which_hosts_are_loopback() -> None:
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.8.9.1", "::1", "localhost"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.org", ""))


def test_allow_insecure_is_only_for_no_auth() -> None:
    refused = CliRunner().invoke(cli, ["serve", "--allow-insecure", "--host", "0.0.0.0"])
    assert refused.exit_code == 2 and "--allow-insecure only goes with --no-auth" in refused.output


def stopped(process: JourneysProcess, log: Path) -> str:
    """What the server wrote, once stopped."""
    stop_worker(process)
    return log.read_text()


@pytest.mark.parametrize(
    ("options", "exposed"),
    [(("--host", "127.0.0.1"), False), (("--host", "0.0.0.0", "--allow-insecure"), True)],
)
def test_no_auth_warns_when_it_starts(tmp_path: Path, options: tuple[str, ...], exposed: bool) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    process = start_serving(f"sqlite:///{tmp_path}/j.db", port, log, "--no-auth", *options)
    try:  # no key needed: that is the point
        assert httpx.post(f"http://127.0.0.1:{port}/threads", json={}).status_code == 200
    finally:
        errors = stopped(process, log)
    assert "warning: --no-auth" in errors and "every request" in errors
    assert ("reachable from other machines" in errors) is exposed
