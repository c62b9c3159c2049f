"""The process templates (SPEC B8, G6): the seed's three examples and twelve from the orchestration guide's
catalog, each driven through its paths with deterministic agents. Every test runs on memory, SQLite
and Postgres, on a virtual clock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from agents import AgentRequest, TransientAgentError
from graphs import UnknownTemplateError
from tests.process_support import Calls, runtime, virtual_clock, waiting_elements


def by_key(field: str, table: dict[str, Any], default: Any = None) -> Any:
    """An agent output chosen by the instance's business key."""

    def output(request: AgentRequest) -> dict[str, Any]:
        key = request.payload["variables"].get("business_key")
        return {field: table.get(str(key), default)}

    return output


async def completed_steps(rt: Any, instance_id: str) -> list[str]:
    return [str(e.step) for e in await rt.processes.history(instance_id) if e.type == "task.completed"]


async def test_the_catalog_lists_its_templates_and_runs_offline(store_url: str) -> None:
    async with runtime(store_url) as rt:
        names = rt.processes.catalog.names()
        assert names == [
            "customer_onboarding",
            "data_quality",
            "document_drafting",
            "go_to_market_planning",
            "incident_response",
            "knowledge_base_qa",
            "lead_qualification",
            "localization",
            "marketing_campaign",
            "policy_update",
            "pr_review",
            "proposal_generation",
            "reporting_analytics",
            "summarization",
            "support_triage",
        ]
        with pytest.raises(UnknownTemplateError) as caught:
            rt.processes.catalog.get("pr_reveiw")
        assert "pr_review" in str(caught.value)
        for name in names:  # every template deploys with deterministic default agents
            assert (await rt.processes.deploy_template(name))["version"] == 1
        view = await rt.processes.start("document_drafting", "doc-1")
        assert waiting_elements(view) == ["review"]


