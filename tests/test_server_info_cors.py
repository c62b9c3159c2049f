"""``GET /info`` and CORS over real HTTP: off by default, and only the listed origins get CORS headers."""

from __future__ import annotations

from importlib.metadata import version

import httpx
import pytest
from typer.testing import CliRunner

from server.app import create_app
from server.settings import ApiKey, Settings
from tests.server_support import free_port, serving

pytestmark = pytest.mark.slow
ALLOWED = "http://localhost:3000"  # where agent-chat-ui runs
OTHER = "https://evil.example"
KEYS = {"ops-key": ApiKey("ana", frozenset({"read", "runs"}))}
PREFLIGHT = {"access-control-request-method": "POST", "access-control-request-headers": "content-type,x-api-key"}


def test_info_says_what_the_server_is_without_a_key(sqlite_url: str) -> None:
    with serving(create_app(Settings(database_url=sqlite_url, api_keys=KEYS))) as base:
        answer = httpx.get(f"{base}/info", timeout=30)  # the first request of a server just started, on a busy box
    assert answer.status_code == 200
    body = answer.json()
    assert body["version"] == version("journeys")
    assert body["langgraph_py_version"] == version("langgraph")
    assert body["flags"] == {"assistants": True, "crons": True, "store": True, "langsmith": False}


def test_cors_is_off_by_default(sqlite_url: str) -> None:
    with serving(create_app(Settings(database_url=sqlite_url, api_keys=KEYS))) as base:
        preflight = httpx.options(f"{base}/threads", headers={"origin": ALLOWED, **PREFLIGHT})
        answer = httpx.get(f"{base}/info", headers={"origin": ALLOWED})
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in answer.headers


def test_a_browser_preflight_from_an_allowed_origin_succeeds_and_others_get_no_cors_headers(sqlite_url: str) -> None:
    settings = Settings(database_url=sqlite_url, api_keys=KEYS, cors_origins=(ALLOWED,))
    with serving(create_app(settings)) as base:
        allowed = httpx.options(f"{base}/threads", headers={"origin": ALLOWED, **PREFLIGHT})
        refused = httpx.options(f"{base}/threads", headers={"origin": OTHER, **PREFLIGHT})
        created = httpx.post(f"{base}/threads", json={}, headers={"origin": ALLOWED, "x-api-key": "ops-key"})
        foreign = httpx.post(f"{base}/threads", json={}, headers={"origin": OTHER, "x-api-key": "ops-key"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in allowed.headers["access-control-allow-methods"]
    allowed_headers = {h.strip() for h in allowed.headers["access-control-allow-headers"].lower().split(",")}
    assert {"content-type", "x-api-key"} <= allowed_headers
    assert "access-control-allow-origin" not in refused.headers
    assert created.status_code == 200 and created.headers["access-control-allow-origin"] == ALLOWED
    # The server still answers a caller of another origin; the browser withholds that answer from its page.
    assert "access-control-allow-origin" not in foreign.headers


def test_serve_takes_the_allowed_origins_from_options_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from server import cli

    seen: list[Settings] = []
    monkeypatch.setattr("server.app.create_app", lambda settings, **_: seen.append(settings) or object())
    monkeypatch.setattr("uvicorn.Server.run", lambda server, sockets: setattr(server, "started", True))
    runner = CliRunner()
    serve = ["serve", "--no-auth", "--port", str(free_port())]  # it binds the port before it serves
    done = runner.invoke(cli.app, [*serve, "--cors-origin", ALLOWED, "--cors-origin", "http://b.test"])
    assert done.exit_code == 0, done.output
    from_env = runner.invoke(cli.app, serve, env={"JOURNEYS_CORS_ORIGINS": f"{ALLOWED} http://b.test"})
    assert from_env.exit_code == 0, from_env.output
    plain = runner.invoke(cli.app, serve, env={"JOURNEYS_CORS_ORIGINS": None})
    assert plain.exit_code == 0, plain.output
    assert [s.cors_origins for s in seen] == [(ALLOWED, "http://b.test"), (ALLOWED, "http://b.test"), ()]
