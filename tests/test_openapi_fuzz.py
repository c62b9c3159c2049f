"""Schemathesis fuzzes every operation of the OpenAPI document over real HTTP, on SQLite and PostgreSQL:
no 5xx, and every response matches the document (status code, content type, schema).

It drives schemathesis through its Python API (``schemathesis.openapi.from_url``, ``as_strategy``,
``call_and_validate``) with Hypothesis, not through its pytest plugin. Each operation is fuzzed three
ways: with generated ids (mostly the not-found paths), with the ids of real journeys, threads, runs,
sessions, sagas, lifecycles, processes and tasks created first (the paths behind the lookups), and with
negative data (bodies, parameters and headers that break the document: 4xx, never 5xx). Bounded and
derandomized: a few examples each, the same ones every run. Each example is generated once and sent to the
server on SQLite and to the server on PostgreSQL (with that server's real ids): generating them is most of
the CPU these tests take, and both backends get the same examples. Input an operation's schema allows must
also not be refused (400/422). That was a second test, whose examples (the same strategies, derandomized: the
same draws) were drawn and sent a second time to two more servers; one pass now checks both.

These tests check the OpenAPI document against what the server does, and spend most of their time in
Hypothesis drawing examples: they run once, in the main suite. `dev.py compat` runs ``tests/test_server_*.py``
on the other Pythons, where they would add minutes and no interpreter-specific coverage (every route is also
served there by the other server tests).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import TypeAdapter, ValidationError
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import create_app
from server.models import RunConfig
from server.settings import ApiKey, Settings
from tests.server_support import serving

pytestmark = pytest.mark.slow
KEY = {"x-api-key": "fuzz-key"}
ADMIN = {"fuzz-key": ApiKey("fuzzer", frozenset({"admin"}), ("finance",))}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Examples per operation: of input its schema allows (with real ids where its path takes any), of that with
# generated ids where the path takes some (mostly the not-found paths), and of input that breaks its schema.
POSITIVE_EXAMPLES, GENERATED_IDS_EXAMPLES, NEGATIVE_EXAMPLES = 10, 4, 3
PROCESS = {
    "name": "expense",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "user_task", "id": "approve", "title": "Approve", "candidate_groups": ["finance"]},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> approve", "approve -> end"],
}


def seed(base: str) -> Callable[[str], dict[str, str]]:
    """Create one of everything; returns the real path parameters for an operation's path."""
    with httpx.Client(base_url=base, headers=KEY, timeout=30) as http:

        def post(path: str, body: dict[str, Any]) -> Any:
            response = http.post(path, json=body)
            assert response.status_code == 200, (path, response.text)
            return response.json()

        structured = post("/journeys/structured/designs", {"journey_type": "content_migration"})["journey_id"]
        instance = post(f"/journeys/structured/{structured}/executions", {"user_id": "fuzzer"})["instance_id"]
        thread = post("/threads", {})["thread_id"]
        post(
            f"/threads/{thread}/runs/wait",
            {"assistant_id": "structured", "input": {"journey_type": "content_migration"}},
        )
        run = http.get(f"/threads/{thread}/runs").json()[0]["run_id"]
        saga_design = post("/journeys/sagas/designs", {"journey_type": "enterprise_migration"})["journey_id"]
        saga = post(f"/journeys/sagas/designs/{saga_design}/executions", {"user_id": "fuzzer"})["instance_id"]
        mvp = post("/journeys/mvp", {"user_id": "fuzzer"})["session"]["session_id"]
        areas = [{"area_id": "a", "area_name": "A"}, {"area_id": "b", "area_name": "B"}]
        session = post("/journeys/sessions", {"user_id": "fuzzer", "session_config": {"areas": areas}})["session_id"]
        ready = {"contract_signed": 1, "infrastructure_provisioned": 1, "data_sources_identified": 3}
        lifecycle = post("/journeys/lifecycle", {"client_id": "client-1", "metrics": ready})["journey_id"]
        post("/processes", PROCESS)
        process = post("/processes/expense/instances", {"business_key": "exp-1"})["instance_id"]
        task = http.get("/tasks", params={"group": "finance"}).json()[0]["task_id"]

    by_prefix = {  # the same name means different things under different paths
        "/journeys/structured/": {"journey_id": structured, "user_id": "fuzzer"},
        "/journeys/sagas/": {"journey_id": saga_design, "saga_id": saga},
        "/journeys/mvp/": {"session_id": mvp},
        "/journeys/sessions/": {"session_id": session},
        "/journeys/lifecycle/": {"journey_id": lifecycle},
        "/processes/": {"instance_id": process, "name": "expense"},
        "/journeys/": {"instance_id": instance},
    }
    common = {"thread_id": thread, "run_id": run, "assistant_id": "structured", "task_id": task}

    def real_ids(path: str) -> dict[str, str]:
        for prefix, ids in by_prefix.items():
            if path.startswith(prefix):
                return {**common, **ids}
        return common

    return real_ids


