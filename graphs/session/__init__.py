"""Session journeys (free navigation between areas) and the MVP pillar session."""

from graphs.session.builder import Area, SessionSpec
from graphs.session.mvp import MVP_PILLARS, RECOMMENDED_FLOW, MVPOrchestrator
from graphs.session.orchestrator import SessionOrchestrator

__all__ = [
    "MVP_PILLARS",
    "RECOMMENDED_FLOW",
    "Area",
    "MVPOrchestrator",
    "SessionOrchestrator",
    "SessionSpec",
]
