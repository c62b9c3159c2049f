"""P3, the MVP Journey Orchestrator: the Session pattern preset with the seed's four pillars.
Every test runs on memory, SQLite and Postgres."""

from __future__ import annotations

from typing import Any

import pytest

from graphs import MVP_PILLARS, RECOMMENDED_FLOW, InvalidInputError, JourneyRuntime, SpecError, UnknownAreaError

# Copied from the seed's "MVP PILLAR CONFIGURATION", not from the code.
SEED_PILLARS: dict[str, dict[str, Any]] = {
    "content": {
        "actions": ["upload_file", "parse_file", "preview_data", "chat_with_content_liaison"],
        "completion": ["files_uploaded", "files_parsed"],
    },
    "insights": {
        "actions": [
            "select_file",
            "analyze_data",
            "create_visualization",
            "generate_insights_summary",
            "chat_with_insights_liaison",
        ],
        "completion": ["file_selected", "analysis_complete", "insights_summary_generated"],
    },
    "operations": {
        "actions": [
            "select_files",
            "generate_workflow",
            "generate_sop",
            "create_coexistence_blueprint",
            "chat_with_operations_liaison",
        ],
        "completion": ["workflow_generated", "sop_generated", "coexistence_blueprint_created"],
    },
    "business_outcome": {
        "actions": [
            "review_summaries",
            "add_context",
            "generate_roadmap",
            "generate_poc_proposal",
            "chat_with_experience_liaison",
        ],
        "completion": ["summaries_reviewed", "roadmap_generated", "poc_proposal_generated"],
    },
}


async def snapshot(rt: JourneyRuntime, session_id: str) -> tuple[Any, ...]:
    events = [(e.seq, e.type, e.step, e.key, e.payload) for e in await rt.history(session_id)]
    return events, await rt.mvp.check_mvp_completion(session_id)


def test_the_pillars_are_exactly_the_seeds() -> None:
    assert RECOMMENDED_FLOW == ("content", "insights", "operations", "business_outcome")
    assert [p.area_id for p in MVP_PILLARS] == list(SEED_PILLARS)
    for pillar in MVP_PILLARS:
        seed = SEED_PILLARS[pillar.area_id]
        assert list(pillar.actions) == seed["actions"]
        # AND of "flag == True" for exactly the seed's flags, nothing in `any`.
        assert [(c.field, c.op, c.value) for c in pillar.completion.all] == [
            (f, "==", True) for f in seed["completion"]
        ]
        assert pillar.completion.any == ()