async def test_pr_review_deploys_approved_prs_and_files_issues_for_the_rest(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        calls.register(
            rt,
            "wowvision.validate",
            lambda r: {"approved": r.payload["variables"]["pr_number"] == "42", "findings": []},
        )
        calls.register(rt, "github.deploy", {"deployment_id": "d-1"})
        calls.register(rt, "github.create_issue", {"issue_number": 7})
        await rt.processes.deploy_template("pr_review")
        approved = await rt.processes.send_message("github.pull_request.opened", "42", {"title": "Add docs"})
        rejected = await rt.processes.send_message("github.pull_request.opened", "43", {"title": "YOLO"})

        good = await rt.processes.status(approved["started"][0])
        bad = await rt.processes.status(rejected["started"][0])
        assert (good["outcome"], good["variables"]["deployment_id"]) == ("deployed", "d-1")
        assert (bad["outcome"], bad["variables"]["issue_number"]) == ("changes_requested", 7)
        assert await completed_steps(rt, good["instance_id"]) == ["wowvision_validate", "deploy"]
        assert await completed_steps(rt, bad["instance_id"]) == ["wowvision_validate", "create_issue"]


async def test_customer_onboarding_waits_seven_days_then_takes_one_of_three_ways(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        calls.register(rt, "crm.capture_lead", {"score": 70})
        outcome = {"c-1": "converted", "c-2": "engaged", "c-3": "low_score"}
        calls.register(rt, "analytics.check_conversion", by_key("conversion", outcome))
        for intent in ("billing.activate", "marketing.nurture", "crm.mark_churned"):
            calls.register(rt, intent)
        await rt.processes.deploy_template("customer_onboarding")
        views = [await rt.processes.start("customer_onboarding", key) for key in outcome]
        assert all(waiting_elements(v) == ["trial_period"] for v in views)

        clock.advance(timedelta(days=7) - timedelta(seconds=1))
        assert (await rt.processes.scheduler.run_due()).fired == 0
        assert "analytics.check_conversion" not in calls.intents()
        clock.advance(timedelta(seconds=1))
        assert (await rt.processes.scheduler.run_due()).resumed == 3
        outcomes = [(await rt.processes.status(v["instance_id"]))["outcome"] for v in views]
        assert outcomes == ["active", "nurturing", "churned"]


async def test_marketing_campaign_forks_content_asks_for_approval_and_launches_or_rolls_back(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        for intent in ("content.create_blog", "content.create_email"):
            calls.register(rt, intent, {"draft": intent})
        calls.register(rt, "content.create_social", {"posts": ["p1", "p2"]})
        for intent in (
            "channels.publish_blog",
            "channels.unpublish_blog",
            "channels.post_social",
            "channels.delete_social_posts",
            "channels.send_email_correction",
        ):
            calls.register(rt, intent, {"ok": True})
        failing_email = {"campaign-2"}

        def send_email(request: AgentRequest) -> dict[str, Any]:
            calls.log.append(("channels.send_email", dict(request.payload)))
            if request.payload["variables"]["business_key"] in failing_email:
                raise RuntimeError("mail provider down")
            return {"sent": 1000}

        rt.agents.register("channels.send_email", send_email)
        await rt.processes.deploy_template("marketing_campaign")
        launched = await rt.processes.start("marketing_campaign", "campaign-1")
        rolled_back = await rt.processes.start("marketing_campaign", "campaign-2")
        ignored = await rt.processes.start("marketing_campaign", "campaign-3")
        assert launched["variables"]["social_posts"] == ["p1", "p2"] and waiting_elements(launched) == ["approval"]

        tasks = {t["instance_id"]: t["task_id"] for t in await rt.processes.inbox.list_tasks(group="marketing-leads")}
        approve = {"approved": True, "notes": "ship it"}
        done = await rt.processes.inbox.complete(
            tasks[launched["instance_id"]], user="lea", groups=["marketing-leads"], payload=approve
        )
        assert (done["outcome"], done["variables"]["launch_status"]) == ("launched", "completed")
        undone = await rt.processes.inbox.complete(
            tasks[rolled_back["instance_id"]], user="lea", groups=["marketing-leads"], payload=approve
        )
        assert (undone["outcome"], undone["variables"]["launch_status"]) == ("rolled_back", "compensated")
        steps = [
            e.payload["undoes"]
            for e in await rt.processes.history(rolled_back["instance_id"])
            if e.type == "transaction.step_undone"
        ]
        assert steps == ["channels.post_social", "channels.publish_blog"]

        # Nobody approves campaign-3 within 24 hours: it goes to the directors, who reject it.
        clock.advance(timedelta(hours=24))
        await rt.processes.scheduler.run_due()
        [moved] = await rt.processes.inbox.list_tasks(group="marketing-directors")
        assert moved["instance_id"] == ignored["instance_id"]
        no = await rt.processes.inbox.complete(
            moved["task_id"], user="dir", groups=["marketing-directors"], payload={"approved": False}
        )
        assert no["outcome"] == "rejected"


async def test_a_marketing_campaign_whose_rollback_fails_stands_failed_until_its_retry_rolls_it_back(
    store_url: str,
) -> None:
    """The campaign's email failed and unpublishing the blog failed for good: the instance ended ``rolled_back``
    with the blog still online. Now it stands failed at the launch, and its retry unpublishes the blog (the
    social posts deleted before are not deleted again, nothing is published again) and ends ``rolled_back``."""
    async with runtime(store_url) as rt:
        calls = Calls()
        for intent in ("content.create_blog", "content.create_email", "content.create_social"):
            calls.register(rt, intent, {"draft": intent, "posts": []})
        for intent in ("channels.publish_blog", "channels.post_social", "channels.delete_social_posts"):
            calls.register(rt, intent, {"ok": True})
        rt.agents.register("channels.send_email", calls.failing("channels.send_email"), replace=True)
        unpublish = calls.flaky(rt, "channels.unpublish_blog", {"ok": True})
        await rt.processes.deploy_template("marketing_campaign")
        view = await rt.processes.start("marketing_campaign", "campaign-9")
        [task] = await rt.processes.inbox.list_tasks(group="marketing-leads")
        stuck = await rt.processes.inbox.complete(
            task["task_id"], user="lea", groups=["marketing-leads"], payload={"approved": True}
        )
        assert (stuck["status"], stuck["failed_element"], stuck["outcome"]) == ("failed", "launch", None)
        assert "channels.unpublish_blog" in stuck["failure"]["error"]
        channels = [i for i in calls.intents() if i.startswith("channels.")]
        assert channels == [
            "channels.publish_blog",
            "channels.post_social",
            "channels.send_email",
            "channels.delete_social_posts",
            "channels.unpublish_blog",
        ]

        unpublish["down"] = False
        done = await rt.processes.retry(view["instance_id"])
        assert (done["status"], done["outcome"], done["variables"]["launch_status"]) == (
            "completed",
            "rolled_back",
            "compensated",
        )
        assert [i for i in calls.intents() if i.startswith("channels.")] == [*channels, "channels.unpublish_blog"]


async def test_lead_qualification_routes_by_scores_and_a_silent_reviewer_disqualifies(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        calls.register(rt, "sales.score_fit", by_key("score", {"hot": 90, "cold": 20, "risky": 95}))
        calls.register(rt, "sales.score_intent", by_key("score", {"hot": 80, "cold": 10, "risky": 90}))
        calls.register(rt, "sales.assess_risk", by_key("risk", {"risky": "high"}, "low"))
        calls.register(rt, "sales.handoff")
        calls.register(rt, "marketing.nurture")
        await rt.processes.deploy_template("lead_qualification")
        hot = await rt.processes.start("lead_qualification", "hot")
        cold = await rt.processes.start("lead_qualification", "cold")
        risky = await rt.processes.start("lead_qualification", "risky")
        assert (hot["outcome"], cold["outcome"]) == ("qualified", "nurturing")
        assert waiting_elements(risky) == ["manual_review"]
        clock.advance(timedelta(hours=8))
        await rt.processes.scheduler.run_due()
        done = await rt.processes.status(risky["instance_id"])
        assert (done["outcome"], done["variables"]["decision"]) == ("disqualified", "disqualify")


async def test_support_triage_fans_out_routes_escalates_and_closes_unless_reopened(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        calls.register(rt, "support.classify_category", {"category": "billing"})
        calls.register(rt, "support.classify_urgency", by_key("urgency", {"T-1": "critical"}, "normal"))
        calls.register(rt, "support.detect_sentiment", {"sentiment": "angry"})
        for intent in ("support.resolve", "support.close", "support.notify_lead"):
            calls.register(rt, intent)
        await rt.processes.deploy_template("support_triage")
        sent = await rt.processes.send_message("support.ticket.created", "T-1", {"subject": "charged twice"})
        ticket = sent["started"][0]
        view = await rt.processes.status(ticket)
        assert {view["variables"][k] for k in ("category", "urgency", "sentiment")} == {"billing", "critical", "angry"}
        assert waiting_elements(view) == ["on_call"]

        # Nobody on call answers within 15 minutes: the managers get it.
        clock.advance(timedelta(minutes=15))
        await rt.processes.scheduler.run_due()
        [task] = await rt.processes.inbox.list_tasks(group="support-managers")
        view = await rt.processes.inbox.complete(
            task["task_id"], user="max", groups=["support-managers"], payload={"resolution": "refunded"}
        )
        assert waiting_elements(view) == ["await_feedback"]

        # The customer reopens within the quiet period: back to routing, and again to on-call.
        clock.advance(timedelta(days=1))
        reopened = await rt.processes.send_message("support.ticket.reopened", "T-1", {"reason": "still charged"})
        assert reopened["correlated"] == [ticket]
        [again] = await rt.processes.inbox.list_tasks(assignee="on-call")
        view = await rt.processes.inbox.complete(
            again["task_id"], user="on-call", payload={"resolution": "refunded twice"}
        )
        assert view["variables"]["reopen_reason"] == "still charged"

        clock.advance(timedelta(days=3))
        await rt.processes.scheduler.run_due()
        done = await rt.processes.status(ticket)
        assert done["outcome"] == "closed"
        assert calls.intents().count("support.resolve") == 2 and calls.intents().count("support.close") == 1


async def test_incident_response_is_a_saga_with_an_audit_trail(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        for intent in ("incident.page_oncall", "incident.open_war_room", "incident.apply_mitigation"):
            calls.register(rt, intent, {"page_id": "pg-1", "room": "#inc-1", "mitigation": "rollback v42"})
        for intent in (
            "incident.cancel_page",
            "incident.close_war_room",
            "incident.rollback_mitigation",
            "incident.notify_sre_lead",
        ):
            calls.register(rt, intent)
        calls.register(rt, "incident.verify_recovery", by_key("recovered", {"INC-1": True}, False))
        failing = {"INC-2"}

        def verify(request: AgentRequest) -> dict[str, Any]:
            calls.log.append(("incident.verify_recovery", dict(request.payload)))
            if request.payload["variables"]["incident_id"] in failing:
                raise RuntimeError("still burning")
            return {"recovered": True}

        rt.agents.register("incident.verify_recovery", verify, replace=True)
        await rt.processes.deploy_template("incident_response")
        good = (await rt.processes.send_message("incident.opened", "INC-1", {"severity": 1}))["started"][0]
        bad = (await rt.processes.send_message("incident.opened", "INC-2", {"severity": 1}))["started"][0]

        view = await rt.processes.status(good)
        assert waiting_elements(view) == ["postmortem"]
        [task] = await rt.processes.inbox.list_tasks(group="sre")
        done = await rt.processes.inbox.complete(
            task["task_id"], user="sam", groups=["sre"], payload={"summary": "bad deploy"}
        )
        assert (done["outcome"], done["variables"]["postmortem"]) == ("resolved", "bad deploy")

        failed = await rt.processes.status(bad)
        assert failed["status"] == "compensated"
        assert failed["compensated"] == ["mitigate", "open_war_room", "page_oncall"]
        trail = [(e.type, e.step) for e in await rt.processes.history(bad)]
        assert trail == [
            ("process.started", "incident_opened"),
            ("task.completed", "page_oncall"),
            ("task.completed", "open_war_room"),
            ("task.completed", "mitigate"),
            *[("agent.attempt_failed", "verify")] * 2,  # each attempt is logged, then the call's failure
            ("agent.failed", "verify"),
            ("instance.failed", "verify"),
            ("compensation.completed", "mitigate"),
            ("compensation.completed", "open_war_room"),
            ("compensation.completed", "page_oncall"),
            ("process.compensated", None),
        ]


async def test_document_drafting_revises_until_the_editor_approves(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        calls.register(rt, "docs.outline", {"outline": ["intro", "body"]})
        drafts = iter(["first draft", "second draft"])
        calls.register(rt, "docs.draft", lambda _r: {"draft": next(drafts)})
        calls.register(rt, "docs.finalize", lambda r: {"document": r.payload["variables"]["draft"].upper()})
        await rt.processes.deploy_template("document_drafting")
        view = await rt.processes.start("document_drafting", "doc-1")

        [review] = await rt.processes.inbox.list_tasks(group="editors")
        view = await rt.processes.inbox.complete(
            review["task_id"], user="ed", groups=["editors"], payload={"approved": False, "comments": "too short"}
        )
        assert waiting_elements(view) == ["review"] and view["variables"]["draft"] == "second draft"
        [second] = await rt.processes.inbox.list_tasks(group="editors")
        assert second["task_id"] != review["task_id"]
        done = await rt.processes.inbox.complete(
            second["task_id"], user="ed", groups=["editors"], payload={"approved": True}
        )
        assert (done["outcome"], done["variables"]["document"]) == ("published", "SECOND DRAFT")
        assert await completed_steps(rt, view["instance_id"]) == ["outline", "draft", "draft", "finalize"]
        versions = [c["version"] for c in await rt.processes.variable_history(view["instance_id"], "draft")]
        assert versions == [1, 2]


def in_turn(*outputs: dict[str, Any]) -> Any:
    """An agent that answers with ``outputs`` one after the other, then the last one again."""
    answers = list(outputs)

    def output(_request: AgentRequest) -> dict[str, Any]:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    return output


async def complete_task(rt: Any, group: str, payload: dict[str, Any]) -> dict[str, Any]:
    [task] = await rt.processes.inbox.list_tasks(group=group)
    done: dict[str, Any] = await rt.processes.inbox.complete(task["task_id"], user="u", groups=[group], payload=payload)
    return done


async def test_go_to_market_planning_revises_the_messaging_until_compliance_approves(store_url: str) -> None:
    async with runtime(store_url) as rt:
        await rt.processes.deploy_template("go_to_market_planning")
        view = await rt.processes.start("go_to_market_planning", "launch-q3")
        assert waiting_elements(view) == ["compliance_review"]
        again = await complete_task(rt, "compliance", {"approved": False, "notes": "claims need sources"})
        assert waiting_elements(again) == ["compliance_review"]
        done = await complete_task(rt, "compliance", {"approved": True})
        assert done["outcome"] == "planned" and done["variables"]["compliance_notes"] == "claims need sources"
        steps = await completed_steps(rt, view["instance_id"])
        assert steps == ["research", "messaging", "assets", "messaging", "assets", "publish_plan"]


async def test_proposal_generation_gathers_facts_while_drafting_then_passes_two_gates(store_url: str) -> None:
    clock = virtual_clock()
    async with runtime(store_url, clock) as rt:
        calls = Calls()
        calls.register(rt, "proposal.gather_facts", {"facts": ["uptime 99.9%"]})
        calls.register(rt, "proposal.draft", {"draft": "We propose..."})
        await rt.processes.deploy_template("proposal_generation")
        won = await rt.processes.start("proposal_generation", "rfp-1")
        lost = await rt.processes.start("proposal_generation", "rfp-2")
        assert waiting_elements(won) == ["legal_review"]
        assert won["variables"]["facts"] == ["uptime 99.9%"] and won["variables"]["draft"] == "We propose..."

        clock.advance(timedelta(days=1, seconds=1))  # legal sat on both for a day: the SLA reassigns them
        await rt.processes.scheduler.run_due()
        tasks = {t["instance_id"]: t["task_id"] for t in await rt.processes.inbox.list_tasks(group="legal-leads")}
        assert set(tasks) == {won["instance_id"], lost["instance_id"]}
        yes, no = {"approved": True}, {"approved": False}
        await rt.processes.inbox.complete(tasks[won["instance_id"]], user="l", groups=["legal-leads"], payload=yes)
        declined = await rt.processes.inbox.complete(
            tasks[lost["instance_id"]], user="l", groups=["legal-leads"], payload=no
        )
        assert declined["outcome"] == "declined"
        assert (await complete_task(rt, "sales-leads", yes))["outcome"] == "submitted"


async def test_data_quality_runs_on_its_schedule_and_alerts_by_threshold(store_url: str) -> None:
    clock = virtual_clock()  # Monday 09:00 UTC: the 06:00 check is due tomorrow
    async with runtime(store_url, clock) as rt:
        rates = {"orders": 0.02, "users": 0.0}
        flaky = {"failures": 1}

        def run_checks(request: AgentRequest) -> dict[str, Any]:
            if flaky["failures"]:  # the first call fails transiently: the agent path retries it
                flaky["failures"] -= 1
                raise TransientAgentError("warehouse timeout")
            key = str(request.payload["variables"].get("business_key"))
            return {"failure_rate": rates.get(key, 0.07), "failed": ["nulls_in_email"]}

        rt.agents.register("dq.run_checks", run_checks, replace=True)
        await rt.processes.deploy_template("data_quality")
        assert (await rt.processes.scheduler.run_due()).fired == 0
        clock.advance(timedelta(hours=21))
        assert (await rt.processes.scheduler.run_due()).fired == 1
        [scheduled] = await rt.processes.instances("data_quality")
        assert (await rt.processes.status(scheduled["instance_id"]))["outcome"] == "alerted"
        outcomes = [(await rt.processes.start("data_quality", key))["outcome"] for key in ("orders", "users")]
        assert outcomes == ["warned", "passed"]


async def test_reporting_analytics_pulls_at_once_and_holds_an_invalid_report(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        for source in ("sales", "marketing", "finance"):
            calls.register(rt, f"reporting.pull_{source}", {"rows": 10})
        calls.register(rt, "reporting.validate", by_key("valid", {"ok": True}, False))
        await rt.processes.deploy_template("reporting_analytics")
        good = await rt.processes.start("reporting_analytics", "ok")
        assert good["outcome"] == "published" and good["variables"]["finance"] == 10
        bad = await rt.processes.start("reporting_analytics", "broken")
        assert waiting_elements(bad) == ["analyst_review"]
        assert (await complete_task(rt, "analysts", {"resolution": "late finance feed"}))["outcome"] == "held"
        assert sorted(calls.intents()[:3]) == [
            "reporting.pull_finance",
            "reporting.pull_marketing",
            "reporting.pull_sales",
        ]


async def test_summarization_merges_again_until_the_summary_is_faithful(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        calls.register(rt, "summarize.validate", in_turn({"faithful": False}, {"faithful": True}))
        calls.register(rt, "summarize.merge", {"summary": "short"})
        await rt.processes.deploy_template("summarization")
        view = await rt.processes.start("summarization", "doc-9")
        assert (view["outcome"], view["variables"]["summary"]) == ("summarized", "short")
        steps = await completed_steps(rt, view["instance_id"])
        assert steps[0] == "chunk" and sorted(steps[1:4]) == ["summarize_body", "summarize_head", "summarize_tail"]
        assert steps[4:] == ["merge", "validate", "merge", "validate"]


async def test_knowledge_base_qa_routes_by_permission_and_source(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        calls.register(rt, "kb.check_permissions", by_key("access", {"intern": "denied"}, "granted"))
        calls.register(rt, "kb.find_sources", by_key("source", {"q-kb": "knowledge_base", "q-web": "web"}, "none"))
        calls.register(rt, "kb.answer", {"answer": "from the KB", "citations": ["kb/1"]})
        calls.register(rt, "kb.answer_from_web", {"answer": "from the web", "citations": ["https://x"]})
        await rt.processes.deploy_template("knowledge_base_qa")
        denied = await rt.processes.start("knowledge_base_qa", "intern")
        kb = await rt.processes.start("knowledge_base_qa", "q-kb")
        web = await rt.processes.start("knowledge_base_qa", "q-web")
        assert [v["outcome"] for v in (denied, kb, web)] == ["denied", "answered", "answered"]
        assert (kb["variables"]["answer"], web["variables"]["answer"]) == ("from the KB", "from the web")
        assert "kb.find_sources" not in [i for i, p in calls.log if p["variables"]["business_key"] == "intern"]
        nobody = await rt.processes.start("knowledge_base_qa", "q-rare")
        assert waiting_elements(nobody) == ["ask_expert"]
        done = await complete_task(rt, "experts", {"answer": "ask finance"})
        assert (done["outcome"], done["variables"]["answer"]) == ("answered", "ask finance")


async def test_localization_translates_again_after_a_terminology_violation(store_url: str) -> None:
    async with runtime(store_url) as rt:
        calls = Calls()
        check = in_turn({"ok": False, "violations": ["'cart' must be 'basket'"]}, {"ok": True, "violations": []})
        calls.register(rt, "l10n.check_terminology", check)
        await rt.processes.deploy_template("localization")
        view = await rt.processes.start("localization", "release-12-fr")
        assert view["outcome"] == "localized" and view["variables"]["violations"] == []
        steps = await completed_steps(rt, view["instance_id"])
        assert steps == [
            "extract_strings",
            "translate",
            "check_terminology",
            "translate",
            "check_terminology",
            "publish",
        ]


async def test_policy_update_goes_back_to_drafting_until_compliance_and_stakeholders_agree(store_url: str) -> None:
    async with runtime(store_url) as rt:
        await rt.processes.deploy_template("policy_update")
        view = await rt.processes.start("policy_update", "travel-policy-v2")
        await complete_task(rt, "compliance", {"approved": False, "notes": "GDPR clause missing"})
        await complete_task(rt, "compliance", {"approved": True})
        await complete_task(rt, "policy-owners", {"approved": False})
        await complete_task(rt, "compliance", {"approved": True})
        done = await complete_task(rt, "policy-owners", {"approved": True})
        assert done["outcome"] == "published"
        steps = await completed_steps(rt, view["instance_id"])
        assert steps.count("draft_changes") == 3 and steps[-2:] == ["publish", "notify"]
