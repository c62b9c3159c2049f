"""Schemathesis fuzzes every operation of the OpenAPI document over real HTTP, on SQLite and PostgreSQL:
no 5xx, and every response matches the document (status code, content type, schema).

It drives schemathesis through its Python API (``schemathesis.openapi.from_url``, ``as_strategy``,
``call_and_validate``) with Hypothesis, not through its pytest plugin. Each operation is fuzzed three
ways: with generated ids (mostly the not-found paths), with the ids of real journeys, threads, runs,
sessions, sagas, lifecycles, processes and tasks created first (the paths behind the lookups), and with
negative data (bodies, parameters and headers that break the document: 4xx, never 5xx). Bounded and
derandomized: a few examples each, the same ones every run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import create_app
from server.settings import ApiKey, Settings
from tests.server_support import serving

pytestmark = pytest.mark.slow
KEY = {"x-api-key": "fuzz-key"}
ADMIN = {"fuzz-key": ApiKey("fuzzer", frozenset({"admin"}), ("finance",))}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# (generation mode, use real ids, examples per operation)
PASSES = ((GenerationMode.POSITIVE, False, 4), (GenerationMode.POSITIVE, True, 6), (GenerationMode.NEGATIVE, False, 3))
PROCESS = {
    "name": "expense",
    "elements": [
        {"type": "start", "id": "start"},
        {"type": "user_task", "id": "approve", "title": "Approve", "candidate_groups": ["finance"]},
        {"type": "end", "id": "end"},
    ],
    "flows": ["start -> approve", "approve -> end"],
}


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


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


def test_no_server_errors_and_no_schema_violations(database_url: str) -> None:
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    with serving(create_app(Settings(database_url=database_url, api_keys=ADMIN))) as base:
        real_ids = seed(base)
        api = schemathesis.openapi.from_url(f"{base}/openapi.json")
        operations = [result.ok() for result in api.get_all_operations()]
        for operation in operations:
            for mode, real, examples in PASSES:
                names = [p.name for p in operation.path_parameters]
                if real and not names:
                    continue
                fixed = {k: v for k, v in real_ids(operation.path).items() if k in names} if real else None

                @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed))
                @settings(
                    max_examples=examples,
                    deadline=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                    derandomize=True,
                    database=None,
                )
                def check(case: schemathesis.Case) -> None:
                    response = case.call_and_validate(headers=KEY, timeout=30, checks=CHECKS)
                    statuses[response.status_code] += 1

                try:
                    check()
                except Unsatisfiable:  # nothing to break in this operation (no parameters, no body)
                    assert mode is GenerationMode.NEGATIVE, operation.label
                except (Exception, BaseExceptionGroup) as exc:  # every failure, reported together below
                    failures.append(f"{operation.label} ({mode.value}, real ids: {real}): {exc}"[:2000])
    assert len(operations) > 40 and statuses.total() > 8 * len(operations), (len(operations), statuses)
    assert {200, 404, 409, 422} <= set(statuses), statuses  # the fuzz reached past the lookups
    assert not failures, "\n\n".join(failures)
