"""The workflow catalog of seeds/orchestration-guide.md, item by item, with the guide's words.

Sections 6-8 name sixteen workflows and the shape of each (sequential, concurrent, conditional, timed,
saga). Every one is a ready template in ``runtime.processes.catalog``; this module checks that each
template has the shape the guide gives it, and that each deploys and runs offline on the three
backends with the deterministic default agents. (The guide's other sections, the patterns the
runtime provides, are exercised by the resilience, security and observability tests.)
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from graphs.process import ProcessSpec
from graphs.process.catalog import default_process_catalog
from tests.process_support import runtime

# The guide's catalog line → the template that implements it, and the shape the line asks for:
# "sequential" (these service tasks in this order), "concurrent" (a parallel fork), "conditional"
# (an exclusive gateway), "review" (a user task), "timed" (a timer, or a cron start), "saga".
CATALOG: dict[str, tuple[str, dict[str, Any]]] = {
    "Go-to-market planning": (
        "go_to_market_planning",
        {"sequential": ["research", "messaging", "assets"], "review": "compliance_review"},
    ),
    "Lead qualification": ("lead_qualification", {"conditional": True, "scores": ["fit", "intent", "risk"]}),
    "Proposal generation": (
        "proposal_generation",
        {"concurrent": ["gather_facts", "draft"], "review": "final_approval"},
    ),
    "Customer onboarding": ("customer_onboarding", {"timed": True}),
    "Support triage": (
        "support_triage",
        {"concurrent": ["classify_category", "classify_urgency"], "conditional": True},
    ),
    "Incident response": ("incident_response", {"saga": True}),
    "Data quality": ("data_quality", {"timed": True, "conditional": True}),
    "Reporting and analytics": (
        "reporting_analytics",
        {"concurrent": ["pull_sales", "pull_marketing", "pull_finance"], "sequential": ["aggregate", "validate"]},
    ),
    "Document drafting": (
        "document_drafting",
        {"sequential": ["outline", "draft"], "review": "review", "then": "finalize"},
    ),
    "Summarization": (
        "summarization",
        {"sequential": ["chunk"], "concurrent": ["summarize_head", "summarize_body"], "then": "merge"},
    ),
    "Knowledge base Q&A": ("knowledge_base_qa", {"conditional": True, "first": "check_permissions"}),
    "Ticket triage": ("support_triage", {"concurrent": ["classify_category", "classify_urgency"]}),
    "Localization": ("localization", {"sequential": ["extract_strings", "translate", "check_terminology"]}),
    "Proposal workflow": ("proposal_generation", {"sequential": ["intake", "capture_requirements"]}),
    "Support workflow": ("support_triage", {"sequential": ["resolve"], "then": "close"}),
    "Policy update": (
        "policy_update",
        {"sequential": ["draft_changes"], "review": "stakeholder_signoff", "then": "notify"},
    ),
}


def _reachable_order(spec: ProcessSpec) -> list[str]:
    """Element ids in the order a walk along the flows first meets them (breadth first from the starts)."""
    seen: list[str] = []
    frontier = [s.id for s in spec.starts()]
    while frontier:
        current = frontier.pop(0)
        if current in seen:
            continue
        seen.append(current)
        frontier += [f.target for f in spec.outgoing(current)]
    return seen


def _types(spec: ProcessSpec) -> dict[str, str]:
    return {e.id: e.type for e in spec.elements}


def test_every_catalog_item_of_the_guide_has_a_template() -> None:
    names = set(default_process_catalog().names())
    missing = {item: template for item, (template, _shape) in CATALOG.items() if template not in names}
    assert missing == {}


@pytest.mark.parametrize("item", sorted(CATALOG), ids=lambda item: item.lower().replace(" ", "_"))
def test_each_template_has_the_shape_the_guide_gives_it(item: str) -> None:
    template, shape = CATALOG[item]
    spec = default_process_catalog().build(template)
    types, order = _types(spec), _reachable_order(spec)
    assert default_process_catalog().get(template).description  # `journeys templates` lists it with a line
    if "sequential" in shape:
        steps = shape["sequential"]
        assert all(types[s] == "service_task" for s in steps), item
        assert [s for s in order if s in steps] == steps, item
        for earlier, later in itertools.pairwise(steps):
            assert later in [f.target for f in spec.outgoing(earlier)], (item, earlier, later)
    if "concurrent" in shape:
        forks = [e for e in spec.elements if e.type == "parallel_gateway" and len(spec.outgoing(e.id)) > 1]
        assert forks, item
        branches = {f.target for fork in forks for f in spec.outgoing(fork.id)}
        assert set(shape["concurrent"]) <= branches, item
    if shape.get("conditional"):
        assert "exclusive_gateway" in types.values(), item
    if "review" in shape:
        assert types[shape["review"]] == "user_task", item
    if "then" in shape:
        assert order.index(shape["then"]) > min(order.index(s) for s in shape.get("sequential", [shape["then"]])), item
    if shape.get("timed"):
        timed = [e for e in spec.elements if e.type == "timer" or (e.type == "start" and e.trigger == "timer")]
        assert timed, item
    if shape.get("saga"):
        assert any(e.type == "service_task" and e.compensation for e in spec.elements), item
    if "first" in shape:
        assert order[1] == shape["first"], item
    if "scores" in shape:
        assert all(any(score in e.id for e in spec.elements) for score in shape["scores"]), item


@pytest.mark.parametrize("template", sorted({template for template, _shape in CATALOG.values()}))
async def test_each_template_deploys_and_runs_offline(store_url: str, template: str) -> None:
    async with runtime(store_url) as rt:
        await rt.processes.deploy_template(template)
        spec = rt.processes.catalog.build(template)
        if spec.plain_start() is None:  # started by a message (or a timer): the guide's trigger
            start = next(s for s in spec.starts() if s.trigger == "message")
            sent = await rt.processes.send_message(str(start.message), "key-1", {"topic": "seed"})
            [instance_id] = sent["started"]
            view = await rt.processes.status(instance_id)
        else:
            view = await rt.processes.start(template, "key-1")
        # Offline and deterministic: it ends, or it waits where the guide puts a person, a timer or a message.
        assert view["status"] in ("completed", "waiting", "in_progress"), (template, view["status"])
        assert view["status"] != "failed"
