"""Structured journeys (steps in an enforced order) and sagas (steps that undo themselves)."""

from graphs.structured.builder import Branch, Step, StructuredSpec
from graphs.structured.orchestrator import StructuredOrchestrator
from graphs.structured.saga import SagaSpec
from graphs.structured.saga_orchestrator import SagaOrchestrator
from graphs.structured.templates import Template, TemplateCatalog, default_catalog

__all__ = [
    "Branch",
    "SagaOrchestrator",
    "SagaSpec",
    "Step",
    "StructuredOrchestrator",
    "StructuredSpec",
    "Template",
    "TemplateCatalog",
    "default_catalog",
]
