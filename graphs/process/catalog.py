"""Ready process templates (SPEC B8, G6), built from the same elements as any process.

The seed's three examples: ``pr_review`` (message start, XOR), ``customer_onboarding`` (a 7-day timer,
then a 3-way XOR proven exhaustive by an enum), ``marketing_campaign`` (parallel fork/join, human
approval with an SLA, a launch that rolls itself back). And four from the orchestration guide's
catalog: ``lead_qualification`` (a conditional state machine with a human guard),
``support_triage`` (fan-out classification, routing with escalation thresholds, a race between a
reopen message and a quiet period), ``incident_response`` (a saga: every step has a compensation, the
event log is the audit trail) and ``document_drafting`` (outline → draft → review → finalize, with
a revision loop). And the rest of the guide's catalog (sections 6-8): ``go_to_market_planning``,
``proposal_generation``, ``data_quality`` (a cron start and alert thresholds), ``reporting_analytics``,
``summarization``, ``knowledge_base_qa`` (routing by permission and source), ``localization`` and
``policy_update``.

Agents are named by intent; ``deploy_template`` registers a deterministic default for any intent
that has no agent yet, so every template runs offline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graphs.errors import UnknownTemplateError
from graphs.process.spec import ProcessSpec
from graphs.process.validation import intents

TemplateBuilder = Callable[..., ProcessSpec]


def _service(id: str, agent: str, outputs: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "service_task", "id": id, "agent": agent, "outputs": outputs or {}, **extra}


def _end(id: str, outcome: str | None = None) -> dict[str, Any]:
    return {"type": "end", "id": id, "outcome": outcome or id}


def _when(field: str, op: str, value: Any) -> dict[str, Any]:
    return {"field": field, "op": op, "value": value}


def pr_review(*, version: int = 1) -> ProcessSpec:
    """GitHub PR opened → WowVision validates → approved? deploy : open an issue."""
    return ProcessSpec.model_validate(
        {
            "name": "pr_review",
            "version": version,
            "description": "Start → WowVision Validate → Gateway(Approved?) → Deploy | Create Issue",
            "elements": [
                {
                    "type": "start",
                    "id": "pr_opened",
                    "message": "github.pull_request.opened",
                    "correlation": "pr_number",
                },
                _service(
                    "wowvision_validate", "wowvision.validate", {"vision_approved": "approved", "findings": "findings"}
                ),
                {"type": "exclusive_gateway", "id": "approved"},
                _service("deploy", "github.deploy", {"deployment_id": "deployment_id"}),
                _service("create_issue", "github.create_issue", {"issue_number": "issue_number"}),
                _end("deployed"),
                _end("changes_requested"),
            ],
            "flows": [
                "pr_opened -> wowvision_validate",
                "wowvision_validate -> approved",
                {"source": "approved", "target": "deploy", "when": _when("vision_approved", "==", True)},
                {"source": "approved", "target": "create_issue", "default": True},
                "deploy -> deployed",
                "create_issue -> changes_requested",
            ],
        }
    )


def customer_onboarding(*, version: int = 1, trial: str = "P7D") -> ProcessSpec:
    """Capture the lead, wait out the trial, then one of three ways by conversion."""
    return ProcessSpec.model_validate(
        {
            "name": "customer_onboarding",
            "version": version,
            "description": "Start → Capture Lead → Timer(7 days) → Check Conversion → Activate | Nurture | Churn",
            "variables_schema": {
                "type": "object",
                "properties": {"conversion": {"enum": ["converted", "engaged", "low_score"]}},
            },
            "elements": [
                {"type": "start", "id": "start"},
                _service("capture_lead", "crm.capture_lead", {"lead_score": "score"}),
                {"type": "timer", "id": "trial_period", "timer": {"duration": trial}},
                _service("check_conversion", "analytics.check_conversion", {"conversion": "conversion"}),
                {"type": "exclusive_gateway", "id": "conversion_gate"},
                _service("activate", "billing.activate"),
                _service("nurture", "marketing.nurture"),
                _service("churn", "crm.mark_churned"),
                _end("active"),
                _end("nurturing"),
                _end("churned"),
            ],
            "flows": [
                "start -> capture_lead",
                "capture_lead -> trial_period",
                "trial_period -> check_conversion",
                "check_conversion -> conversion_gate",
                {"source": "conversion_gate", "target": "activate", "when": _when("conversion", "==", "converted")},
                {"source": "conversion_gate", "target": "nurture", "when": _when("conversion", "==", "engaged")},
                {"source": "conversion_gate", "target": "churn", "when": _when("conversion", "==", "low_score")},
                "activate -> active",
                "nurture -> nurturing",
                "churn -> churned",
            ],
        }
    )


def marketing_campaign(*, version: int = 1, approval_sla: str = "PT24H") -> ProcessSpec:
    """Blog, social and email drafted in parallel, then human approval, then a launch that undoes itself."""
    return ProcessSpec.model_validate(
        {
            "name": "marketing_campaign",
            "version": version,
            "description": "Fork(Blog, Social, Email) → Join → Human Approval → Launch (with rollback)",
            "elements": [
                {"type": "start", "id": "start"},
                {"type": "parallel_gateway", "id": "create_content"},
                _service("create_blog", "content.create_blog", {"blog_draft": "draft"}),
                _service("create_social", "content.create_social", {"social_posts": "posts"}),
                _service("create_email", "content.create_email", {"email_draft": "draft"}),
                {"type": "parallel_gateway", "id": "content_ready"},
                {
                    "type": "user_task",
                    "id": "approval",
                    "title": "Approve the campaign",
                    "candidate_groups": ["marketing-leads"],
                    "response_schema": {
                        "type": "object",
                        "properties": {"approved": {"type": "boolean"}, "notes": {"type": "string"}},
                        "required": ["approved"],
                    },
                    "outputs": {"approved": "approved", "approval_notes": "notes"},
                    "sla": approval_sla,
                    "on_timeout": {"action": "reassign", "candidate_groups": ["marketing-directors"]},
                },
                {"type": "exclusive_gateway", "id": "approved_gate"},
                {
                    "type": "transaction",
                    "id": "launch",
                    "steps": [
                        ["channels.publish_blog", "channels.unpublish_blog"],
                        ["channels.post_social", "channels.delete_social_posts"],
                        ["channels.send_email", "channels.send_email_correction"],
                    ],
                    "output": "launch_status",
                },
                {"type": "exclusive_gateway", "id": "launch_gate"},
                _end("launched"),
                _end("rolled_back"),
                _end("rejected"),
            ],
            "flows": [
                "start -> create_content",
                "create_content -> create_blog",
                "create_content -> create_social",
                "create_content -> create_email",
                "create_blog -> content_ready",
                "create_social -> content_ready",
                "create_email -> content_ready",
                "content_ready -> approval",
                "approval -> approved_gate",
                {"source": "approved_gate", "target": "launch", "when": _when("approved", "==", True)},
                {"source": "approved_gate", "target": "rejected", "default": True},
                "launch -> launch_gate",
                {"source": "launch_gate", "target": "launched", "when": _when("launch_status", "==", "completed")},
                {"source": "launch_gate", "target": "rolled_back", "default": True},
            ],
        }
    )


def lead_qualification(*, version: int = 1) -> ProcessSpec:
    """Fit, intent and risk scores decide; a risky lead needs a human, who must answer within 8 hours."""
    return ProcessSpec.model_validate(
        {
            "name": "lead_qualification",
            "version": version,
            "description": "Score fit → intent → risk → qualified | manual review | nurture",
            "elements": [
                {"type": "start", "id": "start"},
                _service("score_fit", "sales.score_fit", {"fit": "score"}),
                _service("score_intent", "sales.score_intent", {"intent": "score"}),
                _service("assess_risk", "sales.assess_risk", {"risk": "risk"}),
                {"type": "exclusive_gateway", "id": "qualify"},
                {
                    "type": "user_task",
                    "id": "manual_review",
                    "title": "Review a risky lead",
                    "candidate_groups": ["sales-ops"],
                    "response_schema": {
                        "type": "object",
                        "properties": {"decision": {"enum": ["qualify", "disqualify"]}},
                        "required": ["decision"],
                    },
                    "sla": "PT8H",
                    "on_timeout": {"action": "complete", "default": {"decision": "disqualify"}},
                },
                {"type": "exclusive_gateway", "id": "review_decision"},
                _service("hand_to_sales", "sales.handoff"),
                _service("nurture", "marketing.nurture"),
                _end("qualified"),
                _end("nurturing"),
                _end("disqualified"),
            ],
            "flows": [
                "start -> score_fit",
                "score_fit -> score_intent",
                "score_intent -> assess_risk",
                "assess_risk -> qualify",
                {"source": "qualify", "target": "manual_review", "when": _when("risk", "==", "high")},
                {
                    "source": "qualify",
                    "target": "hand_to_sales",
                    "when": {"all": [_when("fit", ">=", 70), _when("intent", ">=", 50)]},
                },
                {"source": "qualify", "target": "nurture", "default": True},
                "manual_review -> review_decision",
                {"source": "review_decision", "target": "hand_to_sales", "when": _when("decision", "==", "qualify")},
                {"source": "review_decision", "target": "disqualified", "default": True},
                "hand_to_sales -> qualified",
                "nurture -> nurturing",
            ],
        }
    )


def support_triage(*, version: int = 1, quiet_period: str = "P3D") -> ProcessSpec:
    """A ticket is classified three ways at once, routed by urgency, resolved, and closed unless reopened."""
    return ProcessSpec.model_validate(
        {
            "name": "support_triage",
            "version": version,
            "description": "Fan-out classification → routing → resolution → close unless reopened",
            "elements": [
                {
                    "type": "start",
                    "id": "ticket_created",
                    "message": "support.ticket.created",
                    "correlation": "ticket_id",
                },
                {"type": "parallel_gateway", "id": "classify"},
                _service("classify_category", "support.classify_category", {"category": "category"}),
                _service("classify_urgency", "support.classify_urgency", {"urgency": "urgency"}),
                _service("detect_sentiment", "support.detect_sentiment", {"sentiment": "sentiment"}),
                {"type": "parallel_gateway", "id": "classified"},
                {"type": "exclusive_gateway", "id": "routing"},
                {
                    "type": "user_task",
                    "id": "on_call",
                    "title": "Critical ticket",
                    "assignee": "on-call",
                    "response_schema": {"type": "object", "required": ["resolution"]},
                    "outputs": {"resolution": "resolution"},
                    "sla": "PT15M",
                    "on_timeout": {"action": "reassign", "candidate_groups": ["support-managers"]},
                },
                {
                    "type": "user_task",
                    "id": "support_queue",
                    "title": "Support ticket",
                    "candidate_groups": ["support-tier1"],
                    "response_schema": {"type": "object", "required": ["resolution"]},
                    "outputs": {"resolution": "resolution"},
                    "sla": "PT4H",
                    "on_timeout": {"action": "notify", "notify": "support.notify_lead"},
                },
                _service("resolve", "support.resolve"),
                {"type": "event_gateway", "id": "await_feedback"},
                {
                    "type": "message",
                    "id": "reopened",
                    "message": "support.ticket.reopened",
                    "correlation": "ticket_id",
                    "outputs": {"reopen_reason": "reason"},
                },
                {"type": "timer", "id": "quiet", "timer": {"duration": quiet_period}},
                _service("close", "support.close"),
                _end("closed"),
            ],
            "flows": [
                "ticket_created -> classify",
                "classify -> classify_category",
                "classify -> classify_urgency",
                "classify -> detect_sentiment",
                "classify_category -> classified",
                "classify_urgency -> classified",
                "detect_sentiment -> classified",
                "classified -> routing",
                {"source": "routing", "target": "on_call", "when": _when("urgency", "==", "critical")},
                {"source": "routing", "target": "support_queue", "default": True},
                "on_call -> resolve",
                "support_queue -> resolve",
                "resolve -> await_feedback",
                "await_feedback -> reopened",
                "await_feedback -> quiet",
                "reopened -> routing",
                "quiet -> close",
                "close -> closed",
            ],
        }
    )


def incident_response(*, version: int = 1) -> ProcessSpec:
    """A saga: page, open a war room, mitigate, verify. When a step fails for good, undo the done ones."""
    return ProcessSpec.model_validate(
        {
            "name": "incident_response",
            "version": version,
            "description": "Page → War room → Mitigate → Verify → Postmortem; compensated in reverse on failure",
            "elements": [
                {"type": "start", "id": "incident_opened", "message": "incident.opened", "correlation": "incident_id"},
                _service(
                    "page_oncall", "incident.page_oncall", {"page_id": "page_id"}, compensation="incident.cancel_page"
                ),
                _service(
                    "open_war_room", "incident.open_war_room", {"room": "room"}, compensation="incident.close_war_room"
                ),
                _service(
                    "mitigate",
                    "incident.apply_mitigation",
                    {"mitigation": "mitigation"},
                    compensation="incident.rollback_mitigation",
                ),
                _service("verify", "incident.verify_recovery", {"recovered": "recovered"}),
                {
                    "type": "user_task",
                    "id": "postmortem",
                    "title": "Write the postmortem",
                    "candidate_groups": ["sre"],
                    "response_schema": {"type": "object", "required": ["summary"]},
                    "outputs": {"postmortem": "summary"},
                    "sla": "P2D",
                    "on_timeout": {"action": "notify", "notify": "incident.notify_sre_lead"},
                },
                _end("resolved"),
            ],
            "flows": [
                "incident_opened -> page_oncall",
                "page_oncall -> open_war_room",
                "open_war_room -> mitigate",
                "mitigate -> verify",
                "verify -> postmortem",
                "postmortem -> resolved",
            ],
        }
    )


def document_drafting(*, version: int = 1) -> ProcessSpec:
    """Outline → draft → editor review → finalize; a rejected draft goes back for revision."""
    return ProcessSpec.model_validate(
        {
            "name": "document_drafting",
            "version": version,
            "description": "Outline → Draft → Review → Finalize (revise until approved)",
            "elements": [
                {"type": "start", "id": "start"},
                _service("outline", "docs.outline", {"outline": "outline"}),
                _service("draft", "docs.draft", {"draft": "draft"}),
                {
                    "type": "user_task",
                    "id": "review",
                    "title": "Review the draft",
                    "candidate_groups": ["editors"],
                    "response_schema": {
                        "type": "object",
                        "properties": {"approved": {"type": "boolean"}, "comments": {"type": "string"}},
                        "required": ["approved"],
                    },
                    "outputs": ["approved", "comments"],
                },
                {"type": "exclusive_gateway", "id": "review_decision"},
                _service("finalize", "docs.finalize", {"document": "document"}),
                _end("published"),
            ],
            "flows": [
                "start -> outline",
                "outline -> draft",
                "draft -> review",
                "review -> review_decision",
                {"source": "review_decision", "target": "finalize", "when": _when("approved", "==", True)},
                {"source": "review_decision", "target": "draft", "default": True},
                "finalize -> published",
            ],
        }
    )


def _review(
    id: str, title: str, groups: list[str], outputs: dict[str, str], sla: str, on_timeout: dict[str, Any]
) -> dict[str, Any]:
    """A human approval: ``approved`` (a boolean) and optional ``notes``, within an SLA."""
    return {
        "type": "user_task",
        "id": id,
        "title": title,
        "candidate_groups": groups,
        "response_schema": {
            "type": "object",
            "properties": {"approved": {"type": "boolean"}, "notes": {"type": "string"}},
            "required": ["approved"],
        },
        "outputs": outputs,
        "sla": sla,
        "on_timeout": on_timeout,
    }


def go_to_market_planning(*, version: int = 1) -> ProcessSpec:
    """Research → messaging → assets, each kept as a checkpoint, then a compliance review (revise until approved)."""
    return ProcessSpec.model_validate(
        {
            "name": "go_to_market_planning",
            "version": version,
            "description": "Research → Messaging → Assets → Compliance review → Publish plan (revise until approved)",
            "elements": [
                {"type": "start", "id": "start"},
                _service("research", "gtm.market_research", {"market_brief": "brief"}),
                _service("messaging", "gtm.write_messaging", {"messaging": "messaging"}),
                _service("assets", "gtm.create_assets", {"assets": "assets"}),
                _review(
                    "compliance_review",
                    "Compliance review of the go-to-market plan",
                    ["compliance"],
                    {"compliant": "approved", "compliance_notes": "notes"},
                    "P2D",
                    {"action": "notify", "notify": "gtm.notify_compliance_lead"},
                ),
                {"type": "exclusive_gateway", "id": "compliance_gate"},
                _service("publish_plan", "gtm.publish_plan", {"plan_url": "url"}),
                _end("planned"),
            ],
            "flows": [
                "start -> research",
                "research -> messaging",
                "messaging -> assets",
                "assets -> compliance_review",
                "compliance_review -> compliance_gate",
                {"source": "compliance_gate", "target": "publish_plan", "when": _when("compliant", "==", True)},
                {"source": "compliance_gate", "target": "messaging", "default": True},
                "publish_plan -> planned",
            ],
        }
    )


def proposal_generation(*, version: int = 1) -> ProcessSpec:
    """Intake → requirements, then facts gathered while the draft is written, legal review and a final approval gate."""
    return ProcessSpec.model_validate(
        {
            "name": "proposal_generation",
            "version": version,
            "description": "Intake → Requirements → Fork(Facts, Draft) → Legal review → Final approval → Submit",
            "elements": [
                {"type": "start", "id": "start"},
                _service("intake", "proposal.intake", {"client": "client"}),
                _service("capture_requirements", "proposal.capture_requirements", {"requirements": "requirements"}),
                {"type": "parallel_gateway", "id": "fork"},
                _service("gather_facts", "proposal.gather_facts", {"facts": "facts"}),
                _service("draft", "proposal.draft", {"draft": "draft"}),
                {"type": "parallel_gateway", "id": "join"},
                _review(
                    "legal_review",
                    "Legal review of the proposal",
                    ["legal"],
                    {"legal_approved": "approved", "legal_notes": "notes"},
                    "P1D",
                    {"action": "reassign", "candidate_groups": ["legal-leads"]},
                ),
                {"type": "exclusive_gateway", "id": "legal_gate"},
                _review(
                    "final_approval",
                    "Approve the proposal",
                    ["sales-leads"],
                    {"approved": "approved"},
                    "PT8H",
                    {"action": "notify", "notify": "proposal.notify_sales_director"},
                ),
                {"type": "exclusive_gateway", "id": "approval_gate"},
                _service("submit", "proposal.submit", {"submission_id": "submission_id"}),
                _end("submitted"),
                _end("declined"),
            ],
            "flows": [
                "start -> intake",
                "intake -> capture_requirements",
                "capture_requirements -> fork",
                "fork -> gather_facts",
                "fork -> draft",
                "gather_facts -> join",
                "draft -> join",
                "join -> legal_review",
                "legal_review -> legal_gate",
                {"source": "legal_gate", "target": "final_approval", "when": _when("legal_approved", "==", True)},
                {"source": "legal_gate", "target": "declined", "default": True},
                "final_approval -> approval_gate",
                {"source": "approval_gate", "target": "submit", "when": _when("approved", "==", True)},
                {"source": "approval_gate", "target": "declined", "default": True},
                "submit -> submitted",
            ],
        }
    )


def data_quality(*, version: int = 1, schedule: str = "0 6 * * *") -> ProcessSpec:
    """Scheduled checks (a cron start, or on demand); agent calls retry with backoff; the failure rate picks
    alert, warn or pass by threshold."""
    return ProcessSpec.model_validate(
        {
            "name": "data_quality",
            "version": version,
            "description": "Cron or on demand → Profile → Checks → Alert (≥5% failing) | Warn (≥1%) | Pass",
            "variables_schema": {"type": "object", "properties": {"failure_rate": {"type": "number"}}},
            "elements": [
                {"type": "start", "id": "on_demand"},
                {"type": "start", "id": "scheduled", "timer": {"cron": schedule}},
                _service("profile", "dq.profile_dataset", {"row_count": "rows"}),
                _service("run_checks", "dq.run_checks", {"failure_rate": "failure_rate", "failed_checks": "failed"}),
                {"type": "exclusive_gateway", "id": "threshold"},
                _service("alert", "dq.page_data_owner", {"alert_id": "alert_id"}),
                _service("warn", "dq.open_ticket", {"ticket_id": "ticket_id"}),
                _service("publish", "dq.publish_scorecard"),
                _end("alerted"),
                _end("warned"),
                _end("passed"),
            ],
            "flows": [
                "on_demand -> profile",
                "scheduled -> profile",
                "profile -> run_checks",
                "run_checks -> threshold",
                {"source": "threshold", "target": "alert", "when": _when("failure_rate", ">=", 0.05)},
                {"source": "threshold", "target": "warn", "when": _when("failure_rate", ">=", 0.01)},
                {"source": "threshold", "target": "publish", "default": True},
                "alert -> alerted",
                "warn -> warned",
                "publish -> passed",
            ],
        }
    )


def reporting_analytics(*, version: int = 1) -> ProcessSpec:
    """Three data pulls at once, aggregated, validated, then published (or held for an analyst)."""
    return ProcessSpec.model_validate(
        {
            "name": "reporting_analytics",
            "version": version,
            "description": "Fork(Sales, Marketing, Finance pulls) → Join → Aggregate → Validate → Publish | Analyst",
            "elements": [
                {"type": "start", "id": "start"},
                {"type": "parallel_gateway", "id": "pull"},
                _service("pull_sales", "reporting.pull_sales", {"sales": "rows"}),
                _service("pull_marketing", "reporting.pull_marketing", {"marketing": "rows"}),
                _service("pull_finance", "reporting.pull_finance", {"finance": "rows"}),
                {"type": "parallel_gateway", "id": "pulled"},
                _service("aggregate", "reporting.aggregate", {"report": "report"}),
                _service("validate", "reporting.validate", {"valid": "valid", "issues": "issues"}),
                {"type": "exclusive_gateway", "id": "valid_gate"},
                _service("publish", "reporting.publish", {"report_url": "url"}),
                {
                    "type": "user_task",
                    "id": "analyst_review",
                    "title": "The report failed validation",
                    "candidate_groups": ["analysts"],
                    "response_schema": {"type": "object", "required": ["resolution"]},
                    "outputs": {"resolution": "resolution"},
                    "sla": "PT4H",
                    "on_timeout": {"action": "notify", "notify": "reporting.notify_analytics_lead"},
                },
                _end("published"),
                _end("held"),
            ],
            "flows": [
                "start -> pull",
                "pull -> pull_sales",
                "pull -> pull_marketing",
                "pull -> pull_finance",
                "pull_sales -> pulled",
                "pull_marketing -> pulled",
                "pull_finance -> pulled",
                "pulled -> aggregate",
                "aggregate -> validate",
                "validate -> valid_gate",
                {"source": "valid_gate", "target": "publish", "when": _when("valid", "==", True)},
                {"source": "valid_gate", "target": "analyst_review", "default": True},
                "publish -> published",
                "analyst_review -> held",
            ],
        }
    )


def summarization(*, version: int = 1) -> ProcessSpec:
    """The document is chunked, the chunks summarized at once, merged and validated (merged again if not)."""
    return ProcessSpec.model_validate(
        {
            "name": "summarization",
            "version": version,
            "description": "Chunk → Fork(summarize 3 parts) → Join → Merge → Validate (merge again until valid)",
            "elements": [
                {"type": "start", "id": "start"},
                _service("chunk", "summarize.chunk", {"chunks": "chunks"}),
                {"type": "parallel_gateway", "id": "fan_out"},
                _service("summarize_head", "summarize.head", {"head_summary": "summary"}),
                _service("summarize_body", "summarize.body", {"body_summary": "summary"}),
                _service("summarize_tail", "summarize.tail", {"tail_summary": "summary"}),
                {"type": "parallel_gateway", "id": "fan_in"},
                _service("merge", "summarize.merge", {"summary": "summary"}),
                _service("validate", "summarize.validate", {"faithful": "faithful"}),
                {"type": "exclusive_gateway", "id": "faithful_gate"},
                _end("summarized"),
            ],
            "flows": [
                "start -> chunk",
                "chunk -> fan_out",
                "fan_out -> summarize_head",
                "fan_out -> summarize_body",
                "fan_out -> summarize_tail",
                "summarize_head -> fan_in",
                "summarize_body -> fan_in",
                "summarize_tail -> fan_in",
                "fan_in -> merge",
                "merge -> validate",
                "validate -> faithful_gate",
                # Merged again only when the validator says it is not faithful: an agent that says nothing
                # about it (the offline defaults) does not loop for ever.
                {"source": "faithful_gate", "target": "merge", "when": _when("faithful", "==", False)},
                {"source": "faithful_gate", "target": "summarized", "default": True},
            ],
        }
    )


def knowledge_base_qa(*, version: int = 1) -> ProcessSpec:
    """A question is routed by the asker's permissions, then by which source can answer it; no source: an expert."""
    return ProcessSpec.model_validate(
        {
            "name": "knowledge_base_qa",
            "version": version,
            "description": "Check permissions → Denied | Find sources → KB answer | Web answer | Expert",
            "variables_schema": {
                "type": "object",
                "properties": {
                    "access": {"enum": ["granted", "denied"]},
                    "source": {"enum": ["knowledge_base", "web", "none"]},
                },
            },
            "elements": [
                {"type": "start", "id": "question_asked"},
                _service("check_permissions", "kb.check_permissions", {"access": "access"}),
                {"type": "exclusive_gateway", "id": "permission_gate"},
                _service("find_sources", "kb.find_sources", {"source": "source"}),
                {"type": "exclusive_gateway", "id": "source_gate"},
                _service("answer_from_kb", "kb.answer", {"answer": "answer", "citations": "citations"}),
                _service("answer_from_web", "kb.answer_from_web", {"answer": "answer", "citations": "citations"}),
                {
                    "type": "user_task",
                    "id": "ask_expert",
                    "title": "Answer a question no source covers",
                    "candidate_groups": ["experts"],
                    "response_schema": {"type": "object", "required": ["answer"]},
                    "outputs": {"answer": "answer"},
                    "sla": "P1D",
                    "on_timeout": {"action": "reassign", "candidate_groups": ["expert-leads"]},
                },
                _end("answered"),
                _end("denied"),
            ],
            "flows": [
                "question_asked -> check_permissions",
                "check_permissions -> permission_gate",
                {"source": "permission_gate", "target": "find_sources", "when": _when("access", "==", "granted")},
                {"source": "permission_gate", "target": "denied", "default": True},
                "find_sources -> source_gate",
                {"source": "source_gate", "target": "answer_from_kb", "when": _when("source", "==", "knowledge_base")},
                {"source": "source_gate", "target": "answer_from_web", "when": _when("source", "==", "web")},
                {"source": "source_gate", "target": "ask_expert", "default": True},
                "answer_from_kb -> answered",
                "answer_from_web -> answered",
                "ask_expert -> answered",
            ],
        }
    )


