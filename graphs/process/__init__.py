"""BPMN-style processes: specs, validation, the builder, versions, timers, inbox and messages."""

from graphs.process.catalog import ProcessCatalog
from graphs.process.inbox import TaskInbox
from graphs.process.orchestrator import ProcessOrchestrator
from graphs.process.spec import ProcessSpec

__all__ = [
    "ProcessCatalog",
    "ProcessOrchestrator",
    "ProcessSpec",
    "TaskInbox",
]
