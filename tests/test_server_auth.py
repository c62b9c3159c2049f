"""API keys kept as digests: the keys file, its typed errors, `journeys keys`, and auth before input checks."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import structlog
from fastapi.routing import APIRoute, iter_route_contexts
from structlog.testing import capture_logs
from typer.testing import CliRunner

from server.app import create_app
from server.auth import Require, authenticate, load_authenticator
from server.cli import app as cli
from server.input_guard import GuardedRoute
from server.plugins import load_plugin
from server.problems import ApiError, ApiKeysError, AuthenticatorError, PluginNotFoundError
from server.settings import ApiKey, Settings, key_digest, load_api_keys
from server.ui.pages import UiRoute
from server.ui.session import caller
from tests.server_support import serving

ANA = {"principal": "ana", "scopes": ["read", "tasks"], "groups": ["finance"]}


@pytest.fixture(autouse=True)
def structlog_defaults() -> Iterator[None]:
    """These tests read warnings; a CLI test run before them in the same process quiets structlog to
    errors process-wide (journeys serve/worker do that), so they start from structlog's defaults."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


def keys_file(tmp_path: Path, entries: object) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(entries))
    return path


def test_a_digest_entry_authenticates_its_key_and_no_other(tmp_path: Path) -> None:
    with capture_logs() as logs:
        keys = load_api_keys(keys_file(tmp_path, {key_digest("s3cret"): ANA}))
    assert logs == []  # digests only: nothing to warn about
    settings = Settings(api_keys=keys)
    caller = authenticate(settings, "s3cret")
    assert (caller.name, caller.scopes, caller.groups) == ("ana", frozenset({"read", "tasks"}), ("finance",))
    for wrong in ("s3cre", "s3cret ", key_digest("s3cret")):  # the digest itself is no key
        with pytest.raises(ApiError) as refused:
            authenticate(settings, wrong)
        assert refused.value.status == 401


def test_plain_keys_still_work_with_one_warning_and_are_not_kept(tmp_path: Path) -> None:
    entries = {"plain-1": ANA, "plain-2": {"principal": "bob", "scopes": ["read"]}, key_digest("d"): ANA}
    with capture_logs() as logs:
        keys = load_api_keys(keys_file(tmp_path, entries))
    assert [(log["log_level"], log["principals"]) for log in logs] == [("warning", ["ana", "bob"])]
    assert "plain-1" not in json.dumps(logs)
    assert set(keys) == {key_digest("plain-1"), key_digest("plain-2"), key_digest("d")}
    assert authenticate(Settings(api_keys=keys), "plain-2").name == "bob"
    # Keys set in code are hashed too, and the same key in digest form is the same entry.
    in_code = Settings(api_keys={"plain-1": ApiKey("ana", frozenset({"read"}))})
    assert list(in_code.api_keys) == [key_digest("plain-1")]
    assert authenticate(in_code, "plain-1").name == "ana"


def test_the_environment_variable_holds_the_same_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNEYS_API_KEYS", json.dumps({key_digest("k").upper().replace("SHA256", "sha256"): ANA}))
    assert authenticate(Settings(api_keys=load_api_keys()), "k").name == "ana"  # hex digits in either case


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ({"sha256:" + "a" * 64: {"scopes": ["read"]}}, "entry 'sha256:aaaaaaaa…': principal: Field required"),
        ({"top-secret": {"principal": "ana", "scopes": ["read", "rwx"]}}, "entry 1 (a plain key) of principal 'ana'"),
        ({key_digest("k"): {"principal": "ana", "scope": ["read"]}}, "scope: Extra inputs are not permitted"),
        ({key_digest("k"): {"principal": "ana", "groups": "finance"}}, "groups: Input should be a valid list"),
        ({"ok": ANA, "top-secret": ["read"]}, "entry 2 (a plain key): must be an object with principal"),
        ({"sha256:abc": ANA}, "entry 'sha256:abc…' of principal 'ana': a digest is 'sha256:' and 64 hex digits"),
        (["top-secret"], "must be a JSON object mapping each key's digest to its entry"),
    ],
)
def test_a_bad_keys_file_is_a_typed_error_naming_the_entry(tmp_path: Path, entries: object, expected: str) -> None:
    with pytest.raises(ApiKeysError) as bad:
        load_api_keys(keys_file(tmp_path, entries))
    assert expected in str(bad.value) and str(tmp_path / "keys.json") in str(bad.value)
    assert "top-secret" not in str(bad.value)  # a plain key is a secret: never in a message


