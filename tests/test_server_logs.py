"""The logging `journeys serve` and `journeys worker` set up: a failing request's traceback shows no local
variables (secrets in its input stayed out of the log), and rendering an event costs the same whatever
a request carried (it runs on the event loop)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from server.logs import MAX_TRACEBACK_LINES, MAX_VALUE_CHARS, configure_logging

SECRET = "sk-live-0123456789abcdef"


@pytest.fixture
def configured() -> Iterator[None]:
    saved = structlog.get_config()
    configure_logging(logging.INFO, "console")
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"token": SECRET, "blob": "x" * 100_000}
    for _ in range(depth):
        value = {"a": value}
    return value


def fail_deep(context: dict[str, Any], depth: int) -> None:
    secret = context  # a local holding the request's input, as LangGraph's frames hold it
    if depth:
        fail_deep(secret, depth - 1)
    raise TypeError("Recursion limit reached")


@pytest.mark.usefixtures("configured")
def test_a_failing_requests_traceback_shows_no_locals_and_is_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    log = structlog.get_logger("journeys.runs")
    started = time.perf_counter()
    try:
        fail_deep(nested(255), 600)
    except TypeError:
        log.exception("run failed", run_id="r-1", context=nested(255), note="n" * 1_000_000)
    rendered = time.perf_counter() - started
    out = capsys.readouterr().out
    assert "run failed" in out and "r-1" in out
    assert "Traceback (most recent call last)" in out and "TypeError: Recursion limit reached" in out
    assert "fail_deep" in out  # the frames are there, their variables are not
    assert SECRET not in out and "secret =" not in out.replace("secret = context", "")
    assert "x" * 1000 not in out
    assert len(out) < 2 * (MAX_TRACEBACK_LINES + 10) * MAX_VALUE_CHARS // 10
    assert max(len(line) for line in out.splitlines()) < 4 * MAX_VALUE_CHARS  # the event line: three values
    assert rendered < 1.0  # it was 46 s with every local rendered


@pytest.mark.usefixtures("configured")
def test_levels_below_the_configured_one_are_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    log = structlog.get_logger("journeys.server")
    log.debug("hidden")
    log.info("shown", value={"k": [1, 2, 3]})
    out = capsys.readouterr().out
    assert "hidden" not in out and "shown" in out and "{'k': [1, 2, 3]}" in out
