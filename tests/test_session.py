"""P2, the Session Journey Orchestrator: free navigation between areas, each with its own completion
criteria, area state kept while the user is elsewhere. Every test runs on memory, SQLite and Postgres."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from checkpoints.clock import VirtualClock
from checkpoints.retention import RetentionReport
from graphs import (
    InvalidInputError,
    JourneyFinishedError,
    JourneyNotFoundError,
    JourneyRuntime,
    RetentionPolicy,
    SpecError,
    UnknownAreaError,
    WrongPatternError,
)

# The seed's four areas, each with its own completion criteria; operations has none, so visiting completes it.
AREAS: list[dict[str, Any]] = [
    {"area_id": "content", "area_name": "Content Pillar", "completion": {"files_uploaded": True, "files_parsed": True}},
    {"area_id": "insights", "area_name": "Insights Pillar", "completion": {"analysis_complete": True}},
    {"area_id": "operations", "area_name": "Operations Pillar"},
    {"area_id": "business_outcome", "area_name": "Business Outcome", "completion": {"roadmap_generated": True}},
]
CONFIG = {"areas": AREAS, "initial_area": "content"}


async def snapshot(rt: JourneyRuntime, session_id: str) -> tuple[Any, ...]:
    events = [(e.seq, e.type, e.step, e.key, e.payload) for e in await rt.history(session_id)]
    saved = await rt.store.saver.aget_tuple({"configurable": {"thread_id": session_id, "checkpoint_ns": ""}})
    return events, await rt.session.get_session_progress(session_id), saved and saved.config


def headline(progress: dict[str, Any]) -> dict[str, Any]:
    return {k: progress[k] for k in ("completion_percent", "completed_areas", "visited_areas")}


async def test_start_session_enters_the_initial_area(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        session = await rt.session.start_session("user_123", {"areas": AREAS, "initial_area": "insights"})
        assert session["status"] == "active"
        assert session["current_area"] == "insights"
        assert [a["area_id"] for a in session["areas"]] == ["content", "insights", "operations", "business_outcome"]
        assert session["areas"][0]["completion"] == ["files_uploaded == True", "files_parsed == True"]
        assert headline(session["progress"]) == {"completion_percent": 0, "completed_areas": 0, "visited_areas": 1}
        assert session["progress"]["areas"]["insights"]["visited"] is True
        assert session["progress"]["areas"]["content"]["visited"] is False
        events = await rt.history(session["session_id"])
        assert [(e.type, e.step) for e in events] == [("session.started", None), ("area.entered", "insights")]
        # Without initial_area, the first area is entered.
        default = await rt.session.start_session("user_123", {"areas": AREAS})
        assert default["current_area"] == "content"


async def test_free_navigation_kept_state_and_the_seed_progress(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        session = await rt.session.start_session("user_123", CONFIG)
        session_id = session["session_id"]
        # Any order, any time: jump straight to the last area and back.
        moved = await rt.session.navigate_to_area(session_id, "business_outcome")
        assert (moved["previous_area"], moved["current_area"]) == ("content", "business_outcome")
        moved = await rt.session.navigate_to_area(session_id, "insights")
        assert moved["previous_area"] == "business_outcome"

        # Update content while the user is in insights: the user stays where they are.
        updated = await rt.session.update_area_state(session_id, "content", {"files_uploaded": True})
        assert updated["area_complete"] is False
        assert updated["progress"]["current_area"] == "insights"
        assert updated["progress"]["areas"]["content"]["missing"] == ["files_parsed == True"]
        updated = await rt.session.update_area_state(session_id, "content", {"files_parsed": True, "note": "ok"})
        assert updated["area_state"] == {"files_uploaded": True, "files_parsed": True, "note": "ok"}
        assert updated["area_complete"] is True

        await rt.session.navigate_to_area(session_id, "operations")  # no criteria: complete once visited
        progress = await rt.session.get_session_progress(session_id)
        # content and operations complete; all four visited.
        assert headline(progress) == {"completion_percent": 50, "completed_areas": 2, "visited_areas": 4}
        assert progress["current_area"] == "operations"

        # Back in content, its state is as the user left it.
        back = await rt.session.navigate_to_area(session_id, "content")
        assert back["area_state"] == {"files_uploaded": True, "files_parsed": True, "note": "ok"}
        assert back["progress"]["areas"]["content"]["complete"] is True
        # Updates merge; a later update can reopen a complete area.
        reopened = await rt.session.update_area_state(session_id, "content", {"files_parsed": False})
        assert reopened["area_complete"] is False
        assert reopened["area_state"] == {"files_uploaded": True, "files_parsed": False, "note": "ok"}
        types = [e.type for e in await rt.history(session_id)]
        assert types.count("area.completed") == 2
        assert types[-1] == "area.reopened"


async def test_the_seed_50_2_3_progress(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        session_id = (await rt.session.start_session("user_123", CONFIG))["session_id"]
        await rt.session.navigate_to_area(session_id, "insights")
        await rt.session.navigate_to_area(session_id, "content")
        await rt.session.update_area_state(session_id, "content", {"files_uploaded": True, "files_parsed": True})
        progress = await rt.session.get_session_progress(session_id)
        assert headline(progress) == {"completion_percent": 25, "completed_areas": 1, "visited_areas": 2}
        await rt.session.navigate_to_area(session_id, "operations")
        progress = await rt.session.get_session_progress(session_id)
        assert headline(progress) == {"completion_percent": 50, "completed_areas": 2, "visited_areas": 3}
        assert progress["total_areas"] == 4
        assert {a: d["complete"] for a, d in progress["areas"].items()} == {
            "content": True,
            "insights": False,
            "operations": True,
            "business_outcome": False,
        }
        assert progress["areas"]["business_outcome"]["missing"] == ["roadmap_generated == True"]
        assert progress["areas"]["insights"]["missing"] == ["analysis_complete == True"]

        # Finishing every area completes the session.
        await rt.session.update_area_state(session_id, "insights", {"analysis_complete": True})
        done = await rt.session.update_area_state(session_id, "business_outcome", {"roadmap_generated": True})
        # Criteria met without a visit still complete the area (business_outcome was never entered).
        assert headline(done["progress"]) == {"completion_percent": 100, "completed_areas": 4, "visited_areas": 3}
        types = [e.type for e in await rt.history(session_id)]
        assert types.count("session.completed") == 1
        instance = await rt.store.index.get_instance(session_id)  # a milestone: the session is still open
        assert instance is not None and instance.status == "in_progress"

        # Undoing an area's work reopens it, and the session with it.
        undone = await rt.session.update_area_state(session_id, "insights", {"analysis_complete": False})
        assert undone["progress"]["completion_percent"] == 75
        assert [e.type for e in await rt.history(session_id)][-1] == "area.reopened"


async def test_an_area_without_criteria_completes_when_visited(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        session_id = (await rt.session.start_session("u", CONFIG))["session_id"]
        before = await rt.session.get_session_progress(session_id)
        assert before["areas"]["operations"] == {
            "area_name": "Operations Pillar",
            "visited": False,
            "complete": False,
            "state": {},
            "missing": ["visit the area"],
        }
        moved = await rt.session.navigate_to_area(session_id, "operations")
        assert moved["progress"]["areas"]["operations"]["complete"] is True
        assert moved["progress"]["areas"]["operations"]["missing"] == []
        events = await rt.history(session_id)
        assert [(e.type, e.step) for e in events[-2:]] == [
            ("area.entered", "operations"),
            ("area.completed", "operations"),
        ]


async def test_an_unknown_area_is_refused_untouched(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        session_id = (await rt.session.start_session("u", CONFIG))["session_id"]
        await rt.session.update_area_state(session_id, "content", {"files_uploaded": True})
        before = await snapshot(rt, session_id)
        with pytest.raises(UnknownAreaError) as caught:
            await rt.session.navigate_to_area(session_id, "finance")
        assert caught.value.allowed == ["content", "insights", "operations", "business_outcome"]
        assert "finance" in str(caught.value)
        with pytest.raises(UnknownAreaError):
            await rt.session.update_area_state(session_id, "finance", {"x": True})
        with pytest.raises(InvalidInputError):
            await rt.session.update_area_state(session_id, "content", ["files_parsed"])  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            await rt.session.update_area_state(session_id, "content", {})
        assert await snapshot(rt, session_id) == before
        with pytest.raises(JourneyNotFoundError):
            await rt.session.navigate_to_area("session_nope", "content")


async def test_an_mvp_session_named_to_the_session_orchestrator_says_which_to_use(store_url: str) -> None:
    """The MVP composes Session, so its sessions look like sessions; ``runtime.session`` given one answered
    "no session session 'session_…'" for a session that exists. It names the MVP orchestrator instead."""
    async with JourneyRuntime.open(store_url) as rt:
        mvp = (await rt.mvp.start_mvp_journey("u"))["session"]["session_id"]
        session = (await rt.session.start_session("u", CONFIG))["session_id"]
        # Both are sessions, and their ids say so (they read journey_…, a structured design's, before).
        assert (mvp.split("_")[0], session.split("_")[0]) == ("session", "session")
        with pytest.raises(WrongPatternError, match="belongs to the mvp pattern, not session; use the mvp"):
            await rt.session.navigate_to_area(mvp, "insights")
        with pytest.raises(JourneyNotFoundError, match=r"^no session 'session_nope'$"):
            await rt.session.get_session_progress("session_nope")


BAD_CONFIGS: dict[str, tuple[Any, str]] = {
    "initial area not an area": ({"areas": AREAS, "initial_area": "finance"}, "initial_area 'finance' is not one"),
    "areas missing": ({"initial_area": "content"}, "areas: Field required"),
    "no areas": ({"areas": []}, "areas: Tuple should have at least 1 item"),
    "typo field": ({"areas": AREAS, "inital_area": "content"}, "inital_area: Extra inputs are not permitted"),
    "typo in an area": ({"areas": [{"area_id": "a", "area_nme": "A"}]}, "areas.0.area_nme: Extra inputs"),
    "repeated area": ({"areas": [{"area_id": "a"}, {"area_id": "a"}]}, "area ids must be unique"),
    "not a mapping": (["content", "insights"], "expected a mapping, got list"),
    "bad criteria": (
        {"areas": [{"area_id": "a", "completion": {"all": [{"field": "x", "op": "~"}]}}]},
        "areas.0.completion.all.0.op",
    ),
    # As a session's areas show it ("files_uploaded == True"): refused with the two forms it takes.
    "completion as shown": (
        {"areas": [{"area_id": "a", "completion": ["files_uploaded == True"]}]},
        "areas.0.completion: Value error, write completion as field → value ({'files_uploaded': True}) or as "
        "criteria ({'all': [{'field': 'files_uploaded', 'op': '==', 'value': True}]}), not ['files_uploaded == True']",
    ),
}


async def test_bad_session_configs_are_spec_errors(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        for case, (config, expected) in BAD_CONFIGS.items():
            with pytest.raises(SpecError) as caught:
                await rt.session.start_session("u", config)
            assert any(expected in p for p in caught.value.problems), (case, caught.value.problems)
        assert await rt.store.index.list_instances(pattern="session") == []


async def test_a_session_for_an_empty_or_overlong_user_id_is_refused_as_a_journey_is(store_url: str) -> None:
    """``start_session(user_id="")`` opened a session for nobody, which ``execute_journey`` refuses; both
    check the user id the same way now, and nothing is registered."""
    async with JourneyRuntime.open(store_url) as rt:
        for user_id in ("", "u" * 101, None):
            with pytest.raises(InvalidInputError, match="user id"):
                await rt.session.start_session(user_id, CONFIG)  # type: ignore[arg-type]
            with pytest.raises(InvalidInputError, match="user id"):
                await rt.mvp.start_mvp_journey(user_id)  # type: ignore[arg-type]
        assert await rt.store.index.list_instances() == []


async def test_a_closed_session_cannot_be_navigated(store_url: str) -> None:
    async with JourneyRuntime.open(store_url) as rt:
        session_id = (await rt.session.start_session("u", CONFIG))["session_id"]
        await rt.session.update_area_state(session_id, "content", {"files_uploaded": True})
        closed = await rt.session.close_session(session_id, reason="done for today")
        assert closed["status"] == "closed"
        assert closed["areas"]["content"]["state"] == {"files_uploaded": True}
        instance = await rt.store.index.get_instance(session_id)
        assert instance is not None and instance.status == "closed"
        last = (await rt.history(session_id))[-1]
        assert (last.type, last.payload) == ("session.closed", {"reason": "done for today"})

        before = await snapshot(rt, session_id)
        with pytest.raises(JourneyFinishedError):
            await rt.session.navigate_to_area(session_id, "insights")
        with pytest.raises(JourneyFinishedError):
            await rt.session.update_area_state(session_id, "content", {"files_parsed": True})
        with pytest.raises(JourneyFinishedError):
            await rt.session.close_session(session_id)
        assert await snapshot(rt, session_id) == before


async def test_a_session_with_every_area_complete_stays_open_until_it_is_closed(store_url: str) -> None:
    """Every area complete is a milestone (``session.completed``), not the session's end: its user may still
    move about, reopen an area and close it. The instance was marked ``completed`` then, a status that
    says a journey has ended, so a retention pass pruned and compacted the open session's checkpoints
    (``delete_after`` deleted them: the session was lost, every later move refused with
    CheckpointsDeletedError) and a termination was refused as if it had ended. It now stays ``in_progress``
    until closed; closed with every area complete, it has ``completed``."""
    clock = VirtualClock()
    async with JourneyRuntime.open(store_url, clock=clock, retention=RetentionPolicy("delete_after", 1)) as rt:

        async def all_complete() -> str:
            session_id = str((await rt.session.start_session("user_123", CONFIG))["session_id"])
            await rt.session.update_area_state(session_id, "content", {"files_uploaded": True, "files_parsed": True})
            await rt.session.update_area_state(session_id, "insights", {"analysis_complete": True})
            await rt.session.navigate_to_area(session_id, "operations")
            done = await rt.session.update_area_state(session_id, "business_outcome", {"roadmap_generated": True})
            assert (done["progress"]["completion_percent"], done["progress"]["status"]) == (100, "active")
            return session_id

        kept, dropped = await all_complete(), await all_complete()
        clock.advance(timedelta(days=2))
        await rt.retention.run()
        moved = await rt.session.navigate_to_area(kept, "insights")
        assert moved["area_state"] == {"analysis_complete": True} and moved["progress"]["completion_percent"] == 100
        terminated = await rt.terminate(dropped, "the user left")
        assert terminated["status"] == "terminated"
        assert [e.type for e in await rt.history(kept)].count("session.completed") == 1
        instance = await rt.store.index.get_instance(kept)
        assert instance is not None and instance.status == "in_progress"
        clock.advance(timedelta(days=2))
        assert await rt.retention.run() == RetentionReport(pruned=1, deleted=1)  # the terminated one only

        closed = await rt.session.close_session(kept, "all done")
        assert (closed["status"], closed["completion_percent"]) == ("closed", 100)
        instance = await rt.store.index.get_instance(kept)
        assert instance is not None and instance.status == "completed"
        # A session closed with an area incomplete is closed, not completed.
        partial = str((await rt.session.start_session("user_123", CONFIG))["session_id"])
        await rt.session.close_session(partial)
        instance = await rt.store.index.get_instance(partial)
        assert instance is not None and instance.status == "closed"
