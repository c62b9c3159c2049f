"""Redaction: secrets planted in a run's input, a step's result and an agent's output (and in an agent's
error) appear in no log line, no event row and no API answer, while the agent still gets the values the
journey gives it."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import create_engine, text

from agents import AgentRegistry, AgentRequest, PermanentAgentError
from checkpoints import redaction
from checkpoints.errors import JourneyError
from checkpoints.redaction import (
    MAX_LABEL_CHARS,
    REDACTED,
    is_sensitive,
    mark_sensitive,
    redact,
    redact_envelope,
    redact_label,
    redact_text,
)
from checkpoints.url import parse_store_url
from graphs import JourneyRuntime
from nodes.telemetry import METRICS
from server.app import create_app
from server.logs import configure_logging
from server.settings import Settings
from tests.server_support import serving

PASSWORD = "hunter2-Xq7"
SECRETS = {
    "password": PASSWORD,
    "email": "ana.secret@example.com",
    "card": "4111 1111 1111 1111",
    "bearer": "Bearer eyJhbGciOiJIUzI1NiJ9abcdef",
    "api_key": "sk-live-ABCDEFGHIJKLMNOP1234",
    "marked": "favourite-colour-teal",  # only secret because a spec marks its field sensitive
}


def test_redact_replaces_sensitive_fields_and_secret_shapes_only() -> None:
    mark_sensitive(["colour"])
    value = {
        "password": "x",
        "db": {"openai_api_key": "y", "total_tokens": 12, "colour": "teal"},
        "notes": [f"mail {SECRETS['email']} and {SECRETS['bearer']}", f"card {SECRETS['card']}", "order 12345"],
        "digits": "4111 1111 1111 1112",  # fails the Luhn check: not a card
    }
    assert redact(value) == {
        "password": REDACTED,
        "db": {"openai_api_key": REDACTED, "total_tokens": 12, "colour": REDACTED},
        "notes": [f"mail {REDACTED} and {REDACTED}", f"card {REDACTED}", "order 12345"],
        "digits": "4111 1111 1111 1112",
    }
    assert value["password"] == "x"  # a copy: the value itself is left as it was


# Every leading group is digits, and those 16 digits pass the Luhn check: a card number's shape inside an id.
CARD_SHAPED_UUID = "10000000-1234-1234-1234-123456789012"


def test_identifiers_are_never_taken_for_card_numbers() -> None:
    for ident in (CARD_SHAPED_UUID, "00000000-0000-0000-0000-000000000000", "run-4111111111111111"):
        assert redact_text(ident) == ident
        assert redact({"thread_id": ident, "note": f"see {ident}."}) == {"thread_id": ident, "note": f"see {ident}."}
    # A card number is still one, however it is written.
    for card in ("4111-1111-1111-1111", "4111 1111 1111 1111", "4111111111111111", "(4111111111111111)"):
        assert redact_text(f"paid with {card}.") == f"paid with {card.replace(card.strip('()'), REDACTED)}."


def test_a_thread_whose_id_looks_like_a_card_number_is_served_under_its_own_id(durable_url: str) -> None:
    app = create_app(Settings(database_url=durable_url, auth=False))
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        created = http.post("/threads", json={"thread_id": CARD_SHAPED_UUID})
        assert created.status_code == 200, created.text
        assert created.json()["thread_id"] == CARD_SHAPED_UUID
        fetched = http.get(f"/threads/{CARD_SHAPED_UUID}")
        assert fetched.status_code == 200 and fetched.json()["thread_id"] == CARD_SHAPED_UUID
        found = http.post("/threads/search", json={}).json()
        assert [thread["thread_id"] for thread in found] == [CARD_SHAPED_UUID]


@pytest.fixture
def logged(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    saved = structlog.get_config()
    configure_logging(logging.INFO)
    yield capsys
    structlog.reset_defaults()
    structlog.configure(**saved)


def test_planted_secrets_reach_the_agent_and_the_log_but_no_log_line_or_answer(
    durable_url: str, logged: pytest.CaptureFixture[str]
) -> None:
    received: list[dict[str, Any]] = []

    def upload(request: AgentRequest) -> dict[str, Any]:
        received.append(dict(request.payload))
        return {"uploaded": 3, "api_key": SECRETS["api_key"], "receipt": f"sent to {SECRETS['email']}"}

    def analyze(request: AgentRequest) -> dict[str, Any]:
        raise PermanentAgentError(f"upstream refused {SECRETS['bearer']} for {SECRETS['email']}")

    agents = AgentRegistry()
    agents.register("upload_content", upload)
    agents.register("analyze_content", analyze)
    spec = {
        "journey_type": "secret_migration",
        "sensitive": ["favourite"],
        "steps": [
            {"step_id": "upload_content", "agent": "upload_content"},
            {"step_id": "analyze_content", "agent": "analyze_content"},
        ],
    }
    answers: list[str] = []
    settings = Settings(database_url=durable_url, auth=False)
    app = create_app(settings, runtime_options={"agents": agents})
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as http:

        def call(method: str, path: str, body: Any = None) -> Any:
            answer = http.request(method, path, json=body)
            answers.append(answer.text)
            return answer

        context = {"password": PASSWORD, "contact": SECRETS["email"], "favourite": SECRETS["marked"]}
        run = {
            "assistant_id": "structured",
            "input": {"journey_type": "secret_migration", "spec": spec, "context": context},
            "on_completion": "keep",  # resumed on its thread
        }
        started = call("POST", "/runs/wait", run)
        assert started.status_code == 200, started.text
        thread = call("POST", "/threads/search", {}).json()[0]["thread_id"]
        result = {"card": SECRETS["card"], "auth": SECRETS["bearer"], "files": 3}
        resume = {"assistant_id": "structured", "command": {"resume": result}}
        call("POST", f"/threads/{thread}/runs/wait", resume)
        call("POST", f"/threads/{thread}/runs/wait", {"assistant_id": "structured", "command": {"resume": {}}})
        streamed = call("POST", f"/threads/{thread}/runs/stream", {**resume, "stream_mode": "values"})
        instance = call("GET", f"/threads/{thread}").json()["metadata"]["instance_id"]
        for path in (f"/threads/{thread}/state", f"/journeys/{instance}/history", f"/journeys/{instance}/status"):
            call("GET", path)
        call("POST", f"/threads/{thread}/history", {})
        for listed in call("GET", f"/threads/{thread}/runs").json():
            call("GET", f"/threads/{thread}/runs/{listed['run_id']}")
        assert streamed.status_code == 200

    # The journey's own values reached the agent.
    assert received and received[0]["context"]["password"] == PASSWORD
    assert received[0]["step_result"]["card"] == SECRETS["card"]
    # The event log keeps them whole, as the journey's state does: recovery replays the journey from it (its
    # start's context, its logged outputs); encryption at rest protects both (test_encryption_at_rest).
    engine = create_engine(parse_store_url(durable_url).sqlalchemy_url.replace("+aiosqlite", ""))
    try:
        with engine.connect() as conn:
            rows = [str(row) for row in conn.execute(text("SELECT type, payload FROM journey_events"))]
    finally:
        engine.dispose()
    assert any("agent.failed" in row for row in rows) and any(SECRETS["email"] in row for row in rows)
    # And none of them is in an answer (the history's among them) or a log line.
    log = logged.readouterr().out
    assert "agent call failed" in log
    for name, secret in SECRETS.items():
        for where, texts in (("answer", answers), ("log", [log])):
            assert not [t for t in texts if secret in t], f"{name} in an {where}"
    assert any(REDACTED in answer for answer in answers)


async def test_spans_metric_labels_and_log_text_share_the_one_redaction(
    store_url: str, spans: InMemorySpanExporter
) -> None:
    def refuse(request: AgentRequest) -> dict[str, Any]:
        raise PermanentAgentError(f"login password={PASSWORD} refused for {SECRETS['email']} ({SECRETS['bearer']})")

    agents = AgentRegistry()
    agents.register("pay password=hunter2-Xq7", refuse)
    spec = {"journey_type": "leaky", "steps": [{"step_id": "pay", "agent": "pay password=hunter2-Xq7", "mode": "auto"}]}
    async with JourneyRuntime.open(store_url, agents=agents) as runtime:
        design = await runtime.structured.design_journey("leaky", spec=spec)
        with pytest.raises(JourneyError):
            await runtime.structured.execute_journey(design["journey_id"], "ana", {})
    recorded = [
        str(value)
        for span in spans.get_finished_spans()
        for attributes in (span.attributes or {}, *(event.attributes or {} for event in span.events))
        for value in attributes.values()
    ]
    assert any("AgentCallFailedError" in value for value in recorded)  # the failure is in the trace
    labels = [value for metric in METRICS.collect() for sample in metric.samples for value in sample.labels.values()]
    assert "pay password=[REDACTED]" in labels
    for name, secret in (("password", PASSWORD), ("email", SECRETS["email"]), ("bearer", SECRETS["bearer"])):
        assert not [value for value in recorded if secret in value], f"{name} in a span"
        assert not [value for value in labels if secret in value], f"{name} in a metric label"
    # One mechanism: a label is the redacted text, cut short.
    text = f"pay password={PASSWORD} for {SECRETS['email']} " + "x" * 200
    assert redact_label(text) == redact_text(text)[:100] == f"pay password={REDACTED} for {REDACTED} " + "x" * 61


def _redact_text_every_pass(text: str) -> str:
    """The reference: every pattern pass run over the whole text, no pre-check (what redact_text does up to
    ONE_PASS_CHARS)."""
    text = redaction._SECRET_ASSIGNMENT.sub(
        lambda match: match.group(1) + REDACTED, redaction._PATTERNS.sub(REDACTED, text)
    )
    return redaction._CARD.sub(redaction._card, text)


# Pieces of every secret shape, their near misses and the characters case-insensitive matching folds
# (the long s, the Kelvin sign, the dotted I), other scripts' digits, separators and plain words.
FRAGMENTS = (
    "Bearer ", "bearer ", "Bearer\t", "sk-", "sk_", "pk-live-", "rk_test_", "sk-proj-", "ghp_", "gho_", "ghs_",
    "github_pat_", "gh", "xoxb-", "xoxp-", "xox", "AKIA", "eyJ", "eyJhbGciOi", ".", "@", "a@b.cc",
    "ana.x@example.com", "=", ":", " = ", "password", "PASSWORD", "pwd", "\u017fecret", "token", "api_key",
    "API-KEY", "apikey", "a\u212acess_key", "private-key", "passphrase", "4111 1111 1111 1111", "4111111111111111",
    "4111-1111-1111-1111", "0", "1", "9", "\u0664", "\u0967", "12345678", "-", "_", " ", "k", "K", "\u212a",
    "\u0130", "x", "step_2", "noop", "2026-12-04T05:25:11+00:00", "ABCDEFGHIJKLMNOP", "abcdefghij0123456789", "\u00e9",
    "\n", ",", ";", "&",
)  # fmt: skip


def test_the_pre_checks_of_redact_text_change_no_result() -> None:
    # redact_text skips a pattern pass when its text holds nothing that pass could match: on texts built of
    # every shape's pieces, near misses and case-folding characters, it returns what running every pass returns.
    rng = random.Random(15)
    texts = ["".join(rng.choices(FRAGMENTS, k=rng.randint(0, 12))) for _ in range(30_000)]
    texts += ["".join(rng.choices(FRAGMENTS[:40], k=3)) + "ABCDEFGHIJKLMNOPQRST0123456789" for _ in range(3_000)]
    changed = 0
    for sample in texts:
        expected = _redact_text_every_pass(sample)
        assert redact_text(sample) == expected, sample
        assert redact_label(sample) == expected[:MAX_LABEL_CHARS], sample
        assert redact_label(sample) == expected[:MAX_LABEL_CHARS], sample  # the cached answer too
        changed += expected != sample
    assert changed > len(texts) // 4  # the texts do hold secrets: the passes ran, not only the pre-checks


# Texts built to make a pattern backtrack or rescan: runs of one piece, JWT-like runs with many ``-eyJ``, keys
# inside other shapes' runs, addresses whose domain never ends, digits in groups, lone surrogates.
CRAFTED = (
    "eyJ-", "-eyJ" + "a" * 12, "eyJ" + "a" * 13 + ".", "sk-eyJ" + "a" * 16 + "-", "1 ", "1", "@", "a@", "a@b-", "a.",
    "x@y.zz ", "Bearer ", "Bearer" + " " * 40, "sk-", "sk-live-", "ghp_", "xoxb-", "AKIA", "token ", "password=",
    "pwd:", "4111 1111 1111 1111 ", "4111-", "\ud800", "\u0664", "a" * 30 + "@b.cc-",
)  # fmt: skip


def test_crafted_text_is_redacted_as_before_in_time_linear_in_its_length() -> None:
    """One regex of every shape, tried at every position, rescanned a JWT-like run from each ``-eyJ`` in it:
    64 KiB of ``eyJ-`` took 1.4 CPU-s and 1 MiB would take minutes, all of it on the server's event loop (an
    answer, a log line). Each shape is now searched for from its literal start, and a run scanned once."""
    rng = random.Random(26)
    units = CRAFTED + tuple("".join(rng.choices(CRAFTED + FRAGMENTS, k=3)) for _ in range(40))
    for unit in units:
        small = unit * (4_096 // len(unit) + 1)
        assert redact_text(small) == _redact_text_every_pass(small), unit
        large = unit * (65_536 // len(unit) + 1)
        began = time.process_time()
        redact_text(large)
        took = time.process_time() - began
        assert took < 0.5, f"{unit!r} * {len(large) // len(unit)}: {took:.2f} CPU-s"  # ~10 ms now, 1.4 s before
    # Long texts mixing every shape and near miss: the shapes' matches taken in the one regex's order.
    for _ in range(2_000):
        sample = "".join(rng.choices(CRAFTED + FRAGMENTS, k=rng.randint(130, 200)))
        assert len(sample) > redaction.ONE_PASS_CHARS
        assert redact_text(sample) == _redact_text_every_pass(sample), sample
    assert redact({"n": float("inf"), "s": ["\ud800ana@x.io", 4111111111111111]}) == {
        "n": float("inf"),
        "s": [f"\ud800{REDACTED}", 4111111111111111],  # a number is not searched: it is no text
    }


def test_is_sensitive_follows_marks_made_after_a_name_was_seen() -> None:
    name = "favourite_planet_s6"
    assert not is_sensitive(name)
    assert redact({name: "mars"}) == {name: "mars"}
    mark_sensitive([name.upper()])
    assert is_sensitive(name)
    assert redact({name: "mars"}) == {name: REDACTED}


def test_a_field_given_as_a_name_and_a_value_is_redacted_by_its_name() -> None:
    """A process records its variable changes as ``{"name", "value"}`` pairs; its history answer showed a
    marked variable's value in clear."""
    mark_sensitive(["vip_pin_p7"])
    changes = {"changes": [{"name": "vip_pin_p7", "value": "1234", "version": 1}, {"name": "x", "value": "ok"}]}
    shown = {"changes": [{"name": "vip_pin_p7", "value": REDACTED, "version": 1}, {"name": "x", "value": "ok"}]}
    assert redact(changes) == shown
    assert redact_envelope({"payload": changes}, frozenset({"payload"})) == {"payload": shown}
    assert redact({"headers": [{"name": "Authorization", "value": "Basic abc"}]}) == {
        "headers": [{"name": "Authorization", "value": REDACTED}]
    }