def localization(*, version: int = 1) -> ProcessSpec:
    """Strings extracted, translated, checked against the glossary (translated again on a violation), then published."""
    return ProcessSpec.model_validate(
        {
            "name": "localization",
            "version": version,
            "description": "Extract → Translate → Terminology check (translate again on violations) → Publish",
            "elements": [
                {"type": "start", "id": "start"},
                _service("extract_strings", "l10n.extract_strings", {"strings": "strings"}),
                _service("translate", "l10n.translate", {"translation": "translation"}),
                _service(
                    "check_terminology",
                    "l10n.check_terminology",
                    {"terminology_ok": "ok", "violations": "violations"},
                ),
                {"type": "exclusive_gateway", "id": "terminology_gate"},
                _service("publish", "l10n.publish", {"release": "release"}),
                _end("localized"),
            ],
            "flows": [
                "start -> extract_strings",
                "extract_strings -> translate",
                "translate -> check_terminology",
                "check_terminology -> terminology_gate",
                # Translated again only on a reported violation (see summarization's gate).
                {"source": "terminology_gate", "target": "translate", "when": _when("terminology_ok", "==", False)},
                {"source": "terminology_gate", "target": "publish", "default": True},
                "publish -> localized",
            ],
        }
    )


def policy_update(*, version: int = 1) -> ProcessSpec:
    """Draft changes → compliance review → stakeholder sign-off (either sends it back) → publish and notify."""
    return ProcessSpec.model_validate(
        {
            "name": "policy_update",
            "version": version,
            "description": "Draft → Compliance review → Stakeholder sign-off → Publish → Notify (back to draft if not)",
            "elements": [
                {"type": "start", "id": "start"},
                _service("draft_changes", "policy.draft_changes", {"policy_draft": "draft"}),
                _review(
                    "compliance_review",
                    "Compliance review of the policy change",
                    ["compliance"],
                    {"compliant": "approved", "compliance_notes": "notes"},
                    "P2D",
                    {"action": "notify", "notify": "policy.notify_compliance_lead"},
                ),
                {"type": "exclusive_gateway", "id": "compliance_gate"},
                _review(
                    "stakeholder_signoff",
                    "Sign off the policy change",
                    ["policy-owners"],
                    {"signed_off": "approved", "signoff_notes": "notes"},
                    "P3D",
                    {"action": "reassign", "candidate_groups": ["executives"]},
                ),
                {"type": "exclusive_gateway", "id": "signoff_gate"},
                _service("publish", "policy.publish", {"policy_version": "version"}),
                _service("notify", "policy.notify_employees", {"notified": "notified"}),
                _end("published"),
            ],
            "flows": [
                "start -> draft_changes",
                "draft_changes -> compliance_review",
                "compliance_review -> compliance_gate",
                {"source": "compliance_gate", "target": "stakeholder_signoff", "when": _when("compliant", "==", True)},
                {"source": "compliance_gate", "target": "draft_changes", "default": True},
                "stakeholder_signoff -> signoff_gate",
                {"source": "signoff_gate", "target": "publish", "when": _when("signed_off", "==", True)},
                {"source": "signoff_gate", "target": "draft_changes", "default": True},
                "publish -> notify",
                "notify -> published",
            ],
        }
    )