@dataclass
class Backend:
    """The app served on one database, seeded: its name, base URL and real path parameters."""

    name: str
    base: str
    real_ids: Callable[[str], dict[str, str]]

    def prepare(self, case: schemathesis.Case, real: frozenset[str]) -> None:
        """Point ``case``'s path parameters named in ``real`` at this backend's real ids (the rest as generated)."""
        ids = self.real_ids(case.operation.path)
        case.path_parameters.update({name: ids[name] for name in real})


@contextmanager
def serving_both(sqlite_url: str, postgres_url: str) -> Iterator[list[Backend]]:
    """The app on SQLite and on PostgreSQL, each seeded with one of everything."""
    with (
        serving(create_app(Settings(database_url=sqlite_url, api_keys=ADMIN))) as on_sqlite,
        serving(create_app(Settings(database_url=postgres_url, api_keys=ADMIN))) as on_postgres,
    ):
        yield [Backend("sqlite", on_sqlite, seed(on_sqlite)), Backend("postgres", on_postgres, seed(on_postgres))]


def load_schema(base: str) -> Any:
    """The server's OpenAPI document, read over HTTP. The app builds it on the first request, which on a busy
    2-core box took more than schemathesis's default 10 s read timeout."""
    return schemathesis.openapi.from_url(f"{base}/openapi.json", timeout=60)


def run_examples(strategy: Any, examples: int, send: Callable[[schemathesis.Case], None]) -> None:
    """Draw ``examples`` cases from ``strategy`` (bounded, derandomized: the same ones every run) and ``send``
    each; raises what the first failing case raised."""

    @given(case=strategy)
    @settings(
        max_examples=examples,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: schemathesis.Case) -> None:
        send(case)

    check()


# The servers run in this process, in threads: when one of their tasks draws from the `random` module (a lock's
# back-off jitter) while Hypothesis draws an example, Hypothesis takes it for a strategy using `random`.
# A real thread's stream never ends (it serves each later run, as the Agent Server's does): these operations
# get generated ids only (not found, or refused), and tests/test_server_thread_stream.py serves real ones.
ENDLESS = {"GET /threads/{thread_id}/stream"}


SERVERS_IN_PROCESS = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning"
)


# The operations that take a spec: its design rules (steps reachable, agents registered, flows connected,
# ...) are checked once its shape is valid, and reported as a SpecError. No JSON Schema can state those.
SPEC_OPERATIONS = {
    "POST /journeys/structured/designs",
    "POST /journeys/sagas/designs",
    "POST /journeys/sessions",
    "POST /processes",
}
# The operations that take a plan against what is deployed, and the error of its rules no JSON Schema can state:
# a rollout's weights sum to 100 over deployed versions; a migration maps the elements an instance waits at.
# What a run's refusal by its assistant's schemas names (graphs.kernel.patterns.Assistant's checks).
ASSISTANT_SCHEMAS = ("input", "command.resume")
PLAN_OPERATIONS = {
    "PUT /processes/{name}/rollout": "RolloutError",
    "POST /processes/instances/{instance_id}/migrate": "MigrationRefusedError",
}


def refusal_beyond_the_schema(operation: str, problem: dict[str, Any]) -> bool:
    """A 422 for a rule of a spec or a plan the schema cannot state: a design rule, a plan's rule, or a
    validator's cross-field rule (pydantic reports those as "Value error, ..."). Any other 422 means the schema
    allowed what the server refuses."""
    if operation in PLAN_OPERATIONS:
        return problem.get("code") == PLAN_OPERATIONS[operation]
    if "/runs" in operation and problem.get("code") == "InvalidInputError":
        # A run's input and command.resume are checked against its assistant's own schemas (GET
        # /assistants/{id}/schemas), which one document cannot state for every assistant.
        return all(p.startswith(ASSISTANT_SCHEMAS) for p in (problem.get("details") or {}).get("problems") or [""])
    if operation not in SPEC_OPERATIONS:
        return False
    if problem.get("code") == "SpecError":
        return True
    # A collection pydantic finds too short "after validation" only lost an item another problem names.
    problems = [p for p in problem.get("problems", []) if "after validation" not in p]
    return problem.get("code") == "RequestValidationError" and all(": Value error, " in p for p in problems)


