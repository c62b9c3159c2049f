"""The MVP Journey Orchestrator: the Session pattern preset with the four MVP pillars (SPEC P3).

Pillars, actions and completion criteria are exactly those of the seed document. The recommended
flow is content → insights → operations → business_outcome, but navigation stays free.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from graphs.kernel.engine import DEFAULT_RUN, RunOptions
from graphs.session.builder import Area, SessionSpec
from graphs.session.orchestrator import SessionOrchestrator


def _pillar(area_id: str, name: str, actions: tuple[str, ...], flags: tuple[str, ...]) -> Area:
    return Area(
        area_id=area_id,
        area_name=name,
        actions=actions,
        completion={flag: True for flag in flags},
        # Only the pillar's progress flags are accepted, so a typo fails loudly instead of never completing.
        state_schema={
            "type": "object",
            "properties": {flag: {"type": "boolean"} for flag in flags},
            "additionalProperties": False,
        },
    )


MVP_PILLARS: tuple[Area, ...] = (
    _pillar(
        "content",
        "Content Pillar",
        ("upload_file", "parse_file", "preview_data", "chat_with_content_liaison"),
        ("files_uploaded", "files_parsed"),
    ),
    _pillar(
        "insights",
        "Insights Pillar",
        (
            "select_file",
            "analyze_data",
            "create_visualization",
            "generate_insights_summary",
            "chat_with_insights_liaison",
        ),
        ("file_selected", "analysis_complete", "insights_summary_generated"),
    ),
    _pillar(
        "operations",
        "Operations Pillar",
        (
            "select_files",
            "generate_workflow",
            "generate_sop",
            "create_coexistence_blueprint",
            "chat_with_operations_liaison",
        ),
        ("workflow_generated", "sop_generated", "coexistence_blueprint_created"),
    ),
    _pillar(
        "business_outcome",
        "Business Outcome Pillar",
        (
            "review_summaries",
            "add_context",
            "generate_roadmap",
            "generate_poc_proposal",
            "chat_with_experience_liaison",
        ),
        ("summaries_reviewed", "roadmap_generated", "poc_proposal_generated"),
    ),
)

RECOMMENDED_FLOW: tuple[str, ...] = ("content", "insights", "operations", "business_outcome")


def mvp_spec(initial_pillar: str = "content") -> SessionSpec:
    return SessionSpec(
        journey_type="mvp", areas=MVP_PILLARS, initial_area=initial_pillar, recommended_order=RECOMMENDED_FLOW
    )


class MVPOrchestrator:
    """The MVP journey: a session over the four pillars with a recommended next pillar."""

    def __init__(self, sessions: SessionOrchestrator) -> None:
        if sessions.pattern != "mvp":
            raise ValueError("the MVP orchestrator composes a session orchestrator for the 'mvp' pattern")
        self.sessions = sessions

    async def start_mvp_journey(
        self,
        user_id: str,
        initial_pillar: str = "content",
        *,
        run_options: RunOptions = DEFAULT_RUN,
        start_key: str | None = None,
        start_key_window: str | float | None = None,
        registering: Callable[[str], RunOptions] | None = None,
    ) -> dict[str, Any]:
        """Open an MVP session at ``initial_pillar`` (``registering``: see ``SessionOrchestrator.start_session``)."""
        spec = mvp_spec(initial_pillar).model_dump()
        session = await self.sessions.start_session(
            user_id,
            spec,
            run_options=run_options,
            start_key=start_key,
            start_key_window=start_key_window,
            registering=registering,
        )
        return {
            "session": session,
            "pillars": [p.info() for p in MVP_PILLARS],
            "recommended_flow": list(RECOMMENDED_FLOW),
        }

    async def navigate_to_pillar(self, session_id: str, pillar_id: str) -> dict[str, Any]:
        return await self.sessions.navigate_to_area(session_id, pillar_id)

    async def update_pillar_progress(
        self, session_id: str, pillar_id: str, progress_updates: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self.sessions.update_area_state(session_id, pillar_id, progress_updates)

    async def get_mvp_progress(self, session_id: str) -> dict[str, Any]:
        """The MVP session's progress, as a session's (``get_session_progress``): its status, current pillar,
        ``completion_percent``, ``completed_areas``, ``visited_areas`` and each pillar's detail."""
        return await self.sessions.get_session_progress(session_id)

    async def get_recommended_next_pillar(self, session_id: str) -> dict[str, Any]:
        """The first incomplete pillar in the recommended flow (None when all are complete)."""
        progress = await self.sessions.get_session_progress(session_id)
        spec = await self.sessions.spec_of(session_id)
        for pillar_id in spec.recommended_order or spec.area_ids:
            status = progress["areas"][pillar_id]
            if not status["complete"]:
                return {
                    "recommended_pillar": pillar_id,
                    "pillar_info": {**spec.area(pillar_id).info(), "missing": status["missing"]},
                    "reason": "first incomplete pillar in the recommended flow",
                }
        return {"recommended_pillar": None, "pillar_info": None, "reason": "every pillar is complete"}

    async def check_mvp_completion(self, session_id: str) -> dict[str, Any]:
        progress = await self.sessions.get_session_progress(session_id)
        pillar_status = {
            pillar_id: {
                "complete": detail["complete"],
                "visited": detail["visited"],
                "progress": detail["state"],
                "missing": detail["missing"],
            }
            for pillar_id, detail in progress["areas"].items()
        }
        return {
            "mvp_complete": all(s["complete"] for s in pillar_status.values()),
            "completion_percent": progress["completion_percent"],
            "pillar_status": pillar_status,
        }
