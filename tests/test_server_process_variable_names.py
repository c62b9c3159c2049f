"""The variables a set or a retry of a process instance takes, as the OpenAPI document says and as the server
does, over real HTTP on SQLite and PostgreSQL: a client that builds its request from the document is never
refused for the names of its variables.

Before, the document let a set name a variable ``""`` (or ``business_key``), which the server refused (422):
schemathesis, drawing a body from the document, was refused."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
import pytest

from server.app import create_app
from server.settings import Settings
from tests.process_support import linear, user_task
from tests.server_support import serving


def allowed(document: dict[str, Any], path: str, body: Any) -> bool:
    """Whether the document's request body schema of ``POST path`` allows ``body``."""
    schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator({**schema, "components": document["components"]})
    return validator.is_valid(body)


@pytest.mark.parametrize("body", [{"variables": {"": 1}}, {"variables": {"business_key": "k-2"}}])
def test_a_variable_name_the_server_refuses_is_one_the_document_refuses(durable_url: str, body: dict[str, Any]) -> None:
    with (
        serving(create_app(Settings(database_url=durable_url, auth=False))) as base,
        httpx.Client(base_url=base) as http,
    ):
        assert http.post("/processes", json=linear("sign", user_task("signature"))).status_code == 200
        instance_id = http.post("/processes/sign/instances", json={"business_key": "k-1"}).json()["instance_id"]
        document = http.get("/openapi.json").json()
        for path in ("/processes/instances/{instance_id}/variables", "/processes/instances/{instance_id}/retry"):
            assert not allowed(document, path, body), (path, body)
        answer = http.post(f"/processes/instances/{instance_id}/variables", json=body)
        assert answer.status_code == 422, answer.text
        good = http.post(f"/processes/instances/{instance_id}/variables", json={"variables": {"tier": "gold"}})
        assert good.status_code == 200, good.text
        assert allowed(document, "/processes/instances/{instance_id}/variables", {"variables": {"tier": "gold"}})