@SERVERS_IN_PROCESS
def test_no_server_errors_no_schema_violations_and_nothing_allowed_refused(sqlite_url: str, postgres_url: str) -> None:
    """Every example of every pass: no 5xx, and the answer matches the document. Every example of an operation's
    allowed-input pass (input its schema allows, with the ids of real journeys, threads, runs, tasks... where
    the path has any) is also not refused as invalid (400/422), on SQLite or on PostgreSQL (each example is
    sent to both)."""
    failures: list[str] = []
    refused: dict[str, list[str]] = {}
    statuses: Counter[tuple[str, int]] = Counter()
    with serving_both(sqlite_url, postgres_url) as backends:
        api = load_schema(backends[0].base)
        operations = [result.ok() for result in api.get_all_operations()]
        for operation in operations:
            for mode, real, examples, allowed in passes(operation):
                names = [p.name for p in operation.path_parameters]
                fixed = {k: v for k, v in backends[0].real_ids(operation.path).items() if k in names} if real else None
                on = [backends[0].name]  # the backend the latest call went to, named with a failure
                ids = frozenset(fixed or ())

                def send(
                    case: schemathesis.Case, on: list[str] = on, ids: frozenset[str] = ids, allowed: bool = allowed
                ) -> None:
                    for backend in backends:
                        on[0] = backend.name
                        backend.prepare(case, ids)
                        response = case.call_and_validate(backend.base, headers=KEY, timeout=30, checks=CHECKS)
                        statuses[backend.name, response.status_code] += 1
                        if allowed and response.status_code in (400, 422):
                            problem = response.json()
                            if not refusal_beyond_the_schema(case.operation.label, problem):
                                body = json.dumps(case.body, ensure_ascii=True, default=str)[:300]
                                label = f"{case.operation.label} on {backend.name}"
                                refused.setdefault(label, []).append(f"{problem['detail'][:300]} <- {body}")

                try:
                    run_examples(operation.as_strategy(generation_mode=mode, path_parameters=fixed), examples, send)
                except Unsatisfiable:  # nothing to break in this operation (no parameters, no body)
                    assert mode is GenerationMode.NEGATIVE, operation.label
                except (Exception, BaseExceptionGroup) as exc:  # every failure, reported together below
                    failures.append(f"{operation.label} on {on[0]} ({mode.value}, real ids: {real}): {exc}"[:2000])
    assert not failures, "\n\n".join(failures)
    assert not refused, "\n".join(f"{label}: {len(why)} refused, e.g. {why[0]}" for label, why in refused.items())
    for backend in backends:  # each backend got every example, and the fuzz reached past the lookups
        seen = Counter({status: n for (name, status), n in statuses.items() if name == backend.name})
        assert len(operations) > 40 and seen.total() > 8 * len(operations), (backend.name, len(operations), seen)
        assert {200, 404, 409, 422} <= set(seen), (backend.name, seen)


def passes(operation: Any) -> Iterator[tuple[GenerationMode, bool, int, bool]]:
    """(generation mode, with real ids, examples, whether a refusal of them is a failure) for ``operation``:
    positive with generated ids (mostly the not-found paths), positive with real ids where its path takes any
    (never on a stream that does not end), and negative. The operation's last positive pass is its allowed-input
    one."""
    real = bool(operation.path_parameters) and operation.label not in ENDLESS
    if real:
        yield GenerationMode.POSITIVE, False, GENERATED_IDS_EXAMPLES, False
    yield GenerationMode.POSITIVE, real, POSITIVE_EXAMPLES, True
    yield GenerationMode.NEGATIVE, False, NEGATIVE_EXAMPLES, False


