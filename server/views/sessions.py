"""Sessions and the MVP journey (graphs/session/orchestrator.py, graphs/session/builder.py, graphs/session/mvp.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from server.views.fields import optional_key

SessionStatus = Literal["active", "closed", "terminated"]


class AreaInfo(BaseModel):
    """An area of a session, as designed."""

    area_id: str
    area_name: str
    description: str
    actions: list[str]
    completion: list[str] = Field(description="the area's completion criteria, in words; empty: complete once visited")
    metadata: dict[str, Any] = optional_key("the area's metadata, when it has any")


class PillarInfo(AreaInfo):
    """An MVP pillar, with what it still needs."""

    missing: list[str] = Field(description="what the pillar still needs to be complete")


class AreaProgress(BaseModel):
    """How far a session has got in one area."""

    area_name: str
    visited: bool
    complete: bool
    state: dict[str, Any] = Field(description="the area's state, as updated so far")
    missing: list[str] = Field(description="what the area still needs to be complete")


class SessionProgress(BaseModel):
    """How far a session has got, overall and per area."""

    completion_percent: int
    completed_areas: int
    visited_areas: int
    total_areas: int
    current_area: str | None
    status: SessionStatus
    areas: dict[str, AreaProgress] = Field(description="area id → its progress")


class SessionRef(BaseModel):
    """The session an answer is about."""

    session_id: str


class SessionProgressOut(SessionProgress, SessionRef):
    """A session's progress, with its id."""


class SessionStartOut(SessionRef):
    """A session just started: its areas and progress."""

    user_id: str
    status: SessionStatus
    current_area: str | None
    areas: list[AreaInfo]
    progress: SessionProgress


class NavigatedOut(SessionRef):
    """A session after moving to an area."""

    previous_area: str | None
    current_area: str
    area: AreaInfo
    area_state: dict[str, Any]
    progress: SessionProgress


class AreaUpdatedOut(SessionRef):
    """An area's state after an update, and the session's progress."""

    area_id: str
    area_state: dict[str, Any] = Field(description="the area's state after the update")
    area_complete: bool
    progress: SessionProgress


class MvpStartOut(BaseModel):
    """An MVP journey just started: its session, pillars and recommended order."""

    session: SessionStartOut
    pillars: list[AreaInfo]
    recommended_flow: list[str] = Field(description="the pillars in their recommended order")


class RecommendationOut(BaseModel):
    """The pillar to work on next, and why."""

    recommended_pillar: str | None = Field(description="the first incomplete pillar in the recommended flow")
    pillar_info: PillarInfo | None
    reason: str


class PillarStatus(BaseModel):
    """One pillar's completion."""

    complete: bool
    visited: bool
    progress: dict[str, Any] = Field(description="the pillar's progress flags so far")
    missing: list[str]


class MvpCompletionOut(BaseModel):
    """Whether the MVP is complete, and each pillar's status."""

    mvp_complete: bool
    completion_percent: int
    pillar_status: dict[str, PillarStatus] = Field(description="pillar id → its status")