@dataclass(frozen=True, slots=True)
class ProcessTemplate:
    """A ready process design by name."""

    name: str
    build: TemplateBuilder
    description: str = ""


class ProcessCatalog:
    """The ready process templates by name."""

    def __init__(self) -> None:
        self._templates: dict[str, ProcessTemplate] = {}

    def register(self, name: str, build: TemplateBuilder, *, description: str = "") -> ProcessTemplate:
        template = ProcessTemplate(name, build, description or (build.__doc__ or "").strip())
        self._templates[name] = template
        return template

    def get(self, name: str) -> ProcessTemplate:
        try:
            return self._templates[name]
        except KeyError:
            raise UnknownTemplateError(
                f"no process template named {name!r}; available: {', '.join(self.names())}",
                name=name,
                available=self.names(),
            ) from None

    def build(self, name: str, *, version: int = 1, **options: Any) -> ProcessSpec:
        return self.get(name).build(version=version, **options)

    def names(self) -> list[str]:
        return sorted(self._templates)

    def intents(self, name: str) -> list[str]:
        return sorted({intent for intent, _needed_by in intents(self.build(name))})


def default_process_catalog() -> ProcessCatalog:
    catalog = ProcessCatalog()
    for build in (
        pr_review,
        customer_onboarding,
        marketing_campaign,
        lead_qualification,
        support_triage,
        incident_response,
        document_drafting,
        go_to_market_planning,
        proposal_generation,
        data_quality,
        reporting_analytics,
        summarization,
        knowledge_base_qa,
        localization,
        policy_update,
    ):
        catalog.register(build.__name__, build)
    return catalog