async def test_start_mvp_journey_configures_the_four_pillars(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        journey = await rt.mvp.start_mvp_journey("user_123", initial_pillar="content")
        session = journey["session"]
        assert session["current_area"] == "content"
        assert journey["recommended_flow"] == list(RECOMMENDED_FLOW)
        assert {p["area_id"]: p["actions"] for p in journey["pillars"]} == {
            k: v["actions"] for k, v in SEED_PILLARS.items()
        }
        assert {p["area_id"]: p["completion"] for p in session["areas"]} == {
            k: [f"{flag} == True" for flag in v["completion"]] for k, v in SEED_PILLARS.items()
        }
        assert [p["area_name"] for p in journey["pillars"]] == [
            "Content Pillar",
            "Insights Pillar",
            "Operations Pillar",
            "Business Outcome Pillar",
        ]
        other = await rt.mvp.start_mvp_journey("user_456", initial_pillar="operations")
        assert other["session"]["current_area"] == "operations"
        assert other["session"]["session_id"] != session["session_id"]
        with pytest.raises(SpecError, match="initial_area 'finance'"):
            await rt.mvp.start_mvp_journey("user_789", initial_pillar="finance")
        # MVP sessions belong to the MVP orchestrator, not to the general session one.
        assert [i.instance_id for i in await rt.store.index.list_instances(pattern="mvp")] == [
            session["session_id"],
            other["session"]["session_id"],
        ]


async def test_free_navigation_and_recommendations_skip_complete_pillars(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        session_id = (await rt.mvp.start_mvp_journey("user_123"))["session"]["session_id"]
        moved = await rt.mvp.navigate_to_pillar(session_id, "business_outcome")  # not the recommended next one
        assert (moved["previous_area"], moved["current_area"]) == ("content", "business_outcome")
        moved = await rt.mvp.navigate_to_pillar(session_id, "insights")
        assert moved["previous_area"] == "business_outcome"

        recommended = await rt.mvp.get_recommended_next_pillar(session_id)
        assert recommended["recommended_pillar"] == "content"
        assert recommended["pillar_info"]["area_name"] == "Content Pillar"
        assert recommended["pillar_info"]["missing"] == ["files_uploaded == True", "files_parsed == True"]

        updated = await rt.mvp.update_pillar_progress(session_id, "content", {"files_uploaded": True})
        assert updated["area_complete"] is False
        assert (await rt.mvp.get_recommended_next_pillar(session_id))["pillar_info"]["missing"] == [
            "files_parsed == True"
        ]
        await rt.mvp.update_pillar_progress(session_id, "content", {"files_parsed": True})
        # Finish operations out of order: the recommendation skips it once insights is done.
        await rt.mvp.update_pillar_progress(
            session_id,
            "operations",
            {"workflow_generated": True, "sop_generated": True, "coexistence_blueprint_created": True},
        )
        recommended = await rt.mvp.get_recommended_next_pillar(session_id)
        assert (recommended["recommended_pillar"], recommended["pillar_info"]["area_name"]) == (
            "insights",
            "Insights Pillar",
        )
        await rt.mvp.update_pillar_progress(
            session_id,
            "insights",
            {"file_selected": True, "analysis_complete": True, "insights_summary_generated": True},
        )
        recommended = await rt.mvp.get_recommended_next_pillar(session_id)
        assert (recommended["recommended_pillar"], recommended["pillar_info"]["area_name"]) == (
            "business_outcome",
            "Business Outcome Pillar",
        )
        # Recommending does not move the user.
        progress = await rt.mvp.sessions.get_session_progress(session_id)
        assert progress["current_area"] == "insights"
        assert progress["areas"]["content"]["state"] == {"files_uploaded": True, "files_parsed": True}


async def test_mvp_completion_needs_every_flag_of_every_pillar(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        session_id = (await rt.mvp.start_mvp_journey("user_123"))["session"]["session_id"]
        flags = [(pillar, flag) for pillar, seed in SEED_PILLARS.items() for flag in seed["completion"]]
        # Set every flag but one, in reverse order (free navigation), checking after each.
        for pillar, flag in reversed(flags[1:]):
            await rt.mvp.update_pillar_progress(session_id, pillar, {flag: True})
            completion = await rt.mvp.check_mvp_completion(session_id)
            assert completion["mvp_complete"] is False
        assert completion["pillar_status"]["content"] == {
            "complete": False,
            "visited": True,
            "progress": {"files_parsed": True},
            "missing": ["files_uploaded == True"],
        }
        assert [p for p, s in completion["pillar_status"].items() if s["complete"]] == [
            "insights",
            "operations",
            "business_outcome",
        ]
        assert completion["completion_percent"] == 75
        # A flag set to False does not count.
        await rt.mvp.update_pillar_progress(session_id, "content", {"files_uploaded": False})
        assert (await rt.mvp.check_mvp_completion(session_id))["mvp_complete"] is False

        await rt.mvp.update_pillar_progress(session_id, "content", {"files_uploaded": True})
        completion = await rt.mvp.check_mvp_completion(session_id)
        assert completion["mvp_complete"] is True
        assert completion["completion_percent"] == 100
        assert all(s["missing"] == [] for s in completion["pillar_status"].values())
        recommended = await rt.mvp.get_recommended_next_pillar(session_id)
        assert recommended["recommended_pillar"] is None


async def test_a_typo_in_a_progress_flag_is_refused_untouched(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        session_id = (await rt.mvp.start_mvp_journey("user_123"))["session"]["session_id"]
        await rt.mvp.update_pillar_progress(session_id, "content", {"files_uploaded": True})
        before = await snapshot(rt, session_id)
        with pytest.raises(InvalidInputError, match="files_parsd"):
            await rt.mvp.update_pillar_progress(session_id, "content", {"files_parsd": True})
        with pytest.raises(InvalidInputError, match="'yes' is not of type 'boolean'"):
            await rt.mvp.update_pillar_progress(session_id, "content", {"files_parsed": "yes"})
        # A flag of another pillar is a typo here, too.
        with pytest.raises(InvalidInputError):
            await rt.mvp.update_pillar_progress(session_id, "content", {"analysis_complete": True})
        with pytest.raises(UnknownAreaError) as caught:
            await rt.mvp.navigate_to_pillar(session_id, "finance")
        assert caught.value.allowed == list(RECOMMENDED_FLOW)
        assert await snapshot(rt, session_id) == before
