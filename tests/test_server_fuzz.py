"""Schemathesis fuzzes every operation of the OpenAPI document over real HTTP: no 5xx, and every
response matches the document (status code, content type, schema). Bounded: a few examples each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import create_app
from server.settings import ApiKey, Settings
from tests.server_support import serving

pytestmark = pytest.mark.slow
ADMIN = {"fuzz-key": ApiKey("fuzzer", frozenset({"admin"}), ("finance",))}


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = Path(tmp_path_factory.mktemp("fuzz")) / "fuzz.db"
    with serving(create_app(Settings(database_url=f"sqlite:///{db}", api_keys=ADMIN))) as base:
        yield base


STATUSES: list[int] = []
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_no_server_errors_and_no_schema_violations(base_url: str) -> None:
    api = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in api.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=4,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call_and_validate(headers={"x-api-key": "fuzz-key"}, timeout=20, checks=CHECKS)
            STATUSES.append(response.status_code)

        try:
            check()
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.label}: {exc}"[:1500])
    assert operations > 40 and len(STATUSES) > 3 * operations, (operations, len(STATUSES))
    print(sorted(set(STATUSES)), len(STATUSES))
    assert not failures, "\n\n".join(failures)