def _config_schemas(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``config`` property of a request body's model in the OpenAPI document, by model name."""
    for name, model in document["components"]["schemas"].items():
        config = model.get("properties", {}).get("config")
        if config is not None and "configurable" in json.dumps(config):  # a run's config, not a view's
            yield name, config


def test_the_schema_states_what_a_runs_config_must_be() -> None:
    # The server refuses a config whose fields LangGraph would refuse only when the run executes; the schema must
    # say so, or a client (and the fuzzer above, now and then) sends what it allows and gets a 422.
    import jsonschema

    document = create_app(Settings(database_url="memory://", auth=False)).openapi()
    found = dict(_config_schemas(document))
    assert {"RunCreate", "BatchRunCreate", "CronCreate"} <= set(found)
    refused = [
        {"configurable": []},
        {"metadata": "x"},
        {"tags": [1]},
        {"recursion_limit": 0},
        {"max_concurrency": "2"},
        {"run_name": 3},
    ]
    allowed = [
        {},
        {"configurable": None},
        {"configurable": {"a": 1}, "tags": ["t"], "recursion_limit": 5, "x": 1},
        {"recursion_limit": 5.0, "max_concurrency": 2.0},  # integers to JSON Schema
    ]
    server = TypeAdapter(RunConfig)  # and the server agrees with the document on each
    for config in refused:
        with pytest.raises(ValidationError):
            server.validate_python(config)
    assert server.validate_python({"recursion_limit": 5.0}) == {"recursion_limit": 5}
    for config in allowed:
        server.validate_python(config)
    for name, config_schema in found.items():
        # The document's components beside it: its references (#/components/...) resolve within it.
        schema = {**config_schema, "components": document["components"]}
        for config in refused:
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(config, schema)
            assert name and config  # named in the failure
        for config in allowed:
            jsonschema.validate(config, schema)


def test_the_document_refuses_nul_in_every_request_string_and_nothing_else() -> None:
    # What the server refuses (server.input_guard), the document says: a NUL in a body's string, in a free-form
    # value's key or string at any depth, or in a path parameter; the same text without it passes.
    import jsonschema

    document = create_app(Settings(database_url="memory://", auth=False)).openapi()
    operation = document["paths"]["/threads/{thread_id}/runs"]["post"]
    body = {**operation["requestBody"]["content"]["application/json"]["schema"], "components": document["components"]}
    (thread_id,) = [p["schema"] for p in operation["parameters"] if p["name"] == "thread_id"]
    fine = {"assistant_id": "agent", "input": {"note": ["a\\u0000b", {"k": "v"}]}, "metadata": {"who": "ana"}}
    jsonschema.validate(fine, body)
    jsonschema.validate("a-thread", thread_id)
    for hostile in (
        {**fine, "assistant_id": "age\x00nt"},
        {**fine, "input": {"note": ["a\x00b"]}},
        {**fine, "input": {"no\x00te": 1}},
        {**fine, "metadata": {"who": {"deep": ["ana\x00"]}}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(hostile, body)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate("a\x00thread", thread_id)


def test_an_answer_to_a_select_matches_the_document() -> None:
    # A search (or read) with select answers only the fields named: the document said every field of the view
    # was there (schemathesis found assistants/search so). The answer is the same on every store (picked).
    import jsonschema

    app = create_app(Settings(database_url="memory://", auth=False))
    document = app.openapi()
    with serving(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        thread = http.post("/threads", json={"metadata": {"who": "ana"}}).json()["thread_id"]
        started = {"assistant_id": "structured", "input": {"journey_type": "content_migration"}}
        assert http.post(f"/threads/{thread}/runs/wait", json=started).status_code == 200
        asked = [
            ("post", "/assistants/search", "/assistants/search", {"select": ["name", "graph_id"]}, None),
            ("post", "/threads/search", "/threads/search", {"select": ["thread_id"]}, None),
            ("get", "/threads/{thread_id}/runs", f"/threads/{thread}/runs", None, {"select": "status"}),
            ("get", "/threads/{thread_id}/state", f"/threads/{thread}/state", None, {"select": "values"}),
        ]
        for method, route, url, body, params in asked:
            answer = http.request(method.upper(), url, json=body, params=params)
            assert answer.status_code == 200, (url, answer.text)
            schema = document["paths"][route][method]["responses"]["200"]["content"]["application/json"]["schema"]
            jsonschema.validate(answer.json(), {**schema, "components": document["components"]})
            assert answer.json(), url
