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

from checkpoints.errors import InvalidInputError
from server.app import create_app
from server.settings import Settings
from tests.process_support import linear, runtime, user_task
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
        httpx.Client(base_url=base, timeout=30) as http,
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


@pytest.mark.parametrize(
    "variables",
    [{"": 1}, {"business_key": "k-2"}, {"v" * 256: 1}],
    ids=["empty", "business_key", "over_long"],
)
def test_a_start_refuses_the_variable_names_a_set_refuses(durable_url: str, variables: dict[str, Any]) -> None:
    """A start took any name a set refuses: ``""`` became a variable no set could change, ``business_key`` was
    dropped without a word (the start's own key won), and a name of any length was kept. Now the start is refused
    (422, nothing started), the document says so, and a name is at most 255 characters (Camunda 7's limit), on
    the start, the set and the retry alike, in process as over HTTP."""
    with (
        serving(create_app(Settings(database_url=durable_url, auth=False))) as base,
        httpx.Client(base_url=base, timeout=30) as http,
    ):
        assert http.post("/processes", json=linear("sign", user_task("signature"))).status_code == 200
        document = http.get("/openapi.json").json()
        body = {"business_key": "k-1", "variables": variables}
        assert not allowed(document, "/processes/{name}/instances", body)
        refused = http.post("/processes/sign/instances", json=body)
        assert refused.status_code == 422, refused.text
        longest = {"v" * 255: 1}
        assert allowed(document, "/processes/{name}/instances", {"business_key": "k-1", "variables": longest})
        started = http.post("/processes/sign/instances", json={"business_key": "k-1", "variables": longest})
        assert started.status_code == 200, started.text
        for path in ("/processes/instances/{instance_id}/variables", "/processes/instances/{instance_id}/retry"):
            assert not allowed(document, path, {"variables": {"v" * 256: 1}}), path


async def test_the_runtime_refuses_a_start_or_set_naming_a_variable_it_cannot_keep(store_url: str) -> None:
    async with runtime(store_url) as rt:
        await rt.processes.deploy(linear("sign", user_task("signature")))
        for variables in ({"": 1}, {"business_key": "k-2"}, {"v" * 256: 1}, {1: "x"}):
            with pytest.raises(InvalidInputError):
                await rt.processes.start("sign", "k-1", variables)  # type: ignore[arg-type]
        assert await rt.store.index.list_instances() == []
        view = await rt.processes.start("sign", "k-1", {"v" * 255: 1})
        with pytest.raises(InvalidInputError):
            await rt.processes.set_variables(view["instance_id"], {"w" * 256: 1})
