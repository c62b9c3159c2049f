"""Input the server refuses before it reads, parses or stores it, the same way on every backend.

Each case reproduces a report of issue 10: a body nested 255 levels froze the server (LangGraph failed deep
inside a run and its traceback rendered every local); metadata nested 500 deep or holding a lone
surrogate answered 500 but stored the thread, after which every thread search failed; NaN, Infinity,
1e400, a 1 MB metric name or user id failed only on PostgreSQL; a 50 MB body was read and parsed before
its caller was found to have no key. Each is now a 4xx, and nothing is written.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from checkpoints import values
from graphs.errors import InvalidInputError
from server import input_guard
from server.app import create_app
from server.settings import ApiKey, InputLimits, Settings
from tests.server_support import free_port, serving

pytestmark = pytest.mark.slow
KEY = {"x-api-key": "ops-key"}
KEYS = {"ops-key": ApiKey("ana", frozenset({"admin"}), ("finance",))}
JSON = {"content-type": "application/json"}
MIGRATION = {"assistant_id": "structured", "input": {"journey_type": "content_migration"}}


def nested(depth: int, leaf: Any) -> Any:
    """``leaf`` inside ``depth`` objects."""
    for _ in range(depth):
        leaf = {"a": leaf}
    return leaf


def raw(document: Any, **literals: str) -> bytes:
    """``document`` as JSON with each string ``"@name"`` replaced by the literal text given for ``name``
    (NaN, 1e400 and escapes no encoder writes)."""
    text = json.dumps(document)
    for name, literal in literals.items():
        text = text.replace(json.dumps(f"@{name}"), literal)
    return text.encode()


@pytest.fixture
def base(store_url: str) -> Iterator[str]:
    with serving(create_app(Settings(database_url=store_url, api_keys=KEYS))) as url:
        yield url


@pytest.fixture
async def http(base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base, headers=KEY, timeout=60) as client:
        yield client


async def seeded(http: httpx.AsyncClient) -> list[str]:
    """Two threads with journeys on them, so a search or a refusal that touches the wrong thread shows."""
    threads = []
    for user in ("ana", "bob"):
        thread = (await http.post("/threads", json={"metadata": {"owner": user}})).json()["thread_id"]
        started = await http.post(f"/threads/{thread}/runs/wait", json=MIGRATION)
        assert started.status_code == 200 and started.json()["current_step"] == "upload_content", started.text
        threads.append(thread)
    return threads


async def thread_ids(http: httpx.AsyncClient) -> set[str]:
    found = await http.post("/threads/search", json={"limit": 1000})
    assert found.status_code == 200, found.text
    return {t["thread_id"] for t in found.json()}


async def assert_refused(http: httpx.AsyncClient, status: int, path: str, body: bytes, code: str | None = None) -> None:
    answer = await http.post(path, content=body, headers=JSON)
    assert answer.status_code == status, (path, answer.status_code, answer.text[:500])
    assert answer.headers["content-type"] == "application/problem+json"
    if code is not None:
        assert answer.json()["code"] == code, answer.text[:500]


async def test_deep_nesting_is_refused_before_anything_is_written(http: httpx.AsyncClient) -> None:
    threads = await seeded(http)
    deep_run = {**MIGRATION, "input": {**MIGRATION["input"], "context": nested(255, {"token": "secret"})}}
    await assert_refused(http, 422, "/runs/wait", raw(deep_run), "InvalidInputError")
    await assert_refused(http, 422, f"/threads/{threads[0]}/runs", raw({"command": {"resume": nested(300, 1)}}))
    await assert_refused(http, 422, "/threads", raw({"metadata": nested(500, 1)}), "InvalidInputError")
    too_deep_for_the_parser = b'{"metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    await assert_refused(http, 422, "/threads", too_deep_for_the_parser, "InvalidInputError")
    assert await thread_ids(http) == set(threads)  # nothing stored, and the search still answers
    for thread in threads:
        runs = (await http.get(f"/threads/{thread}/runs")).json()
        assert [r["status"] for r in runs] == ["success"]
    # Nesting up to the limit is accepted.
    fine = await http.post("/threads", json={"metadata": nested(InputLimits().max_depth - 1, 1)})
    assert fine.status_code == 200, fine.text


async def test_a_config_langgraph_would_refuse_mid_run_is_refused_when_sent(http: httpx.AsyncClient) -> None:
    """A run's, an assistant's or a cron's config with a recursion limit below 1 or not a number (and the other
    fields LangGraph reads, mistyped) is a 422: it used to be queued, register its journey and then fail the
    run with a bare ValueError or TypeError and a traceback in the log."""
    threads = await seeded(http)
    for config in (
        {"recursion_limit": -1},
        {"recursion_limit": "x"},
        {"recursion_limit": True},
        {"max_concurrency": 0},
        {"tags": "urgent"},
        {"configurable": []},
    ):
        fresh = (await http.post("/threads", json={})).json()["thread_id"]
        await assert_refused(http, 422, f"/threads/{fresh}/runs/wait", raw({**MIGRATION, "config": config}))
        assert (await http.get(f"/threads/{fresh}/runs")).json() == []  # nothing queued, no journey started
        assert (await http.get(f"/threads/{fresh}")).json()["metadata"].get("instance_id") is None
        await assert_refused(http, 422, "/assistants", raw({"graph_id": "structured", "config": config}))
        cron = {"assistant_id": "structured", "schedule": "0 9 * * *", "input": MIGRATION["input"], "config": config}
        await assert_refused(http, 422, "/runs/crons", raw(cron))
    fine_config = {"recursion_limit": 50, "tags": ["ops"]}
    fine = await http.post("/runs/wait", json={**MIGRATION, "config": fine_config, "on_completion": "keep"})
    assert fine.status_code == 200, fine.text
    assert len(await thread_ids(http)) == len(threads) + 6 + 1


async def test_lone_surrogates_are_refused_anywhere_in_a_body(http: httpx.AsyncClient) -> None:
    threads = await seeded(http)
    lone = '"\\ud800"'
    await assert_refused(http, 422, "/threads", raw({"metadata": {"note": "@s"}}, s=lone), "InvalidInputError")
    await assert_refused(http, 422, "/threads", b'{"metadata": {"\\udfff": 1}}', "InvalidInputError")
    run = {**MIGRATION, "input": {**MIGRATION["input"], "context": {"notes": ["ok", "@s"]}}}
    await assert_refused(http, 422, "/runs/wait", raw(run, s=lone), "InvalidInputError")
    await assert_refused(
        http, 422, f"/threads/{threads[1]}/runs/wait", raw({"command": {"resume": {"x": "@s"}}}, s=lone)
    )
    # A surrogate written as raw UTF-8 bytes (not valid UTF-8) is refused too.
    await assert_refused(http, 400, "/threads", b'{"metadata": {"note": "\xed\xa0\x80"}}')
    assert await thread_ids(http) == set(threads)
    # A proper pair (an emoji) is text like any other.
    pair = await http.post("/threads", content=b'{"metadata": {"note": "\\ud83d\\ude00"}}', headers=JSON)
    assert pair.status_code == 200 and pair.json()["metadata"] == {"note": "\U0001f600"}


async def test_non_finite_numbers_are_refused_on_every_backend(http: httpx.AsyncClient) -> None:
    threads = await seeded(http)
    for literal in ("NaN", "Infinity", "-Infinity", "1e400", "-1e400"):
        await assert_refused(http, 422, "/threads", raw({"metadata": {"x": "@n"}}, n=literal), "InvalidInputError")
        lifecycle = {"client_id": "c-1", "metrics": {"contract_signed": "@n"}}
        await assert_refused(http, 422, "/journeys/lifecycle", raw(lifecycle, n=literal))
        resume = {"command": {"resume": {"files": "@n"}}}
        await assert_refused(http, 422, f"/threads/{threads[0]}/runs/wait", raw(resume, n=literal))
    assert await thread_ids(http) == set(threads)
    for thread in threads:
        assert len((await http.get(f"/threads/{thread}/runs")).json()) == 1


async def test_durations_that_are_not_a_finite_number_of_seconds_are_refused(http: httpx.AsyncClient) -> None:
    """A step's timeout of "P99999999999D" answered 500 (isodate's OverflowError); "NaN" (a string, which the
    input guard lets through) was designed, and every attempt of the step then timed out at once ("did not answer
    within nan s"); a retry delay of "NaN" was designed and failed each execution. Each is a 422 now."""
    durations = ["P99999999999D", "PT99999999999999999999S", "NaN", "nan", "Infinity", "inf", "1e400"]
    steps: list[dict[str, Any]] = [{"timeout": duration} for duration in durations]
    steps += [{"retry": {which: duration}} for which in ("initial_delay", "max_delay") for duration in durations]
    for options in steps:
        spec = {"journey_type": "quotes", "steps": [{"step_id": "quote", "agent": "default_agent", **options}]}
        design = {"journey_type": "quotes", "spec": spec}
        await assert_refused(http, 422, "/journeys/structured/designs", json.dumps(design).encode())
    spec = {"journey_type": "quotes", "steps": [{"step_id": "quote", "timeout": "P365D", "retry": {"max_delay": 1e9}}]}
    assert (await http.post("/journeys/structured/designs", json={"journey_type": "quotes", "spec": spec})).is_success


async def test_identifiers_and_strings_have_the_same_limits_on_every_backend(http: httpx.AsyncClient) -> None:
    threads = await seeded(http)
    huge = "m" * 1_000_000
    long = "x" * 1000  # far below the body and string limits, above every identifier column
    await assert_refused(http, 422, "/journeys/lifecycle", raw({"client_id": "c-1", "metrics": {huge: 1}}))
    await assert_refused(http, 422, "/journeys/lifecycle", raw({"client_id": "c-1", "metrics": {long: 1}}))
    await assert_refused(http, 422, "/journeys/lifecycle", raw({"client_id": long}))
    start = {**MIGRATION, "input": {**MIGRATION["input"], "user_id": huge}}
    await assert_refused(http, 422, "/runs/wait", raw(start))
    start = {**MIGRATION, "input": {**MIGRATION["input"], "user_id": long}}
    await assert_refused(http, 422, "/runs/wait", raw(start))
    await assert_refused(http, 422, "/journeys/structured/designs", raw({"journey_type": long}))
    await assert_refused(http, 422, f"/threads/{'t' * 1000}/runs/wait", raw({**MIGRATION, "if_not_exists": "create"}))
    # A string longer than the general limit is refused wherever it is, even in free-form data.
    await assert_refused(http, 422, "/threads", raw({"metadata": {"note": huge}}), "InvalidInputError")
    assert await thread_ids(http) == set(threads)
    for thread in threads:
        assert len((await http.get(f"/threads/{thread}/runs")).json()) == 1


async def test_bodies_over_the_limit_are_refused_before_they_are_read(base: str, http: httpx.AsyncClient) -> None:
    threads = await seeded(http)
    limit = InputLimits().max_body_bytes
    over = b'{"metadata": {"note": "' + b"a" * limit + b'"}}'
    declared = await http.post("/threads", content=over, headers=JSON)
    assert declared.status_code == 413 and declared.json()["code"] == "ContentTooLarge", declared.text[:300]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while it streams
        for start in range(0, len(over), 65536):
            yield over[start : start + 65536]

    streamed = await http.post("/threads", content=chunks(), headers=JSON)
    assert streamed.status_code == 413 and streamed.json()["code"] == "ContentTooLarge", streamed.text[:300]
    async with httpx.AsyncClient(base_url=base, timeout=60) as anonymous:
        # Without a key: refused before the body is read (a small body: 401; a large one: 413 unread).
        small = await anonymous.post("/threads", content=b'{"metadata": {}}', headers=JSON)
        assert small.status_code == 401
        large = await anonymous.post("/threads", content=over, headers=JSON)
        assert large.status_code == 413
        streamed_anonymous = await anonymous.post("/threads", content=chunks(), headers=JSON)
        assert streamed_anonymous.status_code == 401
    assert await thread_ids(http) == set(threads)


def test_a_caller_without_a_key_is_answered_before_the_body_is_sent(base: str) -> None:
    """Authorization comes before the body is read: a request without a key that declares a body under the
    limit but sends only its first bytes is answered 401 at once; a server that read the body first would wait
    for the rest (the client here never sends it)."""
    host, port = base.removeprefix("http://").split(":")
    for path in ("/threads", "/runs/wait", "/journeys/lifecycle", "/processes", "/threads/search"):
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            conn.sendall(f"{head}Content-Length: 100000\r\n\r\n".encode() + b'{"metadata": {')
            try:
                status_line = conn.recv(4096).split(b"\r\n")[0]
            except TimeoutError:
                status_line = b"no answer in 10 s: the server waited for the body"
        assert status_line == b"HTTP/1.1 401 Unauthorized", (path, status_line)


async def test_the_limits_are_settings(sqlite_url: str) -> None:
    limits = InputLimits(max_body_bytes=2000, max_depth=5, max_string_chars=100)
    with serving(create_app(Settings(database_url=sqlite_url, api_keys=KEYS, limits=limits))) as base:
        async with httpx.AsyncClient(base_url=base, headers=KEY, timeout=60) as http:
            assert (await http.post("/threads", json={"metadata": nested(4, 1)})).status_code == 200  # 5 deep
            await assert_refused(http, 422, "/threads", raw({"metadata": nested(5, 1)}))
            assert (await http.post("/threads", json={"metadata": {"n": "a" * 100}})).status_code == 200
            await assert_refused(http, 422, "/threads", raw({"metadata": {"n": "a" * 101}}))
            await assert_refused(http, 422, "/threads", raw({"metadata": {"a" * 101: 1}}))
            await assert_refused(http, 413, "/threads", raw({"metadata": {f"k{i}": i for i in range(300)}}))
            assert len(await thread_ids(http)) == 2


def test_serve_takes_the_limits_from_options_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from server.cli import app as cli

    served: list[Any] = []

    def run(server: uvicorn.Server, sockets: list[socket.socket]) -> None:
        served.append(server.config.app)
        server.started = True

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setenv("JOURNEYS_MAX_STRING_CHARS", "500")
    serve = ["serve", "--no-auth", "--port", str(free_port())]  # it binds the port before it serves
    done = CliRunner().invoke(cli, [*serve, "--max-body-bytes", "4096", "--max-json-depth", "8"])
    assert done.exit_code == 0, done.output
    assert served[0].state.settings.limits == InputLimits(max_body_bytes=4096, max_depth=8, max_string_chars=500)
    monkeypatch.delenv("JOURNEYS_MAX_STRING_CHARS")
    assert CliRunner().invoke(cli, serve).exit_code == 0
    assert served[1].state.settings.limits == InputLimits()
    refused = CliRunner().invoke(cli, ["serve", "--no-auth", "--max-json-depth", "0"])
    assert refused.exit_code == 2 and "max-json-depth" in refused.output


def test_a_body_whose_text_proves_it_keepable_is_not_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run request's body was walked value by value (checkpoints.values.check_value) although its text alone
    proved there was nothing to refuse: no ``\\u`` escape (the only way a NUL or a lone surrogate gets in),
    shorter than the string limit, fewer objects and arrays than the depth limit, no number parsed as
    infinity. Such a body is now taken as parsed; any other is walked, and refused as before, naming where."""
    walked: list[Any] = []
    real = values.check_value

    def counting(document: Any, *args: Any, **kwargs: Any) -> None:
        walked.append(document)
        real(document, *args, **kwargs)

    monkeypatch.setattr(input_guard, "check_value", counting)
    limits = InputLimits()
    steps = [{"step_id": f"s{i}", "mode": "auto", "agent": "a", "timeout": 1.5} for i in range(8)]
    plain = {**MIGRATION, "input": {"journey_type": "j", "spec": {"steps": steps}, "user_id": "ana"}}
    assert input_guard.check_json(json.dumps(plain).encode(), limits) == plain
    assert walked == []
    refused = {
        "contains a NUL character": raw({"metadata": {"note": "@s"}}, s='"a\\u0000b"'),
        "lone surrogate": raw({"metadata": {"note": "@s"}}, s='"\\udfff"'),
        "too large for a double": raw({"metadata": {"note": "@n"}}, n="1e400"),
        f"over the limit of {limits.max_string_chars}": raw({"metadata": {"x": "x" * (limits.max_string_chars + 1)}}),
        f"nests deeper than {limits.max_depth} levels": raw({"metadata": nested(limits.max_depth, 1)}),
    }
    for problem, body in refused.items():
        with pytest.raises(InvalidInputError, match=problem) as caught:
            input_guard.check_json(body, limits)
        assert caught.value.message.startswith("the request body at body.metadata"), caught.value.message
    assert len(walked) == len(refused)
    # Escapes of other characters, and numbers, are taken as they were: walked, and nothing found.
    assert input_guard.check_json(b'{"note": "caf\\u00e9", "n": [1e300, -0.5]}', limits) == {
        "note": "caf\u00e9",
        "n": [1e300, -0.5],
    }
    assert len(walked) == len(refused) + 1