def test_an_unknown_scope_is_named_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ApiKeysError, match=r"scopes\.1: Input should be 'read', 'runs', .* or 'admin'"):
        load_api_keys(keys_file(tmp_path, {key_digest("k"): {"principal": "ana", "scopes": ["read", "rwx"]}}))


def test_an_unreadable_or_malformed_keys_file_is_a_typed_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ApiKeysError, match="cannot read the keys file"):
        load_api_keys(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('{"top-secret": ')
    with pytest.raises(ApiKeysError, match="not valid JSON") as bad:
        load_api_keys(tmp_path / "broken.json")
    assert "top-secret" not in str(bad.value)
    monkeypatch.setenv("JOURNEYS_API_KEYS", "[")
    with pytest.raises(ApiKeysError, match=r"^\$JOURNEYS_API_KEYS: not valid JSON"):
        load_api_keys()


def test_keys_new_prints_the_key_once_and_a_digest_entry(tmp_path: Path) -> None:
    done = CliRunner().invoke(
        cli, ["keys", "new", "--principal", "alice", "--scope", "read", "--scope", "runs", "--group", "ops"]
    )
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    key, entry = lines[1], json.loads(lines[3])
    assert len(key) >= 43 and done.output.count(key) == 1  # token_urlsafe(32), shown once
    assert entry == {key_digest(key): {"principal": "alice", "scopes": ["read", "runs"], "groups": ["ops"]}}
    caller = authenticate(Settings(api_keys=load_api_keys(keys_file(tmp_path, entry))), key)
    assert (caller.name, caller.scopes, caller.groups) == ("alice", frozenset({"read", "runs"}), ("ops",))
    other = CliRunner().invoke(cli, ["keys", "new", "--principal", "alice", "--scope", "read"])
    assert other.output.splitlines()[1] != key


def test_keys_new_makes_keys_of_a_tenant_that_see_only_its_objects(tmp_path: Path, durable_url: str) -> None:
    """`journeys keys new` had no --tenant (nor --share-with): a second tenant's key had to be written by hand
    into the keys file. Keys made with them carry both, and a tenant's key does not see another's thread."""
    entries: dict[str, object] = {}
    keys = {}
    for principal, tenant in (("ana", "acme"), ("bob", "globex")):
        args = ["keys", "new", "--principal", principal, "--scope", "read", "--scope", "runs", "--tenant", tenant]
        done = CliRunner().invoke(cli, [*args, "--share-with", f"{tenant}-ops"])
        assert done.exit_code == 0, done.output
        lines = done.output.splitlines()
        keys[principal], entry = lines[1], json.loads(lines[3])
        assert entry[key_digest(keys[principal])]["tenant"] == tenant
        assert entry[key_digest(keys[principal])]["share_with"] == f"{tenant}-ops"
        entries |= entry
    settings = Settings(database_url=durable_url, api_keys=load_api_keys(keys_file(tmp_path, entries)))
    ana = authenticate(settings, keys["ana"])
    assert (ana.name, ana.tenant, ana.share_with) == ("ana", "acme", "acme-ops")
    with serving(create_app(settings)) as base:
        thread = httpx.post(f"{base}/threads", json={}, headers={"x-api-key": keys["ana"]}, timeout=30).json()
        path = f"{base}/threads/{thread['thread_id']}"
        assert httpx.get(path, headers={"x-api-key": keys["ana"]}, timeout=30).status_code == 200
        assert httpx.get(path, headers={"x-api-key": keys["bob"]}, timeout=30).status_code == 404


def test_no_auth_with_an_authenticator_is_refused_naming_both() -> None:
    """`journeys serve --no-auth --auth module:factory` served the API through the authenticator while the
    dashboard showed "local developer (no auth)" and asked nobody for a login. The two are refused together."""
    with pytest.raises(AuthenticatorError, match="give one or the other"):
        Settings(auth=False, authenticator=object())
    done = CliRunner().invoke(cli, ["serve", "--no-auth", "--auth", "my_auth:factory"])
    assert done.exit_code == 2 and "--no-auth" in done.output and "--auth" in done.output, done.output
    assert "Traceback" not in done.output


def test_auth_and_plugin_options_find_their_function_one_way_and_say_what_is_missing() -> None:
    """--auth and --plugin look their module up the same way (installed, then the current directory), and a
    module, a function or a name missing is one line naming the option; ':factory' alone was a ValueError."""
    settings = Settings()
    for spec, says in (
        ("not_there_auth:factory", "no module named 'not_there_auth'"),
        ("server.auth:nothing", "module 'server.auth' ("),
        ("server.auth", "is named without a function"),
        (":factory", "names no module"),
    ):
        with pytest.raises(AuthenticatorError, match=re.escape(says)) as refused:
            load_authenticator(spec, settings)
        assert str(refused.value).startswith(f"--auth {spec!r}")
    with pytest.raises(PluginNotFoundError, match="names no module"):
        load_plugin(":register")
    assert load_plugin("tests.test_server_auth:register_nothing") is register_nothing


def register_nothing(registry: object) -> None:
    """A plugin that registers nothing."""


def test_keys_new_refuses_an_unknown_scope_and_digest_hashes_a_key() -> None:
    refused = CliRunner().invoke(cli, ["keys", "new", "--principal", "alice", "--scope", "wrtie"])
    assert refused.exit_code == 2 and "scopes.0: Input should be 'read'" in refused.output
    assert "Traceback" not in refused.output
    hashed = CliRunner().invoke(cli, ["keys", "digest"], input="plain-1\n")
    assert hashed.exit_code == 0 and hashed.output.splitlines()[-1] == key_digest("plain-1")


def test_serve_stops_on_a_bad_keys_file_before_serving(tmp_path: Path) -> None:
    path = keys_file(tmp_path, {key_digest("k"): {"scopes": ["read"]}})
    done = CliRunner().invoke(cli, ["serve", "--api-keys", str(path)])
    assert done.exit_code == 2 and "principal: Field required" in done.output


PUBLIC = {"/ok", "/info"}  # the health check, and what clients probe before sending a key
# What a public route may be asked: the health check whether the database answers (as the Agent Server's).
PUBLIC_PARAMETERS = {"/ok": {"check_db"}}


def test_every_route_but_the_health_check_authorizes_and_guards_its_input() -> None:
    # A GuardedRoute authorizes the caller (its Require scopes) and then checks the input before it is read
    # or parsed: a route without either would let it reach a store, so only body- and parameter-less
    # public routes may go without.
    app = create_app(Settings())
    public, ui_public = set(), set()
    # FastAPI 0.165 includes routers lazily: app.routes holds the inclusions, not the routes in them.
    routes = [context.original_route for context in iter_route_contexts(app.routes)]
    assert len(routes) > 40
    for route in routes:
        if isinstance(route, UiRoute):  # the dashboard: its caller comes from the login cookie (server/ui/)
            if not any(d.call is caller for d in route.dependant.dependencies):
                ui_public.add(route.path)
            assert route.body_field is None  # a form is read by the page, within the input limits
            continue
        if isinstance(route, APIRoute) and route.path not in PUBLIC:
            assert isinstance(route, GuardedRoute), route.path
        if isinstance(route, APIRoute) and not any(isinstance(d.call, Require) for d in route.dependant.dependencies):
            public.add(route.path)
            assert route.body_field is None and not route.dependant.path_params
            assert {p.name for p in route.dependant.query_params} <= PUBLIC_PARAMETERS.get(route.path, set())
        if isinstance(route, APIRoute):  # the caller is one dependency a request solves: the key's scheme itself
            assert all(not d.dependencies for d in route.dependant.dependencies if isinstance(d.call, Require))
    assert public == PUBLIC
    assert ui_public == {"/ui", "/ui/login", "/ui/logout"}
    # Which the OpenAPI document says of every route but the public ones: the API key, in its header.
    document = app.openapi()
    key = {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "an API key with scopes"}
    assert document["components"]["securitySchemes"] == {"APIKeyHeader": key}
    operations = [(path, op) for path, item in document["paths"].items() for op in item.values()]
    assert {path for path, op in operations if op.get("security") != [{"APIKeyHeader": []}]} == PUBLIC
